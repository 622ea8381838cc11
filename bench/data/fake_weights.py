"""Fabricated checkpoint files in the real key layout, for tests and preflight demonstrations on
machines that cannot download the real ones. Never used by a run: a fabricated file is random
tensors, and its name says nothing about that, so keep these files out of real weights folders.

For each checkpoint a paper-scale config names (``bench.weights.iter_refs``) the file holds the
state dict of the module it is loaded into, under the keys the real file uses:

* ``torchvision://`` ImageNet backbones: the ResNet's own keys (``conv1.weight``, ``layer1.0...``)
  plus torchvision's classifier ``fc.weight`` / ``fc.bias`` (unexpected for a detector backbone,
  as in the real file);
* a ``Pretrained`` init with ``prefix`` (mmcls / mmpretrain checkpoints): ``{"state_dict": ...}``
  with every key under that prefix (``backbone.conv1.weight``) and an ImageNet head
  (``head.fc.weight``);
* a model-level checkpoint (``init_cfg`` on the detector, or ``load_from``): the detector's keys
  in ``{"meta": ..., "state_dict": ...}``, as mmengine saves them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional


def _module_at(model, where: str):
    """The module an ``init_cfg`` at config path ``where`` belongs to (``model.backbone.init_cfg.x``
    -> ``model.backbone``), following attribute names; None when the path does not map."""
    parts = where.split(".")
    if "init_cfg" in parts:
        parts = parts[:parts.index("init_cfg")]
    elif parts[-1] == "pretrained":
        parts = parts[:-1]
    else:   # load_from: the whole model
        return model
    mod = model
    for p in parts[1:]:
        if "[" in p:
            return None
        mod = getattr(mod, p, None)
        if mod is None:
            return None
    return mod


def fabricate(config: dict, out_dir: Path, seed: int = 0, only: Optional[set[str]] = None) -> list[Path]:
    """Write a fabricated file for every checkpoint ``config`` names (or those whose file names are in
    ``only``) into ``out_dir``; returns the files written. Builds the model (no weights loaded)."""
    import copy

    import torch

    from bench.resolve import register_all
    from bench.weights import iter_refs, resolve_url

    register_all()
    from mmdet.registry import MODELS

    cfg = copy.deepcopy(config)
    refs = [(where, holder[key], prefix) for holder, key, where, prefix in iter_refs(cfg)]
    from mmengine.config import Config

    model = MODELS.build(Config(copy.deepcopy(cfg)).model)
    gen = torch.Generator().manual_seed(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for where, ref, prefix in refs:
        _, name = resolve_url(ref)
        if only is not None and name not in only:
            continue
        target = _module_at(model, where)
        if target is None:
            raise ValueError(f"cannot tell which module {where} loads into")
        sd = {}
        for k, v in target.state_dict().items():
            if not v.is_floating_point():
                sd[k] = v.clone()
            elif k.endswith("running_var"):   # a variance: positive, as in a trained network
                sd[k] = 0.5 + torch.rand(v.shape, generator=gen)
            elif k.endswith("running_mean"):
                sd[k] = torch.randn(v.shape, generator=gen) * 0.1
            elif k.endswith(("bn1.weight", "bn2.weight", "bn3.weight")) or ".bn" in k and k.endswith(".weight"):
                sd[k] = 0.5 + torch.rand(v.shape, generator=gen)
            else:
                sd[k] = torch.randn(v.shape, generator=gen) * 0.02
        if ref.startswith(("torchvision://", "modelzoo://")):
            width = 2048 if any(k.startswith("layer4") for k in sd) else 512
            sd["fc.weight"] = torch.randn(1000, width, generator=gen) * 0.01
            sd["fc.bias"] = torch.zeros(1000)
            obj = sd
        elif prefix:
            obj = {"meta": {"fabricated": True}, "state_dict": {prefix + k: v for k, v in sd.items()}
                   | {"head.fc.weight": torch.zeros(1000, 8), "head.fc.bias": torch.zeros(1000)}}
        else:
            obj = {"meta": {"fabricated": True}, "state_dict": sd}
        path = out_dir / name
        torch.save(obj, path)
        written.append(path)
    return written
