"""swdet: sample-weighted object detection, deployed at zero test-time cost."""

__version__ = "0.1.0"
