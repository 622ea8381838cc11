"""Necks and detector of "Multi-level Feature Reweighting and Fusion for Instance Segmentation"
(Vo, Tran, Nguyen, Jo; ``../shared/papers/csr-d2s.txt``): Cross-Scale Reweighting (CSR, Sec. III-A,
Eqs. 1-5, Fig. 2) and Depth-to-Space fusion (D2S, Sec. III-B, Fig. 3), plus the FPN fusion baseline
of Table II and its one-component ablations.

All necks take the ResNet-50 tuple ``(C3, C4, C5)`` (``out_indices=(1, 2, 3)``, channels
512/1024/2048, strides 8/16/32) and return a 1-tuple with ONE fused stride-8 feature, which the
:class:`~bench.models.kernel_head.KernelClsHead` consumes (Fig. 1).

Readings of the ambiguous parts (each with the numbers of its alternatives in ``csr_d2s.md``):

1. CSR's "1D convolutions".  ``W0`` (Eq. 4, "1D convolution layer W0 in R^{B_i x 256} to reduce
   number of channels from B_i to 256") is a dense channel reduction: a kernel-size-1 ``Conv1d``
   ``B_i -> c`` per level.  ``W1`` and ``W2`` (Eq. 1, "linear transformations implemented by
   lightweight 1D convolution operation") are 1D convolutions *across the channel axis*
   (Sec. I: "calculated across the channel axis via efficient 1D convolution layers"): ``W1`` slides
   a ``k``-wide kernel over the channel axis of the three stacked level vectors (3 input channels,
   one output: the 768 -> 256 map of Eq. 1 at c = 256), ``W2`` a ``k``-wide kernel over the
   256-long result (the 256 -> 256 map).  Table III's parameter counts decide it: their
   least-squares line is 31.252M + 3,632 per CSR channel; everything of our model except the CSR
   is 31,256,609 and ``W0`` costs 3,587 per channel, so W1 and W2 carry almost nothing.  The dense
   reading (W1 a 3c x 256, W2 a 256 x 256 matrix; ``channel_mixing='linear'``) costs 4,355 per
   channel and is +2.59% at 1024 channels; this one is within 0.74% at all four widths.
2. CSR width (Table III "#channels") is c, the output width of the ``W0`` projections; R and O stay
   256 wide (Eq. 5: ``O in R^{256 x H/32 x W/32}``).  When c != 256 the c-long output of ``W1`` is
   linearly resampled to 256 (no parameters; the paper only gives the shapes at c = 256).
3. Eq. 1 writes ``delta(W1 W2 H)``; shapes only compose as ``W2(W1 H)``.  No non-linearity is
   written between the two maps, so none is used by default (``mid_act_cfg`` can add one).
4. C5 has 2048 channels but ``R`` and ``O`` have 256: a 1x1 convolution (FPN-style lateral,
   bias, no norm/activation) reduces C5 to 256 channels, then ``O = R (.) C5'`` (Eq. 5).
5. D2S (Fig. 3): PixelShuffle(r=2) (no parameters) followed by a 3x3 depthwise-separable conv
   (3x3 depthwise without bias + 1x1 pointwise with bias, no norm/activation by default).  In the
   full model (:class:`CSRD2SNeck`) D2S "upsamples the feature map to the higher dimension that is
   equal to the feature dimension at the earlier layer" and fuses the reweighted C5 with "the
   original feature C4": ``O (256, s32) -> PS -> 64 @ s16 -> DWS -> 1024 (+ C4)``, then
   ``1024 -> PS -> 256 @ s8 -> DWS -> 512 (+ C3)``; no lateral convs, 512-channel output.  This
   gives 32,174,895 parameters (+0.14% vs 32.13M); FPN-style 1x1 laterals to 256 channels with
   D2S at width 256 would give 31,222,383 (-2.8%).
6. Sizes that are not multiples of 32: the up-sampled map is cropped to the next level's size
   right after the pixel shuffle (the extra row/column lies beyond the image border).
7. Table II.  Baseline ("FPN without any modification", Sec. IV-B2) = :class:`FPNFusionNeck`:
   mmdet's FPN (1x1 laterals, top-down nearest x2, 3x3 output convs) on C3-C5, P4 and P5
   bilinearly resized to stride 8 and summed with P3 into one 256-channel map.  "+CSR" = the same
   neck with ``csr``: the CSR gate computed from (C3, C4, C5) reweights the 256-channel C5 lateral
   ("adding CSR to the top of the backbone"; the C5 lateral is the reduction of reading 4).
   "+D2S" = the same neck with ``upsample='d2s'``: each top-down nearest x2 becomes a D2S block at
   the FPN width ("D2S module as upsampling operation and spatial mixing").  "+CSR +D2S" is the
   paper's model, :class:`CSRD2SNeck`.
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


XAVIER_CONV = dict(type='Xavier', layer=['Conv2d', 'Conv1d'], distribution='uniform')


@MODELS.register_module()
class CrossScaleReweighting(BaseModule):
    """Cross-Scale Reweighting gate R (paper Sec. III-A, Eqs. 1-4, Fig. 2).

    ``P_i = GAP(C_i)`` (Eq. 3), ``F_i = W0_i P_i`` (Eq. 4, per-level kernel-size-1 Conv1d to the
    CSR width c), ``H = [F3, F4, F5]`` (Eq. 2), ``R = sigmoid(W2 W1 H)`` (Eq. 1).

    ``channel_mixing='conv'`` (default, module docstring reading 1): ``W1`` is a Conv1d with the
    three levels as input channels and one output channel, sliding a ``kernel_size`` kernel along
    the channel axis (``(3, c) -> c``); the result is linearly resampled to ``out_channels`` when
    c differs; ``W2`` is a Conv1d(1, 1, kernel_size) along the channel axis.
    ``channel_mixing='linear'``: the dense alternative, ``W1: 3c -> out_channels`` and
    ``W2: out_channels -> out_channels`` as kernel-size-1 Conv1d (kept to measure it).

    Args:
        in_channels: channels B_i of the backbone levels (C3, C4, C5).
        csr_channels: c, the per-level projection width (Table III: 128/256/512/1024).
        out_channels: length of R (256, the width of the reweighted C5).
        channel_mixing: 'conv' or 'linear' (see above).
        kernel_size: kernel of the channel-axis convolutions W1 and W2 ('conv' only).
        mid_act_cfg: optional activation between W1 and W2 (None = literal Eq. 1).
    """

    def __init__(self,
                 in_channels: Sequence[int] = RESNET50_C3_C5,
                 csr_channels: int = 256,
                 out_channels: int = 256,
                 channel_mixing: str = 'conv',
                 kernel_size: int = 3,
                 mid_act_cfg: OptConfigType = None,
                 init_cfg: OptMultiConfig = XAVIER_CONV) -> None:
        super().__init__(init_cfg=init_cfg)
        if channel_mixing not in ('conv', 'linear'):
            raise ValueError(f"channel_mixing must be 'conv' or 'linear', got {channel_mixing!r}")
        if kernel_size % 2 != 1:
            raise ValueError(f'kernel_size must be odd (same-length channel convolution), got {kernel_size}')
        self.in_channels = tuple(in_channels)
        self.csr_channels = csr_channels
        self.out_channels = out_channels
        self.channel_mixing = channel_mixing
        self.level_proj = nn.ModuleList(
            [nn.Conv1d(c, csr_channels, kernel_size=1) for c in self.in_channels])  # W0
        n = len(self.in_channels)
        if channel_mixing == 'conv':
            pad = kernel_size // 2
            self.w1 = nn.Conv1d(n, 1, kernel_size, padding=pad)
            self.w2 = nn.Conv1d(1, 1, kernel_size, padding=pad)
        else:
            self.w1 = nn.Conv1d(n * csr_channels, out_channels, kernel_size=1)
            self.w2 = nn.Conv1d(out_channels, out_channels, kernel_size=1)
        self.mid_act = build_activation_layer(mid_act_cfg) if mid_act_cfg else nn.Identity()

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """Return the channel gate R of shape (B, out_channels, 1, 1), values in (0, 1)."""
        assert len(feats) == len(self.in_channels)
        pooled = [f.mean(dim=(2, 3)).unsqueeze(-1) for f in feats]  # Eq. 3: (B, B_i, 1)
        levels = [proj(p) for proj, p in zip(self.level_proj, pooled)]  # Eq. 4: (B, c, 1) each
        if self.channel_mixing == 'conv':
            h = torch.cat([f.transpose(1, 2) for f in levels], dim=1)  # Eq. 2: (B, 3, c)
            x = self.w1(h)  # (B, 1, c)
            if x.shape[-1] != self.out_channels:
                x = F.interpolate(x, size=self.out_channels, mode='linear', align_corners=False)
            r = torch.sigmoid(self.w2(self.mid_act(x)))  # Eq. 1, (B, 1, out_channels)
            r = r.transpose(1, 2)
        else:
            h = torch.cat(levels, dim=1)  # Eq. 2: (B, 3c, 1)
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
                 init_cfg: OptMultiConfig = XAVIER_CONV) -> None:
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


def top_down_fuse(laterals: list[Tensor], up_blocks: nn.ModuleList | None) -> list[Tensor]:
    """FPN's top-down pathway over ``laterals`` (fine to coarse), in place: each coarser map is
    up-sampled to the next finer one's size and added.  ``up_blocks[i]`` (D2S) up-samples level
    ``i + 1`` to level ``i``; None = FPN's nearest interpolation to the finer size (mmdet FPN)."""
    for i in range(len(laterals) - 1, 0, -1):
        size = laterals[i - 1].shape[-2:]
        if up_blocks is None:
            up = F.interpolate(laterals[i], size=size, mode='nearest')
        else:
            up = up_blocks[i - 1](laterals[i], size)
        laterals[i - 1] = laterals[i - 1] + up
    return laterals


