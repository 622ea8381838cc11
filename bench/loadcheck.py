"""Judging a checkpoint load: did the file fill the module it was loaded into?

mmengine loads pretrained weights with ``strict=False``: a key the file names differently stays at its
random initialisation and the run trains on. ``judge`` holds one load (a state dict going into a module)
against the module: every parameter and running statistic of the target must be loaded, with the shape the
module has, unless it is *declared new*:

* by the model's structure: a deformable convolution's offset branch (``conv_offset``: no ImageNet or COCO
  classifier has one; DCN zero-initialises it, Dai et al. 2017 Sec. 2.1, Zhu et al. 2019 Sec. 3), and what a
  model says it takes from a file (``pretrained_parts`` prefixes, e.g. ISDA's parts of Deformable DETR);
* by the recipe: the row's ``model.declared_new`` (``{keys: glob, why: ...}``), for a module the paper adds to a
  pretrained network.

Keys of the file that the module does not have are *unexpected*; an ImageNet classifier head (``fc.*``,
``head.*``) is expected to be left over and listed apart, any other unexpected key fails the load (a part of
the file that was meant to go somewhere and went nowhere). ``num_batches_tracked`` counters are never judged
(mmengine leaves them out of its report too). Nothing here imports torch.
"""
from __future__ import annotations

import fnmatch
import re
from typing import Any, Iterable, Optional

IGNORED = re.compile(r"(^|\.)num_batches_tracked$")
HEAD = re.compile(r"^(fc|head|classifier|cls_head)\.")

DCN_WHY = ("deformable conv offset branch (conv_offset): zero-initialised by design (DCN, Dai et al. 2017 Sec. 2.1; "
           "DCNv2, Zhu et al. 2019), absent from every classification checkpoint")


def model_declarations(module: Any, path: str) -> list[tuple[str, str]]:
    """(glob over model-level keys, why) that the target module's own structure declares new."""
    out = []
    pre = f"{path}." if path else ""
    for name, m in module.named_modules():
        if hasattr(m, "conv_offset") and "deform" in type(m).__name__.lower():
            out.append((f"{pre}{name}.conv_offset.*" if name else f"{pre}conv_offset.*", DCN_WHY))
    parts = getattr(module, "pretrained_parts", None)
    if isinstance(parts, (list, tuple)) and parts:
        keep = tuple(f"{pre}{p}" for p in parts)
        out.append((("!", keep), f"outside {type(module).__name__}.pretrained_parts ({', '.join(parts)}): what the "
                                 "model takes from this file"))
    return out


def _matches(pattern: Any, key: str) -> bool:
    if isinstance(pattern, tuple) and pattern and pattern[0] == "!":   # everything outside these prefixes
        return not key.startswith(pattern[1])
    return fnmatch.fnmatchcase(key, pattern)


def judge(path: str, own: dict[str, tuple[tuple, int, bool]], file_shapes: dict[str, tuple],
          declarations: Iterable[tuple[Any, str]]) -> dict:
    """One load: ``own`` the target module's state dict (key -> (shape, numel, is_parameter)), ``file_shapes``
    what the loaded state dict held (key -> shape), ``declarations`` (pattern, why) over model-level keys
    (``path`` + key). Returns the verdict (see ``summarise`` for the fields)."""
    pre = f"{path}." if path else ""
    declarations = list(declarations)
    loaded, missing, mismatched, new = [], [], [], {}
    total = filled = 0
    for k, (shape, numel, is_param) in own.items():
        if IGNORED.search(k):
            continue
        full = pre + k
        if is_param:
            total += numel
        if k in file_shapes and tuple(file_shapes[k]) == tuple(shape):
            loaded.append(full)
            filled += numel if is_param else 0
            continue
        why = next((w for p, w in declarations if _matches(p, full)), None)
        if why is not None:
            new.setdefault(why, []).append(full)
        elif k in file_shapes:
            mismatched.append(f"{full}: file {list(file_shapes[k])}, module {list(shape)}")
        else:
            missing.append(full)
    extra = [pre + k for k in file_shapes if k not in own and not IGNORED.search(k)]
    head = [k for k in extra if HEAD.match(k[len(pre):])]
    unexpected = [k for k in extra if k not in head]
    return {"target": path or "(model)", "params": total, "loaded_params": filled,
            "loaded_fraction": round(filled / total, 6) if total else None, "loaded": len(loaded),
            "missing": missing, "mismatched": mismatched, "unexpected": unexpected, "unexpected_head": head,
            "declared_new": [{"why": w, "count": len(ks), "keys": ks[:6] + ([f"... ({len(ks)} in all)"] if len(ks) > 6 else [])}
                             for w, ks in new.items()]}


def summarise(loads: list[dict]) -> dict:
    """One checkpoint's loads (usually one) as the fields ``bench preflight --json`` gives per checkpoint:
    ``loaded_fraction`` (of the target modules' parameters, by element count), ``missing``, ``unexpected``,
    ``mismatched``, ``declared_new`` (with the reason of each), ``unexpected_head`` and ``ok``."""
    total = sum(x["params"] for x in loads)
    filled = sum(x["loaded_params"] for x in loads)
    out = {"targets": [x["target"] for x in loads],
           "loaded_fraction": round(filled / total, 6) if total else None}
    for f in ("missing", "unexpected", "mismatched", "unexpected_head", "declared_new"):
        out[f] = [v for x in loads for v in x[f]]
    out["ok"] = bool(loads) and not (out["missing"] or out["unexpected"] or out["mismatched"])
    return out


def failure(file_name: str, s: dict) -> Optional[str]:
    """The reason a checkpoint's load fails a row (None when it passes)."""
    if s["ok"]:
        return None
    parts = []
    for f, what in (("missing", "not loaded"), ("mismatched", "shape mismatch"),
                    ("unexpected", "in the file but used nowhere")):
        if s[f]:
            parts.append(f"{len(s[f])} {what}: {_short(s[f])}")
    if not parts:
        parts.append("nothing was loaded from it")
    frac = s["loaded_fraction"]
    how = (" loaded nothing" if frac == 0 else f" (loaded {frac:.1%} of its parameters)" if frac is not None else "")
    return f"{file_name} into {', '.join(s['targets']) or '?'}{how}: " + "; ".join(parts)


def _short(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")
