"""Necks and detector of "Multi-level Feature Reweighting and Fusion for Instance Segmentation"
(Vo, Tran, Nguyen, Jo): Cross-Scale Reweighting (CSR, Sec. III-A, Eqs. 1-5, Fig. 2) and
Depth-to-Space fusion (D2S, Sec. III-B, Fig. 3), plus the FPN fusion baseline of Table II.

All necks take the ResNet-50 tuple ``(C3, C4, C5)`` (``out_indices=(1, 2, 3)``, channels
512/1024/2048, strides 8/16/32) and return a 1-tuple with ONE fused stride-8 feature, which the
:class:`~bench.models.kernel_head.KernelClsHead` consumes (Fig. 1).

Readings of the ambiguous parts (each also in ``csr_d2s.md``; when two readings were equally
plausible we took the one whose trainable-parameter count is closest to Tables I/III):

1. "1D convolution" (Eqs. 1 and 4).  ``W0 in R^{B_i x 256}``, ``W1 in R^{768 x 256}``,
   ``W2 in R^{256 x 256}`` are dense matrices acting on pooled channel vectors, so each "1D
   convolution" is a ``Conv1d`` with kernel size 1 (bias on) over the channel vector, i.e. a
   linear map.  An ECA-style 1D conv sliding along the channel axis (a handful of weights)
   cannot have those weight shapes, and would make Table III's parameter counts independent of
   the CSR width, whereas ``3584 * (1024 - 128) = 3.2M`` accounts for Table III's 3.25M spread.
2. CSR width.  Table III's "#channels" (128/256/512/1024) is the output width c of the per-level
   ``W0`` projections (so ``H`` has 3c entries and ``W1`` is 3c x 256); ``W2``, the reweighting
   vector ``R`` and the output ``O`` stay 256 wide, as Eq. 5 states ``O in R^{256 x H/32 x W/32}``.
3. Eq. 1 writes ``delta(W1 W2 H)``; shapes only compose as ``W2(W1 H)``.  No non-linearity is
   written between the two maps, so none is used by default (``csr_mid_act_cfg`` can add one).
4. C5 has 2048 channels but ``R`` and ``O`` have 256: a 1x1 convolution (FPN-style lateral,
   bias, no norm/activation) reduces C5 to 256 channels, then ``O = R (.) C5'`` (Eq. 5).
5. D2S (Fig. 3): PixelShuffle(r=2) (no parameters) followed by a 3x3 depthwise-separable conv
   (3x3 depthwise without bias + 1x1 pointwise with bias, no norm/activation by default).  The
   text says D2S "upsamples the feature map to the higher dimension that is equal to the feature
   dimension at the earlier layer" and fuses the reweighted C5 with "the original feature C4";
   so the pointwise conv maps to the *backbone* width of the next level and is added to the raw
   C4 (no lateral conv on C4/C3): ``O (256, s32) -> PS -> 64 @ s16 -> DWS -> 1024 (+ C4)``;
   the fused map goes through a second D2S, ``1024 -> PS -> 256 @ s8 -> DWS -> 512``, and is
   summed with the raw C3 ("the fused feature and the low-level feature C3 are summed").  The
   output is therefore 512 channels at stride 8.  This reading (no laterals) gives 32.4M
   parameters for the full model vs. 32.13M published; adding FPN-style 1x1 laterals to 256
   channels would give about 31.0M (-3.6%).
6. Sizes that are not multiples of 32: the up-sampled map is cropped to the next level's size
   right after the pixel shuffle (the extra row/column lies beyond the image border).
7. Ablations (Table II): "+D2S" keeps the same topology without the CSR gate; "+CSR" replaces
   each D2S block by the FPN way of up-sampling, nearest x2 followed by a 1x1 conv to the next
   level's width.  The baseline row ("FPN without any modification") is :class:`FPNFusionNeck`:
   mmdet's FPN (1x1 laterals, top-down nearest up-sampling, 3x3 output convs) on C3-C5, with
   P4 and P5 bilinearly resized to stride 8 and summed with P3 into one 256-channel map.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_activation_layer
from mmengine.model import BaseModule
from torch import Tensor

from mmdet.models.detectors.single_stage_instance_seg import SingleStageInstanceSegmentor
from mmdet.models.necks import FPN
from mmdet.registry import MODELS
from mmdet.utils import OptConfigType, OptMultiConfig

RESNET50_C3_C5 = (512, 1024, 2048)


def crop_to(x: Tensor, size: Sequence[int]) -> Tensor:
    """Crop (bottom/right) ``x`` to ``size``; resize bilinearly if it is smaller.

    A x2 up-sampled level-l map is at least as large as level l-1 because backbone sizes are
    ``ceil(H / stride)``; the surplus row/column lies past the image border.
    """
    h, w = int(size[0]), int(size[1])
    if x.shape[-2] >= h and x.shape[-1] >= w:
        return x[..., :h, :w]
    return F.interpolate(x, size=(h, w), mode='bilinear', align_corners=False)


@MODELS.register_module()
class CrossScaleReweighting(BaseModule):
    """Cross-Scale Reweighting gate R (paper Sec. III-A, Eqs. 1-4, Fig. 2).

    ``P_i = GAP(C_i)`` (Eq. 3), ``F_i = W0_i P_i`` (Eq. 4, per-level kernel-size-1 Conv1d to the
    CSR width c), ``H = [F3, F4, F5]`` (Eq. 2), ``R = sigmoid(W2 W1 H)`` (Eq. 1) with
    ``W1: 3c -> out_channels`` and ``W2: out_channels -> out_channels``.

    Args:
        in_channels: channels B_i of the backbone levels (C3, C4, C5).
        csr_channels: c, the per-level projection width (Table III: 128/256/512/1024).
        out_channels: length of R (256, the width of the reweighted C5).
        mid_act_cfg: optional activation between W1 and W2 (None = literal Eq. 1).
    """

    def __init__(self,
                 in_channels: Sequence[int] = RESNET50_C3_C5,
                 csr_channels: int = 256,
                 out_channels: int = 256,
                 mid_act_cfg: OptConfigType = None,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.in_channels = tuple(in_channels)
        self.csr_channels = csr_channels
        self.out_channels = out_channels
        self.level_proj = nn.ModuleList(
            [nn.Conv1d(c, csr_channels, kernel_size=1) for c in self.in_channels])  # W0
        self.w1 = nn.Conv1d(len(self.in_channels) * csr_channels, out_channels, kernel_size=1)
        self.mid_act = build_activation_layer(mid_act_cfg) if mid_act_cfg else nn.Identity()
        self.w2 = nn.Conv1d(out_channels, out_channels, kernel_size=1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """Return the channel gate R of shape (B, out_channels, 1, 1), values in (0, 1)."""
        assert len(feats) == len(self.in_channels)
        pooled = [f.mean(dim=(2, 3)).unsqueeze(-1) for f in feats]  # Eq. 3: (B, B_i, 1)
        h = torch.cat([proj(p) for proj, p in zip(self.level_proj, pooled)], dim=1)  # Eqs. 4, 2
        r = torch.sigmoid(self.w2(self.mid_act(self.w1(h))))  # Eq. 1
        return r.unsqueeze(-1)


@MODELS.register_module()
class DepthToSpace(BaseModule):
    """D2S block (paper Sec. III-B, Fig. 3): pixel shuffle (r x up-sampling, no parameters)
    followed by spatial mixing with a 3x3 depthwise-separable convolution.

    ``(B, C, H, W) -> PixelShuffle(r) -> (B, C / r^2, rH, rW) -> DW 3x3 -> PW 1x1 -> out``.

    Args:
        in_channels: C, must be divisible by r^2.
        out_channels: channels after the pointwise conv (the next level's width).
        scale: r (the paper uses 2).
        norm_cfg / act_cfg: optional norm / activation after the pointwise conv.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 scale: int = 2,
                 norm_cfg: OptConfigType = None,
                 act_cfg: OptConfigType = None,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        assert in_channels % (scale * scale) == 0, 'in_channels must be divisible by r^2'
        mid = in_channels // (scale * scale)
        self.scale = scale
        self.shuffle = nn.PixelShuffle(scale)
        self.depthwise = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False)
        self.pointwise = ConvModule(mid, out_channels, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)

    def forward(self, x: Tensor, out_size: Sequence[int] | None = None) -> Tensor:
        y = self.shuffle(x)
        if out_size is not None:
            y = crop_to(y, out_size)
        return self.pointwise(self.depthwise(y))


