"""Model components proposed by the papers, registered in mmdet's registries.

Every module in this package is imported on `import bench.models`, so adding a component means
dropping one file here."""
import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
