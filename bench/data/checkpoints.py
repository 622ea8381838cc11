"""Checkpoint key layouts: what a real pretrained file holds, as data (``checkpoint_layouts/<file>.json``).

A layout is every tensor's key, shape and dtype, plus the file's container (a bare state dict, or the
top-level keys around it, such as ``{"meta", "state_dict"}``) and its provenance: which library's class
at which version produced it, or which real file it was read from (with the file's sha256). They are
written by ``scripts/checkpoint_layouts.py`` (from the producing libraries) or by
``bench weights --record-layout FILE`` (from a real file), and used

* by ``bench.data.fake_weights`` to fabricate a file with exactly the real keys (never the model's), so a
  fabricated file meets the same key mismatch the real one would;
* by ``bench weights --check`` to compare the files in a weights folder with their layouts.

``num_batches_tracked`` buffers (a BatchNorm counter that no pretrained weight depends on, and that
mmengine leaves out of its missing-key report) are recorded when the producing class has them but are
never compared: whether a file saved before PyTorch 0.4.1 added them holds them cannot be told from a class.
Nothing here imports torch at module level.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable, Optional

LAYOUTS_DIR = Path(__file__).resolve().parent / "checkpoint_layouts"
FORMAT = 1
IGNORED = re.compile(r"(^|\.)num_batches_tracked$")


class LayoutError(ValueError):
    pass


def layout_path(file_name: str, root: Path = LAYOUTS_DIR) -> Path:
    if "/" in file_name or file_name.startswith("."):
        raise LayoutError(f"{file_name!r}: a layout is named by the checkpoint's bare file name")
    return root / f"{file_name}.json"


def load_layout(file_name: str, root: Path = LAYOUTS_DIR) -> Optional[dict]:
    """The layout of ``file_name`` (None when none is shipped); a malformed one is an error naming the file."""
    path = layout_path(file_name, root)
    if not path.is_file():
        return None
    try:
        lay = json.loads(path.read_text())
    except ValueError as e:
        raise LayoutError(f"{path}: not JSON ({e})") from e
    problems = _check_layout(lay)
    if problems:
        raise LayoutError(f"{path}: " + "; ".join(problems))
    return lay


def _check_layout(lay: Any) -> list[str]:
    if not isinstance(lay, dict):
        return ["a layout is a JSON object"]
    out = []
    if lay.get("format") != FORMAT:
        out.append(f"field format: {lay.get('format')!r}, expected {FORMAT}")
    if not isinstance(lay.get("file_name"), str):
        out.append("field file_name: missing")
    c = lay.get("container")
    if c is not None and not (isinstance(c, list) and all(isinstance(k, str) for k in c) and "state_dict" in c):
        out.append("field container: null (a bare state dict) or a list of top-level keys including 'state_dict'")
    if not isinstance(lay.get("provenance"), dict) or not lay["provenance"].get("source"):
        out.append("field provenance: missing (where the layout came from)")
    t = lay.get("tensors")
    if not (isinstance(t, list) and t and all(isinstance(e, list) and len(e) == 3 and isinstance(e[0], str)
                                               and isinstance(e[1], list) and isinstance(e[2], str) for e in t)):
        out.append("field tensors: a non-empty list of [key, shape, dtype]")
    return out


def shipped_layouts(root: Path = LAYOUTS_DIR) -> list[str]:
    return sorted(p.name[:-len(".json")] for p in root.glob("*.json"))


# ----------------------------------------------------------------------------------- from objects
def _dtype_name(t) -> str:
    return str(t.dtype).removeprefix("torch.")


def describe(obj: Any) -> tuple[Optional[list[str]], dict]:
    """(container, state dict) of a loaded checkpoint object: container None for a bare state dict."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return sorted(str(k) for k in obj), obj["state_dict"]
    if isinstance(obj, dict):
        return None, obj
    raise LayoutError(f"a checkpoint is a dict (a state dict, or one holding 'state_dict'), not {type(obj).__name__}")