@MODELS.register_module()
class NearestUpConv(BaseModule):
    """FPN-style up-sampling used in place of D2S for the "+CSR only" ablation:
    nearest x2 interpolation followed by a 1x1 conv to the next level's width."""

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 scale: int = 2,
                 norm_cfg: OptConfigType = None,
                 act_cfg: OptConfigType = None,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.scale = scale
        self.conv = ConvModule(in_channels, out_channels, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)

    def forward(self, x: Tensor, out_size: Sequence[int] | None = None) -> Tensor:
        y = F.interpolate(x, scale_factor=self.scale, mode='nearest')
        if out_size is not None:
            y = crop_to(y, out_size)
        return self.conv(y)


@MODELS.register_module()
class CSRD2SNeck(BaseModule):
    """The proposed neck (paper Sec. III, Fig. 1): CSR-reweighted C5 fused top-down with the raw
    C4 and C3 through D2S blocks and summation; returns ``(fused,)`` at stride 8.

    ``O = R (.) Conv1x1(C5)`` (Eq. 5, R from :class:`CrossScaleReweighting` when ``use_csr``),
    ``X4 = D2S(O) + C4``, ``X3 = D2S(X4) + C3``; output ``(X3,)`` with ``in_channels[0]``
    channels.  ``use_d2s=False`` swaps each D2S for :class:`NearestUpConv` (Table II "+CSR");
    ``use_csr=False`` drops the gate (Table II "+D2S").

    Args:
        in_channels: backbone channels of (C3, C4, C5).
        top_channels: width of the reduced / reweighted C5 (256 in the paper).
        csr_channels: CSR projection width c (Table III).
        use_csr / use_d2s: switch the two proposed components (Table II).
        scale: pixel-shuffle factor r.
        csr_mid_act_cfg: optional activation between W1 and W2 of CSR.
        up_norm_cfg / up_act_cfg: optional norm / activation after each up-sampling block.
    """

    def __init__(self,
                 in_channels: Sequence[int] = RESNET50_C3_C5,
                 top_channels: int = 256,
                 csr_channels: int = 256,
                 use_csr: bool = True,
                 use_d2s: bool = True,
                 scale: int = 2,
                 csr_mid_act_cfg: OptConfigType = None,
                 up_norm_cfg: OptConfigType = None,
                 up_act_cfg: OptConfigType = None,
                 init_cfg: OptMultiConfig = dict(
                     type='Xavier', layer=['Conv2d', 'Conv1d'], distribution='uniform')) -> None:
        super().__init__(init_cfg=init_cfg)
        self.in_channels = tuple(in_channels)
        assert len(self.in_channels) >= 2
        self.out_channels = self.in_channels[0]
        self.use_csr = use_csr
        self.use_d2s = use_d2s
        self.reduce_top = nn.Conv2d(self.in_channels[-1], top_channels, 1)
        self.csr = CrossScaleReweighting(self.in_channels, csr_channels, top_channels,
                                         mid_act_cfg=csr_mid_act_cfg) if use_csr else None
        block = DepthToSpace if use_d2s else NearestUpConv
        widths = [top_channels] + list(self.in_channels[-2::-1])  # e.g. 256, 1024, 512
        self.up_blocks = nn.ModuleList([
            block(widths[i], widths[i + 1], scale=scale, norm_cfg=up_norm_cfg,
                  act_cfg=up_act_cfg) for i in range(len(self.in_channels) - 1)
        ])

    def reweight(self, inputs: Sequence[Tensor]) -> Tensor | None:
        """CSR gate R (B, top_channels, 1, 1), or None when CSR is disabled."""
        return self.csr(inputs) if self.csr is not None else None

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor]:
        assert len(inputs) == len(self.in_channels)
        x = self.reduce_top(inputs[-1])
        gate = self.reweight(inputs)
        if gate is not None:
            x = gate * x  # Eq. 5
        for block, lateral in zip(self.up_blocks, reversed(inputs[:-1])):
            x = block(x, lateral.shape[-2:]) + lateral
        return (x, )


