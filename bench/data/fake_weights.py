"""Fabricated checkpoint files in the real key layout, for tests and preflight demonstrations on
machines that cannot download the real ones. Never used by a run: a fabricated file is random
tensors, and its name says nothing about that, so keep these files out of real weights folders.

Each file is written from the checkpoint's shipped layout (``bench.data.checkpoints``:
``checkpoint_layouts/<file name>.json``, produced by the library that saved the real file), never from
the model it will be loaded into: its keys, shapes, dtypes and container are the real file's, so a
preflight with fabricated files meets the same missing, unexpected or mis-shaped keys the real file
would. A checkpoint without a shipped layout cannot be fabricated (record one from the real file with
``bench weights --record-layout FILE``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from bench.data.checkpoints import LAYOUTS_DIR, LayoutError, load_layout


def tensors_from_layout(layout: dict, seed: int = 0) -> dict:
    """A state dict with the layout's keys, shapes and dtypes and plausible random values (BN variances
    and scales positive, as in a trained network)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape, dtype in layout["tensors"]:
        dt = getattr(torch, dtype)
        if not dt.is_floating_point:
            sd[key] = torch.zeros(shape, dtype=dt)
        elif key.endswith("running_var"):
            sd[key] = (0.5 + torch.rand(shape, generator=gen)).to(dt)
        elif key.endswith("running_mean"):
            sd[key] = (torch.randn(shape, generator=gen) * 0.1).to(dt)
        elif key.endswith(".weight") and len(shape) == 1:   # a norm layer's scale
            sd[key] = (0.5 + torch.rand(shape, generator=gen)).to(dt)
        else:
            sd[key] = (torch.randn(shape, generator=gen) * 0.02).to(dt)
    return sd


def fabricate_file(file_name: str, out_dir: Path, seed: int = 0, layouts: Path = LAYOUTS_DIR) -> Path:
    """Write ``out_dir/file_name`` from its shipped layout (container and tensors)."""
    import torch

    layout = load_layout(file_name, layouts)
    if layout is None:
        raise LayoutError(f"{file_name}: no checkpoint layout in {layouts} to fabricate it from (record one from "
                          f"the real file: bench weights --record-layout {file_name})")
    sd = tensors_from_layout(layout, seed)
    container = layout.get("container")
    if container is None:
        obj = sd
    else:
        obj = {k: {"fabricated": True, "layout": file_name} for k in container if k != "state_dict"}
        obj["state_dict"] = sd
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / file_name
    tmp = path.with_name(f".{file_name}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
    return path


def fabricate(config: dict, out_dir: Path, seed: int = 0, only: Optional[set[str]] = None) -> list[Path]:
    """Write a fabricated file for every checkpoint ``config`` names (or those whose file names are in
    ``only``) into ``out_dir``; returns the files written."""
    from bench.weights import iter_refs, resolve_url

    written = []
    for holder, key, _where, _prefix in iter_refs(config):
        _, name = resolve_url(holder[key])
        if (only is not None and name not in only) or any(p.name == name for p in written):
            continue
        written.append(fabricate_file(name, out_dir, seed))
    return written
