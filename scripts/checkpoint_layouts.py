"""Regenerate bench/data/checkpoint_layouts/: the key layout of every checkpoint file `bench weights` lists
over all tables, each produced by the library that saved the file, and say where each came from.

    .venv/bin/python scripts/checkpoint_layouts.py [--install] [--check] [FILE_NAME ...]

Producers (nothing is downloaded; no checkpoint file is needed):

* ``torchvision://`` ImageNet ResNets: torchvision's own ``resnet50()`` / ``resnet101()``; the weights enum of
  the same torchvision names the file (``ResNet50_Weights.IMAGENET1K_V1.url``), a bare state dict (as
  torchvision's ``load_state_dict_from_url`` reads it);
* mmcls / mmpretrain ImageNet checkpoints: the mmpretrain model built from the config whose metafile entry
  lists the file's URL (mmpretrain's zoo loads its checkpoints strictly into that model); ``{meta, state_dict}``,
  as mmcls's publish script leaves a checkpoint;
* mmdetection model-zoo files (``download.openmmlab.com/mmdetection/...``): mmdet 3.3.0's model built from the
  config whose metafile entry lists the URL; ``{meta, state_dict}``, as mmdet's publish script leaves it.

A file with a ``bench weights --record-layout`` layout (provenance ``file``: read from the real file) is kept:
a real file outranks any class. torchvision and mmpretrain are needed only here and are not in bench's
runtime: ``--install`` puts the pinned versions (pyproject's ``layouts`` extra) into
``$BENCH_CACHE/layout-libs`` with ``pip --target --no-deps``, outside the virtualenv, because PyPI's
torchvision is a CUDA build whose compiled ops do not load beside the CPU torch; this script imports only its
pure-Python model definitions (the package's ``__init__``, which loads the ops, is bypassed). ``--check``
writes nothing and exits 1 if a shipped layout differs from what the producers give now.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: the layouts extra (pyproject.toml), pinned: the versions the shipped layouts were produced with
PINS = ["torchvision==0.28.0", "mmpretrain==1.2.0", "importlib_metadata==8.5.0", "zipp", "einops", "mat4py",
        "modelindex", "ordered-set"]


def libs_dir() -> Path:
    from bench.diskcache import cache_dir

    return cache_dir() / "layout-libs"


def install() -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(libs_dir()), *PINS],
                   check=True)


def _import_libs() -> None:
    """torchvision's model code without its package ``__init__`` (which loads CUDA-built ops), then mmpretrain."""
    sys.path.insert(0, str(libs_dir()))
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        raise SystemExit(f"torchvision is not in {libs_dir()}: run with --install first")
    import importlib.metadata as md

    pkg = types.ModuleType("torchvision")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__version__ = md.version("torchvision")
    sys.modules["torchvision"] = pkg


def _version(dist: str) -> str:
    import importlib.metadata as md

    return md.version(dist)


def torchvision_layout(name: str, url: str) -> tuple[None, dict, dict]:
    resnet = importlib.import_module("torchvision.models.resnet")
    arch = name.split("-")[0]                       # resnet50-0676ba61.pth -> resnet50
    enum = getattr(resnet, {"resnet50": "ResNet50_Weights", "resnet101": "ResNet101_Weights"}[arch])
    entry = next((w for w in enum if w.url == url), None)
    if entry is None:
        raise SystemExit(f"{name}: no entry of torchvision's {enum.__name__} has the URL {url}")
    sd = getattr(resnet, arch)().state_dict()
    return None, sd, {"source": "class", "library": "torchvision", "version": _version("torchvision"),
                      "built": f"torchvision.models.{arch}()",
                      "evidence": f"torchvision {_version('torchvision')}'s {enum.__name__}.{entry.name}.url is this "
                                  "file; torchvision's load_state_dict_from_url returns the bare state dict"}


def _metafile_entry(root: Path, url: str) -> tuple[Path, dict]:
    import yaml

    for mf in sorted(root.rglob("metafile.yml")):
        data = yaml.safe_load(mf.read_text())
        models = data.get("Models") if isinstance(data, dict) else data
        for m in models or []:
            if isinstance(m, dict) and m.get("Weights") == url:
                return mf, m
    raise SystemExit(f"no metafile under {root} lists {url}")


