"""bench: reproduce instance-segmentation paper tables and check their claims."""

__version__ = "0.1.0"

import warnings as _warnings

# mmengine 0.10.7 imports pkg_resources, which warns in every process that loads it (CLI, jobs)
_warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