def tensors_of(state_dict: dict) -> list[list]:
    out = []
    for k, v in state_dict.items():
        if hasattr(v, "shape") and hasattr(v, "dtype"):
            out.append([str(k), [int(s) for s in v.shape], _dtype_name(v)])
    return out


def make_layout(file_name: str, container: Optional[list[str]], tensors: list[list], provenance: dict,
                url: Optional[str] = None, notes: Iterable[str] = ()) -> dict:
    return {"format": FORMAT, "file_name": file_name, "url": url, "container": container,
            "provenance": provenance, "notes": list(notes), "tensors": tensors}


def dumps_layout(lay: dict) -> str:
    """A layout as JSON, one tensor a line (a diff of two layouts reads key by key)."""
    head = json.dumps({k: v for k, v in lay.items() if k != "tensors"}, indent=1)
    rows = ",\n".join("  " + json.dumps(t) for t in lay["tensors"])
    return head[:-2] + ',\n "tensors": [\n' + rows + "\n ]\n}\n"


def write_layout(lay: dict, root: Path = LAYOUTS_DIR) -> Path:
    """Write a layout atomically (beside, then renamed); returns its path."""
    import os
    import tempfile

    problems = _check_layout(lay)
    if problems:
        raise LayoutError(f"layout of {lay.get('file_name')!r}: " + "; ".join(problems))
    path = layout_path(lay["file_name"], root)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(dumps_layout(lay))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_checkpoint(path: Path) -> Any:
    """A checkpoint file read with torch's safe loader (``weights_only=True``: tensors and plain containers),
    so a real file can be recorded without running code from it."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def record_layout(path: Path, url: Optional[str] = None) -> dict:
    """The layout of a real checkpoint file (``bench weights --record-layout``)."""
    import importlib.metadata as md

    container, sd = describe(read_checkpoint(path))
    return make_layout(path.name, container, tensors_of(sd), url=url, provenance={
        "source": "file", "sha256": sha256_of(path), "size": path.stat().st_size,
        "read_by": f"bench weights --record-layout (torch {md.version('torch')}, weights_only=True)"})


# ----------------------------------------------------------------------------------- comparison
def compare(layout: dict, container: Optional[list[str]], tensors: list[list]) -> list[str]:
    """Differences between a layout and a file's (container, tensors); empty when they agree. Keys
    named ``num_batches_tracked`` are not compared (module docstring)."""
    diffs = []
    want_c = layout.get("container")
    if (want_c is None) != (container is None) or (want_c is not None and "state_dict" in want_c) != \
            (container is not None and "state_dict" in container):
        diffs.append(f"container: the layout has {want_c or 'a bare state dict'}, the file {container or 'a bare state dict'}")
    elif want_c is not None and set(want_c) != set(container):
        diffs.append(f"top-level keys: layout {sorted(want_c)}, file {sorted(container)}")
    want = {k: (tuple(s), d) for k, s, d in layout["tensors"] if not IGNORED.search(k)}
    got = {k: (tuple(s), d) for k, s, d in tensors if not IGNORED.search(k)}
    only_layout = sorted(set(want) - set(got))
    only_file = sorted(set(got) - set(want))
    if only_layout:
        diffs.append(f"{len(only_layout)} key(s) in the layout, not in the file: {_short(only_layout)}")
    if only_file:
        diffs.append(f"{len(only_file)} key(s) in the file, not in the layout: {_short(only_file)}")
    bad = [f"{k} {list(want[k][0])}/{want[k][1]} vs {list(got[k][0])}/{got[k][1]}"
           for k in sorted(set(want) & set(got)) if want[k] != got[k]]
    if bad:
        diffs.append(f"{len(bad)} shape/dtype difference(s) (layout vs file): {_short(bad, 4)}")
    return diffs


def check_file(path: Path, root: Path = LAYOUTS_DIR) -> tuple[str, list[str]]:
    """('agrees' | 'differs' | 'no layout', differences) for one real file."""
    lay = load_layout(path.name, root)
    if lay is None:
        return "no layout", []
    container, sd = describe(read_checkpoint(path))
    diffs = compare(lay, container, tensors_of(sd))
    return ("differs" if diffs else "agrees"), diffs


def _short(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")
