"""K-Net for instance segmentation (Zhang, Pang, Chen, Loy, "K-Net: Towards Unified Image
Segmentation", NeurIPS 2021), written for mmdet 3.x; Table I's "K-Net" row of the CSR-D2S paper
(ResNet-50, 12 epochs, 37.26M parameters, 34.1 mask AP).

Structure (K-Net Sec. 3 and its public R-50 instance-segmentation recipe):

* ResNet-50 C2-C5 -> mmdet FPN (256 channels, P2-P5).
* :class:`KNetSemanticFPN` (K-Net's "localisation FPN", a Semantic-FPN): every level is brought
  to stride 8 with 3x3 conv + GN + ReLU blocks and bilinear x2 up-sampling (P2 with one stride-2
  conv), P5 gets a sine positional encoding, the levels are summed and two 1x1 conv heads give
  the localisation feature and the semantic feature.
* Stage 0 ("kernel proposal"): N = 100 learned 1x1 kernels (``init_kernels``) convolve the
  localisation feature into N mask logits; a 1x1 semantic-segmentation conv is supervised with a
  thing-class semantic map.  The initial kernel features are the kernel weights plus the
  features pooled under each binarised initial mask.
* Three kernel-update stages (:class:`KernelUpdateStage`), each (K-Net Sec. 3.2):
  group-feature assembling (features summed under the binarised previous masks),
  adaptive kernel update (:class:`KernelUpdator`, gated fusion of kernels and assembled
  features, K-Net Eqs. 3-5), kernel interaction (multi-head self-attention + FFN over the N
  kernels), then class logits (sigmoid focal loss) and new dynamic 1x1 mask kernels.
* Set-based training: every stage is matched one-to-one (Hungarian) to the ground truth, using
  the previous stage's predictions as K-Net does; losses per stage: focal cls (x2), mask BCE
  (x1), Dice (x4); stage 0: mask BCE (x1), Dice (x4), semantic focal (x1).
* Inference: last stage, top-100 (kernel, class) pairs by sigmoid score, masks > 0.5, no NMS.

This file is an independent implementation; the public K-Net code was only read for facts
(layer widths, loss weights, the order of the update operations).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_activation_layer, build_norm_layer
from mmcv.cnn.bricks.transformer import FFN, MultiheadAttention
from mmengine.model import BaseModule, ModuleList, bias_init_with_prob, normal_init
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet.models.dense_heads.base_mask_head import BaseMaskHead
from mmdet.models.detectors.single_stage_instance_seg import SingleStageInstanceSegmentor
from mmdet.models.layers import SinePositionalEncoding
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.utils import ConfigType, InstanceList, OptConfigType, OptMultiConfig, reduce_mean

from .kernel_head import gt_masks_to_tensor, masks_to_results

GN32 = dict(type='GN', num_groups=32, requires_grad=True)


@MODELS.register_module()
class KNetSemanticFPN(BaseModule):
    """K-Net's localisation / semantic FPN: fuse FPN levels P2-P5 into one map at ``out_level``.

    Level l < out_level: ``out_level - l`` stride-2 3x3 convs.  Level l >= out_level: ``max(l, 1)``
    3x3 convs, with a bilinear x2 up-sampling after each of the first ``l - out_level`` ones
    (for out_level = 1: P2 1 conv, P3 1, P4 2, P5 3 -> 7 convs, as in K-Net's R-50 recipe).
    The top level gets a sine positional encoding before its convs.  The sum of the levels feeds
    two 1x1 conv + GN + ReLU heads: localisation and semantic features.
    """

    def __init__(self,
                 in_channels: int = 256,
                 feat_channels: int = 256,
                 out_channels: int = 256,
                 num_levels: int = 4,
                 out_level: int = 1,
                 norm_cfg: OptConfigType = GN32,
                 num_pos_feats: int | None = 128,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.num_levels = num_levels
        self.out_level = out_level
        act = dict(type='ReLU')
        self.level_convs = nn.ModuleList()
        for level in range(num_levels):
            layers: list[nn.Module] = []
            if level < out_level:
                for j in range(out_level - level):
                    layers.append(ConvModule(in_channels if j == 0 else feat_channels,
                                             feat_channels, 3, stride=2, padding=1,
                                             norm_cfg=norm_cfg, act_cfg=act))
            else:
                for j in range(max(level, 1)):
                    layers.append(ConvModule(in_channels if j == 0 else feat_channels,
                                             feat_channels, 3, padding=1,
                                             norm_cfg=norm_cfg, act_cfg=act))
                    if j < level - out_level:
                        layers.append(nn.Upsample(scale_factor=2, mode='bilinear',
                                                  align_corners=False))
            self.level_convs.append(nn.Sequential(*layers))
        self.positional_encoding = (SinePositionalEncoding(num_feats=num_pos_feats, normalize=True)
                                    if num_pos_feats else None)
        self.loc_out = ConvModule(feat_channels, out_channels, 1, norm_cfg=norm_cfg, act_cfg=act)
        self.sem_out = ConvModule(feat_channels, out_channels, 1, norm_cfg=norm_cfg, act_cfg=act)

    def init_weights(self) -> None:
        """Normal(0, 0.01) for all convs, as K-Net initialises its Semantic FPN."""
        super().init_weights()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                normal_init(m, std=0.01)

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        size = feats[self.out_level].shape[-2:]
        fused = None
        for level in range(self.num_levels):
            x = feats[level]
            if level == self.num_levels - 1 and self.positional_encoding is not None:
                pad = x.new_zeros((x.shape[0], x.shape[2], x.shape[3]), dtype=torch.bool)
                x = x + self.positional_encoding(pad)
            y = self.level_convs[level](x)
            if y.shape[-2:] != size:  # inputs whose size is not a multiple of 32
                y = F.interpolate(y, size=size, mode='bilinear', align_corners=False)
            fused = y if fused is None else fused + y
        return self.loc_out(fused), self.sem_out(fused)


class KernelUpdator(nn.Module):
    """Adaptive kernel update (K-Net Sec. 3.2, Eqs. 3-5).

    With assembled group features ``F`` and previous kernels ``K`` (both (B, N, C)):
    ``F^G = phi_in(F) * psi_in(K)``, ``G^F = sigmoid(LN(g_F(F^G)))``,
    ``G^K = sigmoid(LN(g_K(F^G)))``, ``K' = G^F * LN(phi_out(F)) + G^K * LN(psi_out(K))``,
    followed by a linear layer, LN and ReLU.
    """

    def __init__(self,
                 in_channels: int = 256,
                 feat_channels: int = 256,
                 out_channels: int = 256,
                 norm_cfg: ConfigType = dict(type='LN'),
                 act_cfg: ConfigType = dict(type='ReLU', inplace=True)) -> None:
        super().__init__()
        self.feat_channels = feat_channels
        self.feat_proj = nn.Linear(in_channels, 2 * feat_channels)  # phi_in, phi_out
        self.kernel_proj = nn.Linear(in_channels, 2 * feat_channels)  # psi_in, psi_out
        self.feat_gate = nn.Linear(feat_channels, feat_channels)
        self.kernel_gate = nn.Linear(feat_channels, feat_channels)
        self.feat_gate_norm = build_norm_layer(norm_cfg, feat_channels)[1]
        self.kernel_gate_norm = build_norm_layer(norm_cfg, feat_channels)[1]
        self.feat_out_norm = build_norm_layer(norm_cfg, feat_channels)[1]
        self.kernel_out_norm = build_norm_layer(norm_cfg, feat_channels)[1]
        self.out_fc = nn.Linear(feat_channels, out_channels)
        self.out_norm = build_norm_layer(norm_cfg, out_channels)[1]
        self.act = build_activation_layer(act_cfg)

    def forward(self, kernels: Tensor, group_feats: Tensor) -> Tensor:
        f_in, f_out = self.feat_proj(group_feats).split(self.feat_channels, dim=-1)
        k_in, k_out = self.kernel_proj(kernels).split(self.feat_channels, dim=-1)
        gate_feats = f_in * k_in
        g_feat = self.feat_gate_norm(self.feat_gate(gate_feats)).sigmoid()
        g_kernel = self.kernel_gate_norm(self.kernel_gate(gate_feats)).sigmoid()
        updated = g_feat * self.feat_out_norm(f_out) + g_kernel * self.kernel_out_norm(k_out)
        return self.act(self.out_norm(self.out_fc(updated)))


def _fc_stack(channels: int, num_fcs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_fcs):
        layers += [nn.Linear(channels, channels, bias=False), nn.LayerNorm(channels),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class KernelUpdateStage(BaseModule):
    """One K-Net kernel update head (K-Net Sec. 3.2-3.3, Fig. 3).

    Group-feature assembling under the binarised masks, adaptive kernel update, kernel
    interaction (MHSA + FFN, each with residual and LayerNorm), class logits and new dynamic
    1x1 mask kernels.
    """

    def __init__(self,
                 num_classes: int = 80,
                 in_channels: int = 256,
                 num_heads: int = 8,
                 feedforward_channels: int = 2048,
                 num_ffn_fcs: int = 2,
                 num_cls_fcs: int = 1,
                 num_mask_fcs: int = 1,
                 updator_channels: int = 256,
                 dropout: float = 0.0,
                 hard_mask_thr: float = 0.5,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.hard_mask_thr = hard_mask_thr
        self.feat_transform = nn.Conv2d(in_channels, in_channels, 1)
        self.updator = KernelUpdator(in_channels, updator_channels, in_channels)
        self.attention = MultiheadAttention(in_channels, num_heads, attn_drop=dropout,
                                            proj_drop=dropout, batch_first=True)
        self.attention_norm = nn.LayerNorm(in_channels)
        self.ffn = FFN(embed_dims=in_channels, feedforward_channels=feedforward_channels,
                       num_fcs=num_ffn_fcs, act_cfg=dict(type='ReLU', inplace=True),
                       ffn_drop=dropout)
        self.ffn_norm = nn.LayerNorm(in_channels)
        self.cls_fcs = _fc_stack(in_channels, num_cls_fcs)
        self.fc_cls = nn.Linear(in_channels, num_classes)
        self.mask_fcs = _fc_stack(in_channels, num_mask_fcs)
        self.fc_mask = nn.Linear(in_channels, in_channels)

    def init_weights(self) -> None:
        """Xavier-uniform for every matrix, focal-loss prior for the class bias (K-Net)."""
        super().init_weights()
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        nn.init.constant_(self.fc_cls.bias, bias_init_with_prob(0.01))

    def forward(self, feat: Tensor, kernels: Tensor,
                mask_logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Args: feat (B, C, H, W); kernels (B, N, C); mask_logits (B, N, h, w) of the previous
        stage.  Returns class logits (B, N, K), mask logits (B, N, H, W), new kernels."""
        x = self.feat_transform(feat)
        if mask_logits.shape[-2:] != x.shape[-2:]:
            mask_logits = F.interpolate(mask_logits, size=x.shape[-2:], mode='bilinear',
                                        align_corners=False)
        hard = (mask_logits.sigmoid() > self.hard_mask_thr).to(x.dtype)
        group_feats = torch.einsum('bnhw,bchw->bnc', hard, x)
        k = self.updator(kernels, group_feats)
        k = self.attention_norm(self.attention(k))
        k = self.ffn_norm(self.ffn(k))
        cls_logits = self.fc_cls(self.cls_fcs(k))
        dyn_kernels = self.fc_mask(self.mask_fcs(k))
        new_masks = torch.einsum('bnc,bchw->bnhw', dyn_kernels, x)
        return cls_logits, new_masks, k


@MODELS.register_module()
class KNetHead(BaseMaskHead):
    """K-Net instance head: Semantic FPN + kernel proposals + ``num_stages`` update stages.

    Args:
        num_classes: thing classes.
        in_channels: FPN width.
        num_proposals: N kernels (100).
        num_stages: kernel update stages (3).
        semantic_fpn: kwargs of :class:`KNetSemanticFPN`.
        stage_cfg: kwargs of :class:`KernelUpdateStage`.
        mask_upsample_stride: stride-8 logits are up-sampled by this before loss / inference.
        loss_*: stage losses (cls focal x2, mask BCE x1, dice x4) and stage-0 losses (mask BCE x1,
            dice x4, semantic focal x1), K-Net's weights.
        train_cfg: ``dict(rpn_assigner=..., assigner=...)``; ``rpn_assigner`` matches the stage-0
            masks (no class scores yet), ``assigner`` the later stages.
        test_cfg: ``dict(max_per_img=100, mask_thr=0.5)``.
    """

    def __init__(self,
                 num_classes: int = 80,
                 in_channels: int = 256,
                 num_proposals: int = 100,
                 num_stages: int = 3,
                 semantic_fpn: dict | None = None,
                 stage_cfg: dict | None = None,
                 mask_upsample_stride: int = 2,
                 kernel_init_std: float = 1.0,
                 loss_cls: ConfigType = dict(type='FocalLoss', use_sigmoid=True, gamma=2.0,
                                             alpha=0.25, loss_weight=2.0),
                 loss_mask: ConfigType = dict(type='CrossEntropyLoss', use_sigmoid=True,
                                              loss_weight=1.0),
                 loss_dice: ConfigType = dict(type='DiceLoss', use_sigmoid=True, activate=True,
                                              naive_dice=False, eps=1e-3, loss_weight=4.0),
                 loss_seg: ConfigType = dict(type='FocalLoss', use_sigmoid=True, gamma=2.0,
                                             alpha=0.25, loss_weight=1.0),
                 train_cfg: OptConfigType = None,
                 test_cfg: OptConfigType = None,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.num_classes = num_classes
        self.num_proposals = num_proposals
        self.num_stages = num_stages
        self.mask_upsample_stride = mask_upsample_stride
        self.kernel_init_std = kernel_init_std
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg if test_cfg is not None else {}

        self.semantic_fpn = KNetSemanticFPN(in_channels=in_channels, feat_channels=in_channels,
                                            out_channels=in_channels, **(semantic_fpn or {}))
        self.loc_conv = ConvModule(in_channels, in_channels, 1, norm_cfg=GN32)
        self.seg_conv = ConvModule(in_channels, in_channels, 1, norm_cfg=GN32)
        self.init_kernels = nn.Conv2d(in_channels, num_proposals, 1, bias=False)
        self.conv_seg = nn.Conv2d(in_channels, num_classes, 1)
        self.stages = ModuleList([  # mmengine's, so that each stage's init_weights runs
            KernelUpdateStage(num_classes=num_classes, in_channels=in_channels,
                              **(stage_cfg or {})) for _ in range(num_stages)
        ])
        self.loss_cls = MODELS.build(loss_cls)
        self.loss_mask = MODELS.build(loss_mask)
        self.loss_dice = MODELS.build(loss_dice)
        self.loss_seg = MODELS.build(loss_seg)
        self.rpn_assigner = self.assigner = None
        if train_cfg is not None:
            self.rpn_assigner = TASK_UTILS.build(train_cfg['rpn_assigner'])
            self.assigner = TASK_UTILS.build(train_cfg['assigner'])

    def init_weights(self) -> None:
        """K-Net initialisation of the proposal part (normal std 0.01 convs, std-1 kernels)."""
        super().init_weights()
        for conv in (self.loc_conv.conv, self.seg_conv.conv):
            normal_init(conv, std=0.01)
        normal_init(self.conv_seg, std=0.01, bias=bias_init_with_prob(0.01))
        normal_init(self.init_kernels, std=self.kernel_init_std)

    def _upsample(self, logits: Tensor) -> Tensor:
        if self.mask_upsample_stride == 1:
            return logits
        return F.interpolate(logits, scale_factor=self.mask_upsample_stride, mode='bilinear',
                             align_corners=False)

    def forward(self, x: Sequence[Tensor]) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        """Returns stage-0 mask logits (B, N, h8, w8), semantic logits (B, K, h8, w8), and per
        update stage the class logits (B, N, K) and mask logits (B, N, h8, w8)."""
        loc_feat, sem_feat = self.semantic_fpn(x)
        loc_feat = self.loc_conv(loc_feat)
        sem_feat = self.seg_conv(sem_feat)
        rpn_masks = self.init_kernels(loc_feat)
        seg_logits = self.conv_seg(sem_feat)
        feat = loc_feat + sem_feat
        b = feat.shape[0]
        hard = (rpn_masks.sigmoid() > 0.5).to(feat.dtype)
        kernels = self.init_kernels.weight.flatten(1)[None].expand(b, -1, -1)
        kernels = kernels + torch.einsum('bnhw,bchw->bnc', hard, feat)
        masks = rpn_masks
        stage_cls, stage_masks = [], []
        for stage in self.stages:
            cls_logits, masks, kernels = stage(feat, kernels, masks)
            stage_cls.append(cls_logits)
            stage_masks.append(masks)
        return rpn_masks, seg_logits, stage_cls, stage_masks

    # ------------------------------------------------------------------ training
    @staticmethod
    def _match(assigner: Any, mask_logits: Tensor, cls_logits: Tensor | None,
               gt_masks: Tensor, gt_labels: Tensor, img_meta: dict) -> tuple[Tensor, Tensor]:
        """Hungarian matching; returns matched prediction indices and their gt indices."""
        if gt_labels.numel() == 0:
            empty = gt_labels.new_zeros((0, ))
            return empty, empty
        pred = InstanceData(masks=mask_logits.detach())
        if cls_logits is not None:
            pred.scores = cls_logits.detach()
        gt = InstanceData(labels=gt_labels, masks=gt_masks)
        result = assigner.assign(pred_instances=pred, gt_instances=gt, img_meta=img_meta)
        pos = torch.nonzero(result.gt_inds > 0, as_tuple=False).squeeze(1)
        return pos, result.gt_inds[pos] - 1

    def _mask_losses(self, mask_logits: Tensor, matches: list[tuple[Tensor, Tensor]],
                     gt_masks: list[Tensor]) -> tuple[Tensor, Tensor]:
        preds = torch.cat([m[p] for m, (p, _) in zip(mask_logits, matches)])
        if preds.shape[0] == 0:
            zero = mask_logits.sum() * 0
            return zero, zero
        targets = torch.cat([g[t] for g, (_, t) in zip(gt_masks, matches)])
        num_pos = reduce_mean(preds.new_tensor(float(preds.shape[0]))).clamp(min=1.0)
        loss_mask = self.loss_mask(preds.flatten(1), targets.flatten(1))
        loss_dice = self.loss_dice(preds.flatten(1), targets.flatten(1),
                                   avg_factor=num_pos.item())
        return loss_mask, loss_dice

    def _cls_loss(self, cls_logits: Tensor, matches: list[tuple[Tensor, Tensor]],
                  gt_labels: list[Tensor]) -> Tensor:
        labels = []
        for (pos, gt_idx), lab in zip(matches, gt_labels):
            t = lab.new_full((self.num_proposals, ), self.num_classes)
            t[pos] = lab[gt_idx]
            labels.append(t)
        labels_t = torch.cat(labels)
        num_pos = sum(int(p.numel()) for p, _ in matches)
        avg = reduce_mean(cls_logits.new_tensor(float(num_pos))).clamp(min=1.0)
        return self.loss_cls(cls_logits.flatten(0, 1), labels_t, avg_factor=avg.item())

    def _seg_loss(self, seg_logits: Tensor, gt_masks: list[Tensor],
                  gt_labels: list[Tensor]) -> Tensor:
        """Focal loss of the stage-0 semantic map against the thing-class semantic target."""
        targets = []
        for masks, labels in zip(gt_masks, gt_labels):
            t = labels.new_full(seg_logits.shape[-2:], self.num_classes)
            for m, lab in zip(masks, labels):
                t[m > 0.5] = lab
            targets.append(t)
        target = torch.stack(targets).flatten()
        logits = seg_logits.permute(0, 2, 3, 1).reshape(-1, self.num_classes)
        num_fg = reduce_mean(logits.new_tensor(float((target < self.num_classes).sum())))
        return self.loss_seg(logits, target, avg_factor=num_fg.clamp(min=1.0).item())

    def loss_by_feat(self, rpn_masks: Tensor, seg_logits: Tensor, stage_cls: list[Tensor],
                     stage_masks: list[Tensor], batch_gt_instances: InstanceList,
                     batch_img_metas: list[dict], **kwargs: Any) -> dict[str, Tensor]:
        """Stage-0 and per-stage losses; stage s is matched on stage s-1's predictions."""
        assert self.rpn_assigner is not None and self.assigner is not None, \
            'train_cfg with rpn_assigner and assigner is required for training'
        rpn_masks = self._upsample(rpn_masks)
        size = tuple(rpn_masks.shape[-2:])
        gt_masks = [gt_masks_to_tensor(g, size, rpn_masks.device) for g in batch_gt_instances]
        gt_labels = [g.labels for g in batch_gt_instances]

        losses: dict[str, Tensor] = {}
        matches = [self._match(self.rpn_assigner, m, None, g, lab, meta)
                   for m, g, lab, meta in zip(rpn_masks, gt_masks, gt_labels, batch_img_metas)]
        losses['loss_rpn_mask'], losses['loss_rpn_dice'] = self._mask_losses(
            rpn_masks, matches, gt_masks)
        losses['loss_rpn_seg'] = self._seg_loss(self._upsample(seg_logits), gt_masks, gt_labels)
        for s, (cls_logits, masks) in enumerate(zip(stage_cls, stage_masks)):
            masks = self._upsample(masks)
            losses[f's{s}_loss_cls'] = self._cls_loss(cls_logits, matches, gt_labels)
            losses[f's{s}_loss_mask'], losses[f's{s}_loss_dice'] = self._mask_losses(
                masks, matches, gt_masks)
            if s + 1 < len(stage_cls):
                matches = [self._match(self.assigner, m, c, g, lab, meta) for m, c, g, lab, meta
                           in zip(masks, cls_logits, gt_masks, gt_labels, batch_img_metas)]
        return losses

    # ----------------------------------------------------------------- inference
    def predict_by_feat(self, rpn_masks: Tensor, seg_logits: Tensor, stage_cls: list[Tensor],
                        stage_masks: list[Tensor], batch_img_metas: list[dict],
                        rescale: bool = True, **kwargs: Any) -> InstanceList:
        """Last stage: top-k (kernel, class) pairs by sigmoid score, masks > 0.5, no NMS."""
        max_per_img = int(self.test_cfg.get('max_per_img', 100))
        mask_thr = float(self.test_cfg.get('mask_thr', 0.5))
        masks = self._upsample(stage_masks[-1])
        results = []
        for cls_i, masks_i, meta in zip(stage_cls[-1], masks, batch_img_metas):
            scores_all = cls_i.sigmoid()
            k = min(max_per_img, scores_all.numel())
            scores, idx = scores_all.flatten().topk(k)
            kernel_idx = torch.div(idx, self.num_classes, rounding_mode='floor')
            labels = idx % self.num_classes
            results.append(masks_to_results(masks_i[kernel_idx], scores, labels, meta, rescale,
                                            mask_thr=mask_thr, use_maskness=False,
                                            score_thr=float(self.test_cfg.get('score_thr', 0.0))))
        return results


@MODELS.register_module()
class KNet(SingleStageInstanceSegmentor):
    """K-Net detector: ResNet-50 + FPN (``neck``) + :class:`KNetHead` (``mask_head``)."""
