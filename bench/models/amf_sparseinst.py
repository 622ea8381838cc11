"""AMF-SparseInst modules (Chen, Wan, Li, Liao, "AMF-SparseInst: Attention-guided Multi-Scale Feature Fusion
Network Based on SparseInst", ITC 53(3), 2024; ``/work/shared/papers/amf-sparseinst.txt``).

AMF-SparseInst is SparseInst (``bench/models/sparseinst.py``) with a new encoder (Sec. 3, Fig. 1):

* ``SimAMASPP`` (Sec. 3.1, Figs. 2-3) replaces SparseInst's PPM on the 1x1-projected C5: an ordinary 3x3
  conv, three 3x3 atrous depthwise-separable convs (rates 6, 18, 24) and global average pooling, concatenated,
  re-weighted by the parameter-free 3D attention ``SimAM`` [35], dropout, 1x1 projection;
* ``LiteBiFPN`` (Sec. 3, Fig. 1 dashed box) replaces SparseInst's top-down FPN: top-down P5 -> P4 -> P3,
  then bottom-up N3 -> N4 -> N5 with the residual edges C3 -> N3 and C4 -> N4 "without increasing costs";
* ``FEM`` (Sec. 3.2, Fig. 4, Eqs. 1-6) refines the fused stride-8 map X_fusion before the decoder: eSE channel
  attention (GAP -> one C x C FC -> Hardsigmoid) and spatial attention (channel mean / max -> 5x5 conv ->
  sigmoid), combined as ``F_out = W5 * X_ca + W3 * X_sa`` (Eq. 6).

``AMFEncoder`` assembles them; every module can be switched off (``null``) for the ablations of Tables 4-8.
Readings of the ambiguous passages are listed in ``amf_sparseinst.md``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer
from torch import Tensor

from mmdet.registry import MODELS
from mmdet.utils import OptConfigType

from .sparseinst import TopDownFPN, c2_xavier_fill, resize_to


@MODELS.register_module()
class SimAM(nn.Module):
    """SimAM (Yang et al., ICML 2021): parameter-free 3D attention.  For each neuron the inverse of the
    minimal energy, ``e* ^-1 = (t - mu)^2 / (4 (sigma^2 + lambda)) + 0.5`` (sigma^2 over the n = HW - 1 other
    neurons of its channel), is passed through a sigmoid and multiplies the input."""

    def __init__(self, e_lambda: float = 1e-4) -> None:
        super().__init__()
        self.e_lambda = e_lambda

    def forward(self, x: Tensor) -> Tensor:
        n = max(x.shape[-2] * x.shape[-1] - 1, 1)
        d = (x - x.mean(dim=(-2, -1), keepdim=True)).pow(2)
        y = d / (4 * (d.sum(dim=(-2, -1), keepdim=True) / n + self.e_lambda)) + 0.5
        return x * torch.sigmoid(y)


def _conv_relu(in_c: int, out_c: int, k: int, dilation: int = 1, groups: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(in_c, out_c, k, padding=dilation * (k // 2), dilation=dilation, groups=groups)
    nn.init.kaiming_normal_(conv.weight, mode='fan_out', nonlinearity='relu')
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.ReLU(inplace=True))


@MODELS.register_module()
class SimAMASPP(nn.Module):
    """SimAM-ASPP (Sec. 3.1, Figs. 2-3).

    Branches on the input (the 256-channel projected C5): an ordinary 3x3 conv; one 3x3 atrous conv per
    dilation rate -- depthwise separable (3x3 depthwise atrous conv + 1x1 pointwise conv, each with ReLU) when
    ``depthwise``, an ordinary atrous 3x3 conv otherwise (Table 5's plain ASPP); global average pooling -> 1x1
    conv -> broadcast back.  Concatenation -> ``attention`` (SimAM; ``None`` = plain ASPP) -> dropout ->
    1x1 conv + ReLU to ``out_channels``.  Convs carry a bias and no normalisation, like the SparseInst encoder
    the module is placed in (the paper names no normalisation)."""

    def __init__(self, in_channels: int = 256, out_channels: int = 256, branch_channels: int = 256,
                 dilations: Sequence[int] = (6, 18, 24), depthwise: bool = True,
                 attention: OptConfigType = dict(type='SimAM', e_lambda=1e-4), dropout_ratio: float = 0.5) -> None:
        super().__init__()
        self.dilations = tuple(dilations)
        self.conv3x3 = _conv_relu(in_channels, branch_channels, 3)
        branches = []
        for d in self.dilations:
            if depthwise:
                branches.append(nn.Sequential(_conv_relu(in_channels, in_channels, 3, d, groups=in_channels),
                                              _conv_relu(in_channels, branch_channels, 1)))
            else:
                branches.append(_conv_relu(in_channels, branch_channels, 3, d))
        self.atrous = nn.ModuleList(branches)
        self.image_pool = _conv_relu(in_channels, branch_channels, 1)
        self.attention = MODELS.build(attention) if attention else nn.Identity()
        self.dropout = nn.Dropout(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        self.project = _conv_relu(branch_channels * (len(self.dilations) + 2), out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        pooled = self.image_pool(F.adaptive_avg_pool2d(x, 1)).expand(-1, -1, h, w)
        feats = [self.conv3x3(x)] + [b(x) for b in self.atrous] + [pooled]
        y = self.attention(torch.cat(feats, dim=1))
        return self.project(self.dropout(y))


@MODELS.register_module()
class LiteBiFPN(nn.Module):
    """Lite-BiFPN (Sec. 3, Fig. 1; Sec. 2.4).

    ``L_i`` = 1x1 lateral of C_i (``context`` applied to L5, as SparseInst applies its PPM), then
    top-down  ``P5 = L5, P4 = L4 + up(P5), P3 = L3 + up(P4)`` (SparseInst's FPN),
    bottom-up ``N3 = conv(P3 + L3), N4 = conv(P4 + down(N3) + L4), N5 = conv(P5 + down(N4))`` with the
    residual edges C3 -> N3 and C4 -> N4; ``up`` = nearest x2 (C5/N5-level features to the C4 size), ``down`` =
    3x3 max pooling with stride 2 (C3/N3-level to the C4 size, as in BiFPN); one repeat, plain (unweighted)
    sums.  The three 3x3 convs are SparseInst's output convs, so Lite-BiFPN has exactly the parameters of
    SparseInst's FPN ("fuse features through residual connections without increasing costs").
    Returns (N3, N4, N5)."""

    def __init__(self, in_channels: Sequence[int] = (512, 1024, 2048), out_channels: int = 256) -> None:
        super().__init__()
        assert len(in_channels) == 3, 'Lite-BiFPN is defined on C3, C4, C5'
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                          for _ in in_channels)
        for m in list(self.lateral_convs) + list(self.output_convs):
            c2_xavier_fill(m)

    @staticmethod
    def down(x: Tensor, size: Sequence[int]) -> Tensor:
        return F.max_pool2d(x, 3, stride=2, padding=1)[..., :size[0], :size[1]]

    def forward(self, inputs: Sequence[Tensor], context: nn.Module | None = None) -> list[Tensor]:
        l3, l4, l5 = (conv(x) for conv, x in zip(self.lateral_convs, inputs))
        p5 = l5 if context is None else context(l5)
        p4 = l4 + resize_to(p5, l4.shape[-2:])
        p3 = l3 + resize_to(p4, l3.shape[-2:])
        n3 = self.output_convs[0](p3 + l3)
        n4 = self.output_convs[1](p4 + self.down(n3, p4.shape[-2:]) + l4)
        n5 = self.output_convs[2](p5 + self.down(n4, p5.shape[-2:]))
        return [n3, n4, n5]


@MODELS.register_module()
class FEM(nn.Module):
    """Feature Enhancement Module (Sec. 3.2, Fig. 4).

    Channel branch (Eqs. 1-2, eSE): ``X_ca = hsigmoid(W_c GAP(X)) * X`` with one C x C FC (1x1 conv, bias).
    Spatial branch (Eqs. 3-5, CBAM-style): ``X_sa = sigmoid(conv_kxk([mean_c(X), max_c(X)])) * X``
    (k = ``sa_kernel_size`` = 5, no bias).  ``connection``: 'parallel' -> ``F_out = w5 * X_ca + w3 * X_sa``
    (Eq. 6, fixed weights, Table 8); 'serial' -> spatial branch applied to ``X_ca``; ``None`` -> the single
    enabled branch (Table 6)."""

    def __init__(self, channels: int = 256, channel_attention: bool = True, spatial_attention: bool = True,
                 connection: str | None = 'parallel',
                 act_cfg: dict = dict(type='HSigmoid', bias=3.0, divisor=6.0), sa_kernel_size: int = 5,
                 w3: float = 0.6, w5: float = 0.4) -> None:
        super().__init__()
        assert channel_attention or spatial_attention, 'FEM needs at least one branch'
        both = channel_attention and spatial_attention
        assert connection in (('parallel', 'serial') if both else (None,)), \
            f'connection {connection!r} does not fit CA={channel_attention}, SA={spatial_attention}'
        self.connection = connection
        self.w3, self.w5 = float(w3), float(w5)
        if channel_attention:
            self.ca_fc = nn.Conv2d(channels, channels, 1)
            self.ca_act = build_activation_layer(dict(act_cfg))
        else:
            self.ca_fc = None
        if spatial_attention:
            self.sa_conv = nn.Conv2d(2, 1, sa_kernel_size, padding=sa_kernel_size // 2, bias=False)
        else:
            self.sa_conv = None

    def channel(self, x: Tensor) -> Tensor:
        return x * self.ca_act(self.ca_fc(F.adaptive_avg_pool2d(x, 1)))

    def spatial(self, x: Tensor) -> Tensor:
        desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.sa_conv(desc))

    def forward(self, x: Tensor) -> Tensor:
        if self.connection == 'parallel':
            return self.w5 * self.channel(x) + self.w3 * self.spatial(x)
        if self.connection == 'serial':
            return self.spatial(self.channel(x))
        return self.channel(x) if self.ca_fc is not None else self.spatial(x)


@MODELS.register_module()
class AMFEncoder(nn.Module):
    """AMF-SparseInst encoder (Fig. 1).  ``context`` replaces SparseInst's PPM on the projected C5
    (``None``: no context module); ``lite_bifpn`` replaces SparseInst's top-down FPN (``None``: SparseInst's
    FPN); the three outputs are resized to stride 8 (bilinear), concatenated and fused by a 1x1 conv into
    X_fusion (as in SparseInst; Sec. 3.2 "splicing operation and 1x1 convolution"), then ``fem`` (``None``:
    identity) refines X_fusion for the decoder."""

    def __init__(self, in_channels: Sequence[int] = (512, 1024, 2048), out_channels: int = 256,
                 context: OptConfigType = None, lite_bifpn: OptConfigType = None,
                 fem: OptConfigType = None) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.context = MODELS.build(context) if context else None
        if lite_bifpn:
            cfg = dict(lite_bifpn)
            cfg.setdefault('in_channels', self.in_channels)
            cfg.setdefault('out_channels', out_channels)
            assert list(cfg['in_channels']) == self.in_channels and cfg['out_channels'] == out_channels
            self.fpn = MODELS.build(cfg)
        else:
            self.fpn = TopDownFPN(in_channels, out_channels)
        self.fusion = nn.Conv2d(out_channels * len(in_channels), out_channels, 1)
        c2_xavier_fill(self.fusion)
        self.fem = MODELS.build(fem) if fem else None

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        outs = self.fpn(feats[-len(self.in_channels):], context=self.context)
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [resize_to(x, size, 'bilinear') for x in outs[1:]]
        x = self.fusion(torch.cat(outs, dim=1))
        return self.fem(x) if self.fem is not None else x