@MODELS.register_module()
class CSRD2SNeck(BaseModule):
    """The proposed neck (paper Sec. III, Fig. 1): CSR-reweighted C5 fused top-down with the raw
    C4 and C3 through D2S blocks and summation; returns ``(fused,)`` at stride 8.

    ``O = R (.) Conv1x1(C5)`` (Eq. 5, R from :class:`CrossScaleReweighting`),
    ``X4 = D2S(O) + C4``, ``X3 = D2S(X4) + C3``; output ``(X3,)`` with ``in_channels[0]``
    channels.  This is Table I "Ours", Table II "+CSR +D2S" and Table III; Table II's one-component
    rows are :class:`FPNFusionNeck` with ``csr`` or ``upsample='d2s'``.

    Args:
        in_channels: backbone channels of (C3, C4, C5).
        top_channels: width of the reduced / reweighted C5 (256 in the paper).
        csr_channels: CSR projection width c (Table III).
        csr: further :class:`CrossScaleReweighting` arguments (channel_mixing, kernel_size,
            mid_act_cfg).
        scale: pixel-shuffle factor r.
        up_norm_cfg / up_act_cfg: optional norm / activation after each D2S block.
    """

    def __init__(self,
                 in_channels: Sequence[int] = RESNET50_C3_C5,
                 top_channels: int = 256,
                 csr_channels: int = 256,
                 csr: OptConfigType = None,
                 scale: int = 2,
                 up_norm_cfg: OptConfigType = None,
                 up_act_cfg: OptConfigType = None,
                 init_cfg: OptMultiConfig = XAVIER_CONV) -> None:
        super().__init__(init_cfg=init_cfg)
        self.in_channels = tuple(in_channels)
        assert len(self.in_channels) >= 2
        self.out_channels = self.in_channels[0]
        self.reduce_top = nn.Conv2d(self.in_channels[-1], top_channels, 1)
        self.csr = CrossScaleReweighting(self.in_channels, csr_channels, top_channels,
                                         **dict(csr or {}))
        widths = [top_channels] + list(self.in_channels[-2::-1])  # e.g. 256, 1024, 512
        self.up_blocks = nn.ModuleList([
            DepthToSpace(widths[i], widths[i + 1], scale=scale, norm_cfg=up_norm_cfg,
                         act_cfg=up_act_cfg) for i in range(len(self.in_channels) - 1)
        ])

    def reweight(self, inputs: Sequence[Tensor]) -> Tensor:
        """CSR gate R (B, top_channels, 1, 1)."""
        return self.csr(inputs)

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor]:
        assert len(inputs) == len(self.in_channels)
        x = self.reweight(inputs) * self.reduce_top(inputs[-1])  # Eq. 5
        for block, lateral in zip(self.up_blocks, reversed(inputs[:-1])):
            x = block(x, lateral.shape[-2:]) + lateral
        return (x, )


