"""Loading a pretrained checkpoint whose keys are another library's: ``ConvertedPretrained``.

mmengine's ``Pretrained`` initialiser loads with ``strict=False``: a checkpoint saved by another library,
whose names differ from the module's, loads nothing into those parameters and says so only in a log line.
``ConvertedPretrained`` is ``Pretrained`` plus a named key conversion, applied to the state dict between
reading the file and loading it, so the tensors land where the module expects them::

    init_cfg: {type: ConvertedPretrained, convert: mmcls-resnet-v1cd, prefix: backbone.,
               checkpoint: ".../resnetv1d50_b32x8_imagenet_20210531-db14775a.pth"}

A conversion is bench code, chosen by name from ``KEY_CONVERSIONS`` (a recipe names it, it never supplies
one). Which checkpoint needs which conversion is found by ``bench preflight`` against the checkpoint's real
key layout (``bench/data/checkpoint_layouts/``), and written down in the paper's ``.md``.
"""
from __future__ import annotations

import re
from typing import Callable

from mmengine.model.weight_init import PretrainedInit, update_init_info
from mmengine.registry import WEIGHT_INITIALIZERS

_MMCLS_STEM = re.compile(r"^stem\.(\d+)\.(conv|bn)\.(.+)$")
_DOWNSAMPLE = re.compile(r"^(layer\d+\.\d+\.downsample)\.([01])\.(.+)$")


def mmcls_resnet_v1cd(state_dict: dict) -> dict:
    """mmcls / mmpretrain ResNetV1c / ResNetV1d -> mmdet ResNetV1c / ResNetV1d. Two containers differ:

    * the deep stem (three 3x3 conv-BN-ReLU, Bag of Tricks' ResNet-C/D): mmcls builds three ``ConvModule``s
      (``stem.{i}.conv.weight``, ``stem.{i}.bn.*``), mmdet one ``nn.Sequential`` of conv, BN, ReLU x 3
      (``stem.{3i}.weight``, ``stem.{3i+1}.*``; the ReLUs at 3i+2 hold nothing);
    * a stride-1 projection shortcut (``layer1.0``'s): mmcls's ResLayer puts the avg-down pooling in front of
      the 1x1 conv only when the block strides (``if avg_down and stride != 1``), so layer1.0's downsample is
      ``[conv, bn]`` (``downsample.0`` / ``.1``); mmdet's adds it whenever ``avg_down`` is set (a 1x1 pooling
      there), so its ``[pool, conv, bn]`` holds them at ``downsample.1`` / ``.2``. A block whose file
      downsample starts with a conv (``downsample.0.weight`` present) is shifted by one; the striding blocks
      (``downsample.1`` conv, ``.2`` BN in both) are kept.

    Every other key (bottlenecks' ``conv1/bn1..conv3/bn3``) is named alike and kept."""
    shifted = {m.group(1) for k in state_dict if (m := _DOWNSAMPLE.match(k)) and m.group(2) == "0"}
    out = {}
    for k, v in state_dict.items():
        m = _MMCLS_STEM.match(k)
        if m:
            i, part, rest = int(m.group(1)), m.group(2), m.group(3)
            k = f"stem.{3 * i + (1 if part == 'bn' else 0)}.{rest}"
        else:
            d = _DOWNSAMPLE.match(k)
            if d and d.group(1) in shifted:
                k = f"{d.group(1)}.{int(d.group(2)) + 1}.{d.group(3)}"
        out[k] = v
    return out


#: name -> conversion (state dict -> state dict); what ``ConvertedPretrained(convert=...)`` may name
KEY_CONVERSIONS: dict[str, Callable[[dict], dict]] = {
    "mmcls-resnet-v1cd": mmcls_resnet_v1cd,
}


@WEIGHT_INITIALIZERS.register_module()
class ConvertedPretrained(PretrainedInit):
    """mmengine's ``Pretrained`` with a key conversion from ``KEY_CONVERSIONS`` (see the module docstring)."""

    def __init__(self, checkpoint: str, convert: str, prefix: str | None = None, map_location: str = "cpu"):
        if convert not in KEY_CONVERSIONS:
            import difflib

            near = difflib.get_close_matches(convert, list(KEY_CONVERSIONS), n=1)
            raise ValueError(f"ConvertedPretrained: unknown key conversion {convert!r}"
                             + (f" (did you mean {near[0]!r}?)" if near else "")
                             + f"; known: {', '.join(sorted(KEY_CONVERSIONS))}")
        super().__init__(checkpoint, prefix=prefix, map_location=map_location)
        self.convert = convert

    def __call__(self, module) -> None:
        # looked up at call time, as PretrainedInit does, so a recorder patched into mmengine sees the load
        from mmengine.logging import print_log
        from mmengine.runner import checkpoint as ck

        if self.prefix is None:
            ckpt = ck._load_checkpoint(self.checkpoint, map_location=self.map_location, logger="current")
            state_dict = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
            state_dict = {re.sub(r"^module\.", "", k): v for k, v in state_dict.items()}
        else:
            state_dict = ck._load_checkpoint_with_prefix(self.prefix, self.checkpoint, map_location=self.map_location)
        print_log(f"load model from: {self.checkpoint} (keys converted: {self.convert})", logger="current")
        ck.load_state_dict(module, KEY_CONVERSIONS[self.convert](state_dict), strict=False, logger="current")
        if hasattr(module, "_params_init_info"):
            update_init_info(module, init_info=self._get_init_info())

    def _get_init_info(self) -> str:
        return f"{self.__class__.__name__}: load from {self.checkpoint} (keys converted: {self.convert})"