@MODELS.register_module()
class FPNFusionNeck(BaseModule):
    """Table II baseline: unmodified FPN on (C3, C4, C5), fused into one stride-8 map by summing
    P3 with bilinearly up-sampled P4 and P5.

    Args:
        in_channels: backbone channels of (C3, C4, C5).
        out_channels: FPN width (256).
    """

    def __init__(self,
                 in_channels: Sequence[int] = RESNET50_C3_C5,
                 out_channels: int = 256,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.in_channels = tuple(in_channels)
        self.out_channels = out_channels
        self.fpn = FPN(in_channels=list(self.in_channels), out_channels=out_channels,
                       num_outs=len(self.in_channels))

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor]:
        outs = self.fpn(tuple(inputs))
        size = outs[0].shape[-2:]
        fused = outs[0]
        for p in outs[1:]:
            fused = fused + F.interpolate(p, size=size, mode='bilinear', align_corners=False)
        return (fused, )


@MODELS.register_module()
class KernelSegmentor(SingleStageInstanceSegmentor):
    """Fig. 1 segmentation model: ResNet-50 (C3-C5) -> one-map neck (CSR/D2S or FPN fusion) ->
    :class:`~bench.models.kernel_head.KernelClsHead` as ``mask_head``.

    Training returns the head's Eq. 6 losses; ``predict`` returns ``DetDataSample``s whose
    ``pred_instances`` have ``scores``, ``labels``, boolean ``masks`` at the original image size
    and ``bboxes`` derived from the masks, so CocoMetric can score both ``bbox`` and ``segm``.
    """
