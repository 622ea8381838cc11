"""bench: reproduce instance-segmentation paper tables and check their claims."""

__version__ = "0.1.0"