def _zoo_layout(library: str, root: Path, models, url: str, evidence: str):
    """The state dict of the model whose metafile entry (under ``root``) lists ``url``, built by ``models``."""
    from mmengine.config import Config

    mf, entry = _metafile_entry(root, url)
    sd = models.build(Config.fromfile(str(root.parent / entry["Config"])).model).state_dict()
    return ["meta", "state_dict"], sd, {
        "source": "class", "library": library, "version": _version(library),
        "built": f"{library}'s {entry['Config']} model", "metafile": f"{mf.relative_to(root.parent)}: {entry['Name']}",
        "evidence": evidence}


def mmpretrain_layout(name: str, url: str):
    import mmpretrain
    from mmpretrain.registry import MODELS
    from mmpretrain.utils import register_all_modules

    register_all_modules()
    return _zoo_layout("mmpretrain", Path(mmpretrain.__file__).parent / ".mim" / "configs", MODELS, url,
                       "the mmpretrain metafile lists this file as that config's weights (mmpretrain loads its zoo "
                       "strictly into the config's model); the file was saved by mmcls 0.x, whose ResNetV1d stem "
                       "(three ConvModules: stem.{i}.conv / stem.{i}.bn) mmpretrain kept")


def mmdet_layout(name: str, url: str):
    from bench.resolve import mmdet_configs_dir, register_all

    register_all()
    from mmdet.registry import MODELS

    return _zoo_layout("mmdet", mmdet_configs_dir(), MODELS, url,
                       "mmdet 3.3.0's metafile lists this file, with its box/mask AP, as that config's weights "
                       "(the zoo's numbers are this class evaluating that file)")


def producer(url: str):
    if url.startswith("https://download.pytorch.org/models/"):
        return torchvision_layout
    if url.startswith("https://download.openmmlab.com/mmclassification/"):
        return mmpretrain_layout
    if url.startswith("https://download.openmmlab.com/mmdetection/"):
        return mmdet_layout
    raise SystemExit(f"{url}: no producer known for this checkpoint (record it from the real file with "
                     "`bench weights --record-layout FILE`)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="file names to regenerate (default: every file bench weights lists)")
    ap.add_argument("--install", action="store_true", help="install the layouts extra into $BENCH_CACHE/layout-libs")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a shipped layout differs")
    args = ap.parse_args()
    if args.install:
        install()
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    _import_libs()

    from bench.data.checkpoints import LAYOUTS_DIR, compare, load_layout, make_layout, tensors_of, write_layout
    from bench.recipes import Catalogue
    from bench.zoo import table_weights

    cat = Catalogue()
    entries = table_weights([cat.load(n) for n in cat.names()])
    if args.files:
        entries = [e for e in entries if e["file_name"] in set(args.files)]
    LAYOUTS_DIR.mkdir(parents=True, exist_ok=True)
    differs = 0
    for e in sorted(entries, key=lambda e: e["file_name"]):
        name, url = e["file_name"], e["url"]
        old = load_layout(name)
        if old is not None and old["provenance"].get("source") == "file":
            print(f"{name}: kept (read from the real file, sha256 {old['provenance'].get('sha256', '?')[:12]})")
            continue
        container, sd, prov = producer(url)(name, url)
        prov["generated_by"] = "scripts/checkpoint_layouts.py"
        lay = make_layout(name, container, tensors_of(sd), prov, url=url, notes=[
            f"used by {len(e['rows'])} row(s) ({e.get('kind', 'pretrained')}): " + ", ".join(e["rows"][:8])
            + (" ..." if len(e["rows"]) > 8 else "")])
        diffs = compare(old, container, lay["tensors"]) if old else ["new"]
        if args.check:
            differs += bool(diffs)
            print(f"{name}: {'agrees' if not diffs else 'DIFFERS: ' + '; '.join(diffs)}")
            continue
        write_layout(lay)
        print(f"{name}: {len(lay['tensors'])} tensors, {prov['library']} {prov['version']} ({prov['built']})"
              + ("" if not diffs or diffs == ["new"] else "; changed: " + "; ".join(diffs)))
    if differs:
        sys.exit(1)


if __name__ == "__main__":
    main()