@MODELS.register_module()
class FPNFusionNeck(BaseModule):
    """Table II baseline: unmodified FPN on (C3, C4, C5), fused into one stride-8 map by summing
    P3 with bilinearly up-sampled P4 and P5; and the baseline plus ONE proposed component:

    * ``csr`` (a dict of :class:`CrossScaleReweighting` arguments, e.g. ``dict(csr_channels=256)``):
      the CSR gate from (C3, C4, C5) multiplies the C5 lateral (256 channels) before the top-down
      pathway (Table II "+CSR"; Eq. 5 with the lateral as the C5 reduction);
    * ``upsample='d2s'``: every top-down x2 nearest interpolation is replaced by a
      :class:`DepthToSpace` block ``out_channels -> out_channels`` (Table II "+D2S").

    With neither, the output equals mmdet's ``FPN`` followed by the fusion sum.  The FPN's weights
    live in ``self.fpn`` (mmdet ``FPN``: ``lateral_convs``, ``fpn_convs``, its Xavier init).

    Args:
        in_channels: backbone channels of (C3, C4, C5).
        out_channels: FPN width (256).
        csr: None or CrossScaleReweighting arguments (``in_channels``/``out_channels`` are set
            here).
        upsample: 'nearest' (FPN) or 'd2s'.
        scale: pixel-shuffle factor r of the D2S blocks.
    """

    def __init__(self,
                 in_channels: Sequence[int] = RESNET50_C3_C5,
                 out_channels: int = 256,
                 csr: OptConfigType = None,
                 upsample: str = 'nearest',
                 scale: int = 2,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if upsample not in ('nearest', 'd2s'):
            raise ValueError(f"upsample must be 'nearest' or 'd2s', got {upsample!r}")
        self.in_channels = tuple(in_channels)
        self.out_channels = out_channels
        self.fpn = FPN(in_channels=list(self.in_channels), out_channels=out_channels,
                       num_outs=len(self.in_channels))
        self.csr = CrossScaleReweighting(self.in_channels, out_channels=out_channels,
                                         **dict(csr)) if csr else None
        self.up_blocks = nn.ModuleList([
            DepthToSpace(out_channels, out_channels, scale=scale)
            for _ in range(len(self.in_channels) - 1)
        ]) if upsample == 'd2s' else None

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor]:
        assert len(inputs) == len(self.in_channels)
        laterals = [conv(x) for conv, x in zip(self.fpn.lateral_convs, inputs)]
        if self.csr is not None:
            laterals[-1] = self.csr(inputs) * laterals[-1]  # Eq. 5 on the C5 lateral
        laterals = top_down_fuse(laterals, self.up_blocks)
        outs = [conv(x) for conv, x in zip(self.fpn.fpn_convs, laterals)]
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
