"""``python -m swdet`` (what ``torchrun ... -m swdet train`` runs)."""

import sys

from swdet.cli import main

sys.exit(main())
