"""AMF-SparseInst modules (Chen, Wan, Li, Liao, "AMF-SparseInst: Attention-guided Multi-Scale Feature Fusion
Network Based on SparseInst", ITC 53(3), 2024; ``../shared/papers/amf-sparseinst.txt``).

AMF-SparseInst is SparseInst (``bench/models/sparseinst.py``) with a new encoder (Sec. 3, Fig. 1):

* ``SimAMASPP`` (Sec. 3.1, Figs. 2-3) replaces SparseInst's PPM on the 1x1-projected C5: an ordinary 3x3
  conv, three 3x3 atrous depthwise-separable convs (rates 6, 18, 24) and global average pooling, concatenated,
  re-weighted by the parameter-free 3D attention ``SimAM`` [35], dropout, 1x1 projection;
* ``LiteBiFPN`` (Sec. 3, Fig. 1 dashed box) replaces SparseInst's top-down FPN: top-down P5 -> P4 -> P3,
  then bottom-up N3 -> N4 -> N5 with the residual edges C3 -> N3 and C4 -> N4, which carry their own 1x1
  projections of C3 and C4 (BiFPN's first-layer input edges), not the laterals already summed into P3/P4;
* ``FEM`` (Sec. 3.2, Fig. 4, Eqs. 1-6; abstract) refines the fused stride-8 map X_fusion before the decoder:
  eSE channel attention (GAP -> one C x C FC -> Hardsigmoid) computed from N5 and spatial attention (channel
  mean / max -> 5x5 conv -> sigmoid) computed from N3 ("uses N3 and N5 respectively to reweight fusion
  features in spatial and channel dimensions"), combined as ``F_out = W5 * X_ca + W3 * X_sa`` (Eq. 6).

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

from .sparseinst import TopDownFPN, c2_msra_fill, c2_xavier_fill, resize_to


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
    """Lite-BiFPN (Sec. 3, Fig. 1; Sec. 2.4; BiFPN [25]).

    ``L_i`` = 1x1 lateral of C_i (``context`` applied to L5, as SparseInst applies its PPM), then
    top-down  ``P5 = L5, P4 = L4 + up(P5), P3 = L3 + up(P4)`` (SparseInst's FPN),
    bottom-up ``N3 = conv(P3 + R3), N4 = conv(P4 + down(N3) + R4), N5 = conv(P5 + down(N4))``.

    ``R3``, ``R4`` are the residual edges "connecting C3 to N3 and C4 to N4": with ``residual_laterals``
    (default) each is its own 1x1 projection of C3 / C4 (bias, no norm, xavier like the laterals), as in
    BiFPN's first layer, where the same-level input edge of an output node is a second 1x1 projection of the
    backbone feature (P4_0 -> P4_2 uses its own resample conv, not the one feeding the top-down node).  With
    ``residual_laterals=False`` they reuse L3 / L4 (the earlier reading; then ``P3 + R3 = 2 L3 + up(P4)``,
    i.e. the edges only double laterals that P3/P4 already contain).  ``up`` = nearest x2, ``down`` = 3x3 max
    pooling with stride 2 (BiFPN's); one repeat; plain (unweighted) sums.  The three 3x3 convs are SparseInst's
    output convs.  Returns (N3, N4, N5)."""

    def __init__(self, in_channels: Sequence[int] = (512, 1024, 2048), out_channels: int = 256,
                 residual_laterals: bool = True) -> None:
        super().__init__()
        assert len(in_channels) == 3, 'Lite-BiFPN is defined on C3, C4, C5'
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                          for _ in in_channels)
        self.residual_laterals = residual_laterals
        # residual edges C3 -> N3 and C4 -> N4 (no edge at the top level, as in BiFPN)
        self.residual_convs = (nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels[:2])
                               if residual_laterals else None)
        convs = list(self.lateral_convs) + list(self.output_convs) + list(self.residual_convs or [])
        for m in convs:
            c2_xavier_fill(m)

    @staticmethod
    def down(x: Tensor, size: Sequence[int]) -> Tensor:
        return F.max_pool2d(x, 3, stride=2, padding=1)[..., :size[0], :size[1]]

    def residual_edges(self, inputs: Sequence[Tensor], l3: Tensor, l4: Tensor) -> tuple[Tensor, Tensor]:
        if self.residual_convs is None:
            return l3, l4
        return self.residual_convs[0](inputs[0]), self.residual_convs[1](inputs[1])

    def forward(self, inputs: Sequence[Tensor], context: nn.Module | None = None) -> list[Tensor]:
        l3, l4, l5 = (conv(x) for conv, x in zip(self.lateral_convs, inputs))
        r3, r4 = self.residual_edges(inputs, l3, l4)
        p5 = l5 if context is None else context(l5)
        p4 = l4 + resize_to(p5, l4.shape[-2:])
        p3 = l3 + resize_to(p4, l3.shape[-2:])
        n3 = self.output_convs[0](p3 + r3)
        n4 = self.output_convs[1](p4 + self.down(n3, p4.shape[-2:]) + r4)
        n5 = self.output_convs[2](p5 + self.down(n4, p5.shape[-2:]))
        return [n3, n4, n5]


@MODELS.register_module()
class FEM(nn.Module):
    """Feature Enhancement Module (Sec. 3.2, Fig. 4, Eqs. 1-6; abstract).

    Channel branch (Eqs. 1-2, eSE): ``X_ca = hsigmoid(W_c GAP(G5)) * X`` with one C x C FC (1x1 conv, bias).
    Spatial branch (Eqs. 3-5, CBAM-style): ``X_sa = sigmoid(conv_kxk([mean_c(G3), max_c(G3)])) * X``
    (k = ``sa_kernel_size`` = 5, no bias).  ``X`` is X_fusion, the map being reweighted.

    ``guide`` says where the attention weights are computed from:
    ``'levels'`` (default): G5 = N5, G3 = N3, the pyramid's coarsest and finest outputs -- the abstract's "FEM,
    which uses N3 and N5 respectively to reweight fusion features in spatial and channel dimensions", Sec.
    3.2's W3 / W5 as the weights of the spatial / channel terms named after N3 / N5, Sec. 4.4's "W3 and W5,
    which represent the weight sizes of the N3 and N5 features" and "we design FEM to effectively fuse the two
    levels features".  ``None``: G3 = G5 = X_fusion (the arguments written in Eqs. 1 and 4).

    ``connection``: 'parallel' -> ``F_out = w5 * X_ca + w3 * X_sa`` (Eq. 6, fixed weights, Table 8); 'serial'
    -> the spatial weights applied to ``X_ca`` (CBAM order; unguided, they are computed from ``X_ca``);
    ``None`` -> the single enabled branch (Table 6)."""

    def __init__(self, channels: int = 256, channel_attention: bool = True, spatial_attention: bool = True,
                 connection: str | None = 'parallel',
                 act_cfg: dict = dict(type='HSigmoid', bias=3.0, divisor=6.0), sa_kernel_size: int = 5,
                 w3: float = 0.6, w5: float = 0.4, guide: str | None = 'levels') -> None:
        super().__init__()
        assert channel_attention or spatial_attention, 'FEM needs at least one branch'
        both = channel_attention and spatial_attention
        assert connection in (('parallel', 'serial') if both else (None,)), \
            f'connection {connection!r} does not fit CA={channel_attention}, SA={spatial_attention}'
        assert guide in ('levels', None), f"guide must be 'levels' or None, got {guide!r}"
        self.connection = connection
        self.guide = guide
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

    def channel_weights(self, g: Tensor) -> Tensor:
        """A_ca (Eq. 1): B x C x 1 x 1."""
        return self.ca_act(self.ca_fc(F.adaptive_avg_pool2d(g, 1)))

    def spatial_weights(self, g: Tensor, size: Sequence[int]) -> Tensor:
        """A_sa (Eqs. 3-4): B x 1 x H x W at ``size``."""
        desc = torch.cat([g.mean(dim=1, keepdim=True), g.amax(dim=1, keepdim=True)], dim=1)
        return resize_to(torch.sigmoid(self.sa_conv(desc)), size, 'bilinear')

    def forward(self, x: Tensor, levels: Sequence[Tensor] | None = None) -> Tensor:
        if self.guide == 'levels':
            assert levels is not None and len(levels) >= 2, "guide='levels' needs the pyramid outputs (N3 .. N5)"
            g3, g5 = levels[0], levels[-1]
        else:
            g3 = g5 = None
        size = x.shape[-2:]
        if self.connection == 'parallel':
            x_ca = x * self.channel_weights(x if g5 is None else g5)
            x_sa = x * self.spatial_weights(x if g3 is None else g3, size)
            return self.w5 * x_ca + self.w3 * x_sa
        if self.connection == 'serial':
            x_ca = x * self.channel_weights(x if g5 is None else g5)
            return x_ca * self.spatial_weights(x_ca if g3 is None else g3, size)
        if self.ca_fc is not None:
            return x * self.channel_weights(x if g5 is None else g5)
        return x * self.spatial_weights(x if g3 is None else g3, size)


@MODELS.register_module()
class AMFEncoder(nn.Module):
    """AMF-SparseInst encoder (Fig. 1).  ``context`` replaces SparseInst's PPM on the projected C5
    (``None``: no context module); ``lite_bifpn`` replaces SparseInst's top-down FPN (``None``: SparseInst's
    FPN); the three outputs are resized to stride 8 (bilinear), concatenated and fused by a 1x1 conv into
    X_fusion (as in SparseInst, msra init; Sec. 3.2 "splicing operation and 1x1 convolution"), then ``fem``
    (``None``: identity) refines X_fusion for the decoder, its attention weights computed from the pyramid
    outputs (N3 for spatial, N5 for channel; SparseInst's FPN outputs when there is no Lite-BiFPN).
    With ``context`` = a PyramidPoolingModule and neither ``lite_bifpn`` nor ``fem`` it is SparseInst's
    InstanceContextEncoder (same modules, same computation)."""

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
        c2_msra_fill(self.fusion)  # SparseInst's encoder.py: c2_msra_fill(self.fusion)
        self.fem = MODELS.build(fem) if fem else None

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        levels = self.fpn(feats[-len(self.in_channels):], context=self.context)
        size = levels[0].shape[-2:]
        outs = [levels[0]] + [resize_to(x, size, 'bilinear') for x in levels[1:]]
        x = self.fusion(torch.cat(outs, dim=1))
        return self.fem(x, levels) if self.fem is not None else x
