"""What every ``swdet`` verb module shares: click settings and small option helpers.

Only click is imported at module level (``swdet --help`` stays instant).
"""

from __future__ import annotations

import click  # noqa: F401 - the verb modules' one module-level dependency

from swdet.errors import SwdetError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def write_json(path, obj) -> None:
    """``obj`` to ``path`` atomically (``--json FILE``); nothing when ``path`` is empty."""
    if path:
        from swdet.artifact import atomic_write_json

        atomic_write_json(path, obj)


def int_list(value: str | None, option: str, *, positive: bool = False) -> list[int] | None:
    """``"1,8,32"`` -> ``[1, 8, 32]`` (None for an empty value); a one-line error naming
    ``option`` otherwise."""
    if not value:
        return None
    try:
        values = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise SwdetError(f"{option} {value}: expected comma-separated integers, e.g. 1,8,32") from None
    if positive and (not values or any(v < 1 for v in values)):
        raise SwdetError(f"{option} {value}: expected positive integers, e.g. 1,8,32")
    return values
