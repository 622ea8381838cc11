"""ISDA (Ying, Wang, Bai, Zhou, "ISDA: Position-aware Instance Segmentation with Deformable Attention";
``../shared/papers/isda.txt``), written for mmdet 3.3 from the paper's text.

Model (Fig. 2, Fig. 3, Fig. 4)::

    ResNet-50 (C2..C5) -> ChannelMapper neck (Sec. 3.1): P2..P5 (1x1 conv + GN) and P6 (3x3/2 conv on C5)
      |-> P3..P6 (+ sine positions + level embeddings) -> deformable encoder -> deformable decoder
      |     (300 learned queries) -> per decoder layer: object features O (256) and reference points R (x, y)
      |-> P2..P5 -> ISDAMaskFeatureHead (SOLOv2-style, Sec. 3.2 'Mask Feature Representation'):
      |     normalised coordinates concatenated to P5 (the 1/32 map) before its convs; per level
      |     repeated 3x3 conv + GN + ReLU + 2x bilinear up-sampling; sum at 1/4; 1x1 conv + GN + ReLU;
      |     MFR = [features (256), coordinate channels (2)] at the MFR stride
      '-> ISDAHead ('The Mask Head', Fig. 4; one shared head per decoder layer for the auxiliary losses):
            O -> Linear -> class logits P_c;  O -> FFN -> G_raw;  G_pos = [G_raw, R] (kernel positions, KP)
            masks M = G_pos (1x1 dynamic conv) MFR, at the MFR stride, resized to the image at test time
            (|G_pos| = |MFR|: 256, or 258 with MP; with KP, G_raw has 2 entries fewer and R multiplies the
            MFR's last two channels: the coordinate channels with MP, two learned channels without)
    Loss (Sec. 3.3): DETR's set loss (Hungarian matching, [1]) with the box loss replaced by the mask IoU loss
    1 - IoU(m, m_hat) (MaskIoULoss / MaskIoUCost); lambda_cls = 1 (sigmoid focal), lambda_mask = 3.
    Initialisation (Sec. 4): ResNet-50 from ImageNet; "the deformable Transformer and the classification branch"
    from a COCO Deformable DETR checkpoint (``ISDA.pretrained_parts``); neck, queries, kernel FFN, MFR head: own
    init.

Where the paper is silent, the assumptions are listed in ``isda.md`` (coordinate frame, kernel FFN depth,
the 1/8 and 1/2 MFRs, how the two position flags meet when only one is on, inference scoring).
"""
from __future__ import annotations

import copy
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet.models.detectors.deformable_detr import DeformableDETR
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.models.task_modules.assigners.match_cost import BaseMatchCost
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures import OptSampleList, SampleList
from mmdet.structures.mask import mask2bbox
from mmdet.utils import ConfigType, OptConfigType, reduce_mean


# --------------------------------------------------------------------------------------------- helpers
def pairwise_mask_iou(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """Soft IoU between every prediction (N, P) probabilities and every target (M, P) in [0, 1] -> (N, M)."""
    inter = pred @ target.t()
    union = pred.sum(-1)[:, None] + target.sum(-1)[None, :] - inter
    return inter / (union + eps)


def image_coordinates(batch: int, size: Sequence[int], valid_ratios: Optional[Tensor], like: Tensor) -> Tensor:
    """Two channels (x, y) of normalised pixel coordinates, (B, 2, h, w).

    The frame is the one of Deformable DETR's reference points: 0 .. 1 across the *valid* (unpadded) part of each
    image (pixel centres), > 1 in the padding, so that the MFR's coordinate channels and the kernel's reference
    point R (KP) share one coordinate system (Sec. 4.1: they 'are multiplied to compute positional similarities').
    ``valid_ratios`` (B, 2) = (valid_w / padded_w, valid_h / padded_h); None: the whole map is valid."""
    h, w = int(size[0]), int(size[1])
    xs = (torch.arange(w, device=like.device, dtype=like.dtype) + 0.5) / w
    ys = (torch.arange(h, device=like.device, dtype=like.dtype) + 0.5) / h
    yy, xx = torch.meshgrid(ys, xs, indexing='ij')
    coords = torch.stack([xx, yy])[None].repeat(batch, 1, 1, 1)
    if valid_ratios is not None:
        coords = coords / valid_ratios.to(like.dtype)[:, :, None, None].clamp(min=1e-6)
    return coords


def valid_ratios_from_samples(batch_data_samples: OptSampleList, like: Tensor) -> Optional[Tensor]:
    """(B, 2) valid (w, h) ratio of each image inside the padded batch, or None without meta information."""
    if not batch_data_samples:
        return None
    out = []
    for ds in batch_data_samples:
        meta = ds.metainfo
        if 'img_shape' not in meta or 'batch_input_shape' not in meta:
            return None
        (ih, iw), (bh, bw) = meta['img_shape'][:2], meta['batch_input_shape'][:2]
        out.append((iw / bw, ih / bh))
    return like.new_tensor(out)


# --------------------------------------------------------------------------------------------- losses
@MODELS.register_module()
class MaskIoULoss(nn.Module):
    """Mask IoU loss of Sec. 3.3: ``1 - IoU(m, m_hat)`` between the predicted soft mask (sigmoid of the logits
    when ``use_sigmoid``) and the matched ground-truth mask, per matched pair; weight lambda_mask (3.0).

    ``pred`` and ``target`` are (N, P) (or (N, h, w)); the result is reduced like mmdet's losses."""

    def __init__(self, use_sigmoid: bool = True, eps: float = 1e-6, reduction: str = 'mean',
                 loss_weight: float = 3.0) -> None:
        super().__init__()
        self.use_sigmoid = use_sigmoid
        self.eps = eps
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                avg_factor: Optional[float] = None, reduction_override: Optional[str] = None) -> Tensor:
        reduction = reduction_override or self.reduction
        p = pred.flatten(1).sigmoid() if self.use_sigmoid else pred.flatten(1)
        t = target.flatten(1).to(p.dtype)
        inter = (p * t).sum(-1)
        iou = inter / (p.sum(-1) + t.sum(-1) - inter + self.eps)
        loss = 1 - iou
        return self.loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)


@TASK_UTILS.register_module()
class MaskIoUCost(BaseMatchCost):
    """Matching cost ``weight * (1 - IoU)`` between every predicted mask (``pred_instances.masks``, logits when
    ``use_sigmoid``) and every ground-truth mask (``gt_instances.masks``, float tensor of the same spatial size)
    for mmdet's HungarianAssigner (Sec. 3.3: the mask IoU replaces DETR's box terms)."""

    def __init__(self, weight: float = 3.0, use_sigmoid: bool = True) -> None:
        super().__init__(weight=weight)
        self.use_sigmoid = use_sigmoid

    def __call__(self, pred_instances: InstanceData, gt_instances: InstanceData,
                 img_meta: Optional[dict] = None, **kwargs) -> Tensor:
        pred = pred_instances.masks.flatten(1).float()
        pred = pred.sigmoid() if self.use_sigmoid else pred
        gt = gt_instances.masks
        gt = (gt.to_tensor(dtype=pred.dtype, device=pred.device) if not isinstance(gt, Tensor) else gt)
        gt = gt.flatten(1).to(pred.dtype)
        return (1 - pairwise_mask_iou(pred, gt)) * self.weight


# --------------------------------------------------------------------------------------------- MFR
@MODELS.register_module()
class ISDAMaskFeatureHead(BaseModule):
    """Mask feature representation (Sec. 3.2 'Mask Feature Representation', SOLOv2-style).

    Level ``start_level`` (P2) gets one 3x3 conv + GN + ReLU; level i above it gets i stages of
    (3x3 conv + GN + ReLU, 2x bilinear up-sampling); the top level (P5, 1/32) gets two normalised coordinate
    channels concatenated *before* its first conv when ``mfr_positions``.  The stride-4 maps are summed, resampled
    (bilinear) to ``mask_stride`` if that is not 4 (Table 1's 1/8 and 1/2 MFRs; how the paper built them is not
    stated), and projected by a 1x1 conv + GN + ReLU to ``out_channels``.

    ``forward(feats, valid_ratios)`` returns the MFR that meets the kernels: ``[features, coords]`` (258 channels)
    with ``mfr_positions`` (Sec. 4.1 'add two channels of normalized pixel coordinates to the mask feature'), the
    ``out_channels`` learned features (256) without."""

    def __init__(self, in_channels: int = 256, feat_channels: int = 128, out_channels: int = 256,
                 start_level: int = 0, end_level: int = 3, mask_stride: int = 4, mfr_positions: bool = True,
                 conv_cfg: OptConfigType = None,
                 norm_cfg: ConfigType = dict(type='GN', num_groups=32, requires_grad=True),
                 init_cfg=dict(type='Normal', layer='Conv2d', std=0.01)) -> None:
        super().__init__(init_cfg=init_cfg)
        assert 0 <= start_level <= end_level
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.start_level = start_level
        self.end_level = end_level
        self.mask_stride = mask_stride
        self.base_stride = 2 ** (start_level + 2)  # P2 -> 4
        self.mfr_positions = mfr_positions
        self.convs_all_levels = nn.ModuleList()
        for i in range(end_level - start_level + 1):
            stages = nn.Sequential()
            if i == 0:
                stages.add_module('conv0', ConvModule(in_channels, feat_channels, 3, padding=1,
                                                      conv_cfg=conv_cfg, norm_cfg=norm_cfg))
            for j in range(i):
                chn = in_channels if j == 0 else feat_channels
                if j == 0 and i == end_level - start_level and mfr_positions:
                    chn += 2
                stages.add_module(f'conv{j}', ConvModule(chn, feat_channels, 3, padding=1,
                                                         conv_cfg=conv_cfg, norm_cfg=norm_cfg))
                stages.add_module(f'upsample{j}', nn.Upsample(scale_factor=2, mode='bilinear',
                                                              align_corners=False))
            self.convs_all_levels.append(stages)
        self.conv_pred = ConvModule(feat_channels, out_channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg)

    @property
    def mfr_channels(self) -> int:
        """Channels of the MFR that meets the kernels (``out_channels`` + 2 coordinate channels with MP)."""
        return self.out_channels + (2 if self.mfr_positions else 0)

    def forward(self, feats: Sequence[Tensor], valid_ratios: Optional[Tensor] = None) -> Tensor:
        inputs = feats[self.start_level:self.end_level + 1]
        assert len(inputs) == len(self.convs_all_levels)
        fused = None
        for i, (x, convs) in enumerate(zip(inputs, self.convs_all_levels)):
            if i == len(inputs) - 1 and i > 0 and self.mfr_positions:
                x = torch.cat([x, image_coordinates(x.shape[0], x.shape[-2:], valid_ratios, x)], dim=1)
            y = convs(x)
            if fused is None:
                fused = y
            else:
                if y.shape[-2:] != fused.shape[-2:]:  # odd input sizes: align to the stride-4 map
                    y = F.interpolate(y, size=fused.shape[-2:], mode='bilinear', align_corners=False)
                fused = fused + y
        if self.mask_stride != self.base_stride:
            h, w = fused.shape[-2:]
            size = (max(1, math.ceil(h * self.base_stride / self.mask_stride)),
                    max(1, math.ceil(w * self.base_stride / self.mask_stride)))
            fused = F.interpolate(fused, size=size, mode='bilinear', align_corners=False)
        mfr = self.conv_pred(fused)
        if self.mfr_positions:
            mfr = torch.cat([mfr, image_coordinates(mfr.shape[0], mfr.shape[-2:], valid_ratios, mfr)], dim=1)
        return mfr


# --------------------------------------------------------------------------------------------- head
@MODELS.register_module()
class ISDAHead(BaseModule):
    """ISDA's mask head (Sec. 3.2 'The Mask Head', Fig. 4) with the mask feature head and the set loss (Sec. 3.3).

    For each decoder layer (``num_pred_layer``; one shared set of weights with ``share_pred_layer``, Fig. 3):
    the object feature O goes through a Linear classifier (Deformable DETR's classification branch) and a 3-layer
    FFN that gives G_raw; with ``kernel_positions`` the reference point R (x, y) is concatenated (G_pos); the
    masks are the 1x1 dynamic convolution of G_pos with the MFR.

    The kernel is as long as the MFR (``kernel_dims = mask_feature_head.mfr_channels``: 256, or 258 with MP), so
    G_raw has ``kernel_dims - 2`` entries with KP and R multiplies the MFR's last two channels: with MP the pixel
    coordinates (Sec. 4.1 'the concatenated coordinate channels in MFR and the reference points in kernels are
    multiplied'), without MP two learned feature channels (Table 2 'KP' row; see isda.md)."""

    def __init__(self, num_classes: int = 80, embed_dims: int = 256, num_pred_layer: int = 6,
                 share_pred_layer: bool = True, as_two_stage: bool = False, kernel_positions: bool = True,
                 num_kernel_fcs: int = 3,
                 mask_feature_head: ConfigType = dict(type='ISDAMaskFeatureHead'),
                 loss_cls: ConfigType = dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                                             loss_weight=1.0),
                 loss_mask: ConfigType = dict(type='MaskIoULoss', loss_weight=3.0),
                 train_cfg: OptConfigType = dict(assigner=dict(
                     type='HungarianAssigner', match_costs=[dict(type='FocalLossCost', weight=1.0),
                                                            dict(type='MaskIoUCost', weight=3.0)])),
                 test_cfg: OptConfigType = dict(max_per_img=100, mask_thr=0.5),
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        assert not as_two_stage, 'ISDA uses learned queries (as_two_stage=False)'
        self.num_classes = num_classes
        self.embed_dims = embed_dims
        self.num_pred_layer = num_pred_layer
        self.share_pred_layer = share_pred_layer
        self.kernel_positions = kernel_positions
        self.train_cfg = train_cfg or {}
        self.test_cfg = test_cfg or {}
        self.mask_feature_head = MODELS.build(mask_feature_head)
        # G_pos (1x1 dynamic conv) MFR: the kernel is as long as the MFR; KP takes 2 of its entries for R
        self.kernel_dims = self.mask_feature_head.mfr_channels
        raw_dims = self.kernel_dims - (2 if kernel_positions else 0)

        cls_branch = nn.Linear(embed_dims, num_classes)
        layers: List[nn.Module] = []
        for i in range(num_kernel_fcs - 1):
            layers += [nn.Linear(embed_dims, embed_dims), nn.ReLU()]
        layers.append(nn.Linear(embed_dims, raw_dims))
        kernel_branch = nn.Sequential(*layers)
        if share_pred_layer:
            self.cls_branches = nn.ModuleList([cls_branch for _ in range(num_pred_layer)])
            self.kernel_branches = nn.ModuleList([kernel_branch for _ in range(num_pred_layer)])
        else:
            self.cls_branches = nn.ModuleList([copy.deepcopy(cls_branch) for _ in range(num_pred_layer)])
            self.kernel_branches = nn.ModuleList([copy.deepcopy(kernel_branch) for _ in range(num_pred_layer)])

        self.loss_cls = MODELS.build(loss_cls)
        self.loss_mask = MODELS.build(loss_mask)
        self.assigner = TASK_UTILS.build(self.train_cfg['assigner']) if 'assigner' in self.train_cfg else None

    def init_weights(self) -> None:
        super().init_weights()
        bias_init = -math.log((1 - 0.01) / 0.01)  # focal-loss prior 0.01, as Deformable DETR's head
        for m in self.cls_branches:
            nn.init.constant_(m.bias, bias_init)

    # ------------------------------------------------------------------ forward
    def forward(self, hidden_states: Tensor, references: Sequence[Tensor], mlvl_feats: Sequence[Tensor],
                valid_ratios: Optional[Tensor] = None, first_layer: int = 0) -> Tuple[Tensor, Tensor]:
        """``hidden_states`` (L, B, Q, C) decoder outputs, ``references`` L(+1) x (B, Q, 2) normalised reference
        points, ``mlvl_feats`` the neck outputs (P2..P6).  Returns class logits (L, B, Q, num_classes) and mask
        logits (L, B, Q, h, w) at the MFR stride."""
        mfr = self.mask_feature_head(mlvl_feats, valid_ratios)
        b, d, h, w = mfr.shape
        mfr_flat = mfr.flatten(2)
        all_cls, all_masks = [], []
        hidden_states = hidden_states[first_layer:]
        for layer, o in enumerate(hidden_states, start=first_layer):
            kernel = self.kernel_branches[layer](o)
            if self.kernel_positions:
                kernel = torch.cat([kernel, references[layer][..., :2].to(kernel.dtype)], dim=-1)
            all_cls.append(self.cls_branches[layer](o))
            all_masks.append(torch.bmm(kernel, mfr_flat).view(b, -1, h, w))
        return torch.stack(all_cls), torch.stack(all_masks)

    # ------------------------------------------------------------------ training
    def loss(self, hidden_states: Tensor, references: Sequence[Tensor], mlvl_feats: Sequence[Tensor],
             batch_data_samples: SampleList, valid_ratios: Optional[Tensor] = None, **kwargs) -> Dict[str, Tensor]:
        all_cls, all_masks = self(hidden_states, references, mlvl_feats, valid_ratios)
        gts = [ds.gt_instances for ds in batch_data_samples]
        metas = [ds.metainfo for ds in batch_data_samples]
        size = all_masks.shape[-2:]
        gt_masks = [self._gt_masks(gt, size, all_masks) for gt in gts]
        losses: Dict[str, Tensor] = {}
        num_layers = all_cls.shape[0]
        for layer in range(num_layers):
            lc, lm = self._loss_single(all_cls[layer], all_masks[layer], gts, gt_masks, metas)
            prefix = '' if layer == num_layers - 1 else f'd{layer}.'
            losses[f'{prefix}loss_cls'] = lc
            losses[f'{prefix}loss_mask'] = lm
        return losses

    @staticmethod
    def _gt_masks(gt: InstanceData, size: Sequence[int], like: Tensor) -> Tensor:
        """Ground-truth masks (padded batch size) as float (M, h, w), bilinearly resized to the MFR size."""
        if len(gt) == 0:
            return like.new_zeros((0, *size))
        masks = gt.masks.to_tensor(dtype=like.dtype, device=like.device)
        return F.interpolate(masks[:, None], size=tuple(size), mode='bilinear', align_corners=False)[:, 0]

    def _loss_single(self, cls_scores: Tensor, mask_preds: Tensor, gts: List[InstanceData],
                     gt_masks: List[Tensor], metas: List[dict]) -> Tuple[Tensor, Tensor]:
        b, q = cls_scores.shape[:2]
        labels = cls_scores.new_full((b, q), self.num_classes, dtype=torch.long)
        src_masks, tgt_masks = [], []
        for i in range(b):
            pred = InstanceData(scores=cls_scores[i].detach(), masks=mask_preds[i].detach())
            gt = InstanceData(labels=gts[i].labels.to(cls_scores.device), masks=gt_masks[i])
            res = self.assigner.assign(pred, gt, img_meta=metas[i])
            pos = torch.nonzero(res.gt_inds > 0, as_tuple=False).squeeze(-1)
            gt_idx = res.gt_inds[pos] - 1
            labels[i, pos] = gt.labels[gt_idx]
            src_masks.append(mask_preds[i, pos])
            tgt_masks.append(gt_masks[i][gt_idx])
        num_pos = sum(len(m) for m in src_masks)
        avg = reduce_mean(cls_scores.new_tensor([float(num_pos)])).clamp(min=1).item()
        loss_cls = self.loss_cls(cls_scores.flatten(0, 1), labels.flatten(), avg_factor=avg)
        src = torch.cat(src_masks)
        if src.shape[0] == 0:
            loss_mask = mask_preds.sum() * 0.0
        else:
            loss_mask = self.loss_mask(src.flatten(1), torch.cat(tgt_masks).flatten(1), avg_factor=avg)
        return loss_cls, loss_mask

    # ------------------------------------------------------------------ inference
    def predict(self, hidden_states: Tensor, references: Sequence[Tensor], mlvl_feats: Sequence[Tensor],
                batch_data_samples: SampleList, rescale: bool = True, valid_ratios: Optional[Tensor] = None,
                **kwargs) -> List[InstanceData]:
        last = hidden_states.shape[0] - 1  # only the last decoder layer is used at test time
        all_cls, all_masks = self(hidden_states, references, mlvl_feats, valid_ratios, first_layer=last)
        pad_hw = batch_data_samples[0].metainfo.get('batch_input_shape')
        return [self._predict_single(all_cls[-1, i], all_masks[-1, i], ds.metainfo, pad_hw, rescale)
                for i, ds in enumerate(batch_data_samples)]

    @torch.no_grad()
    def _predict_single(self, cls_score: Tensor, mask_pred: Tensor, meta: dict, pad_hw, rescale: bool
                        ) -> InstanceData:
        """Deformable DETR's top-k over (query, class) pairs by sigmoid score (no NMS); each kept pair's mask is
        resized to the padded input, cropped to ``img_shape``, resized to ``ori_shape`` (rescale) and binarised at
        ``mask_thr``; boxes are the masks' extents."""
        max_per_img = min(self.test_cfg.get('max_per_img', 100), cls_score.numel())
        mask_thr = self.test_cfg.get('mask_thr', 0.5)
        scores, idx = cls_score.sigmoid().flatten().topk(max_per_img)
        labels = idx % self.num_classes
        queries = idx // self.num_classes
        img_h, img_w = meta['img_shape'][:2]
        if pad_hw is None:
            pad_hw = (img_h, img_w)
        out_hw = meta['ori_shape'][:2] if rescale else (img_h, img_w)
        masks = mask_pred[queries][None].sigmoid()
        masks = F.interpolate(masks, size=tuple(pad_hw), mode='bilinear', align_corners=False)
        masks = masks[..., :img_h, :img_w]
        if tuple(out_hw) != (img_h, img_w):
            masks = F.interpolate(masks, size=tuple(out_hw), mode='bilinear', align_corners=False)
        masks = masks[0] > mask_thr
        res = InstanceData()
        res.scores, res.labels, res.masks = scores, labels, masks
        res.bboxes = mask2bbox(masks).to(scores.dtype)
        return res


# --------------------------------------------------------------------------------------------- detector
# Sec. 4: "The deformable Transformer and the classification branch in ISDA are pretrained on MS COCO"; the
# backbone starts from ImageNet, and "these queries are learned during training with random initialization"
# (Sec. 3.2 'Decoder').  State-dict prefixes (mmdet 3.x Deformable DETR names) loaded from the COCO checkpoint:
# the deformable Transformer = encoder, decoder, level embeddings and the reference-point FC (mmdet 2.x's
# DeformableDetrTransformer, the module ISDA was built on), plus the classification branch.
COCO_PRETRAINED_PARTS = ('encoder.', 'decoder.', 'level_embed', 'reference_points_fc.', 'bbox_head.cls_branches.')


@MODELS.register_module()
class ISDA(DeformableDETR):
    """ISDA detector (Fig. 2): Deformable DETR (learned queries, no box refinement, not two-stage) whose encoder
    takes the neck outputs ``encoder_levels`` (P3..P6 of P2..P6, Sec. 3.2 'Encoder'), and whose head gets the
    decoder's object features with their reference points (Fig. 3) plus all neck outputs (for the MFR).

    ``pretrained_parts``: state-dict prefixes taken from the model-level ``Pretrained`` checkpoint (a COCO
    Deformable DETR); everything else keeps its own initialisation (the backbone its ImageNet ``init_cfg``)."""

    def __init__(self, *args, encoder_levels: Sequence[int] = (1, 2, 3, 4), bbox_head: OptConfigType = None,
                 pretrained_parts: Sequence[str] = COCO_PRETRAINED_PARTS, **kwargs) -> None:
        if bbox_head is not None:
            bbox_head = copy.deepcopy(bbox_head)
            # DeformableDETR sets these itself (share = not with_box_refine, num = decoder layers)
            bbox_head.pop('share_pred_layer', None)
            bbox_head.pop('num_pred_layer', None)
            bbox_head.pop('as_two_stage', None)
        self.encoder_levels = tuple(encoder_levels)
        self.pretrained_parts = tuple(pretrained_parts)
        super().__init__(*args, bbox_head=bbox_head, **kwargs)
        assert len(self.encoder_levels) == self.num_feature_levels
        assert not self.as_two_stage and not self.with_box_refine

    def init_weights(self) -> None:
        """Ordinary init first (the backbone loads its own ImageNet ``init_cfg``), then, with a model-level
        ``init_cfg=dict(type='Pretrained', checkpoint=...)`` naming a Deformable DETR checkpoint, the tensors under
        ``pretrained_parts`` are copied from it (Sec. 4; tensors of another shape are skipped)."""
        cfg = self.init_cfg
        if not (isinstance(cfg, dict) and cfg.get('type') == 'Pretrained'):
            super().init_weights()
            return
        self.init_cfg = None
        try:
            super().init_weights()
        finally:
            self.init_cfg = cfg
        self.load_detr_checkpoint(cfg['checkpoint'])

    def load_detr_checkpoint(self, checkpoint: str) -> dict:
        """Load the ``pretrained_parts`` of a Deformable DETR checkpoint (see ``init_weights``); returns
        {'loaded': [...], 'skipped': [...]} (skipped: outside ``pretrained_parts``, absent here or another shape)."""
        from mmengine.logging import MMLogger
        from mmengine.runner.checkpoint import CheckpointLoader
        ckpt = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
        src = ckpt.get('state_dict', ckpt)
        own = self.state_dict()
        new, skipped = {}, []
        for k, v in src.items():
            if k.startswith(self.pretrained_parts) and k in own and own[k].shape == v.shape:
                new[k] = v
            else:
                skipped.append(k)
        self.load_state_dict(new, strict=False)
        MMLogger.get_current_instance().info(
            f'ISDA: loaded {len(new)} tensors ({", ".join(self.pretrained_parts)}) from {checkpoint}; '
            f'skipped {len(skipped)}')
        return dict(loaded=sorted(new), skipped=skipped)

    def forward_transformer(self, img_feats: Tuple[Tensor], batch_data_samples: OptSampleList = None) -> Dict:
        enc_feats = tuple(img_feats[i] for i in self.encoder_levels)
        head_inputs = super().forward_transformer(enc_feats, batch_data_samples)
        head_inputs.pop('enc_outputs_class', None)
        head_inputs.pop('enc_outputs_coord', None)
        head_inputs['mlvl_feats'] = img_feats
        head_inputs['valid_ratios'] = valid_ratios_from_samples(batch_data_samples, img_feats[0])
        return head_inputs

    def _forward(self, batch_inputs: Tensor, batch_data_samples: OptSampleList = None) -> Tuple[Tensor, Tensor]:
        """Tensor mode (used for FLOPs): what inference runs - all decoder layers, but class logits and masks of
        the last layer only (``predict`` uses only it; the other layers' masks serve the auxiliary losses)."""
        img_feats = self.extract_feat(batch_inputs)
        head_inputs = self.forward_transformer(img_feats, batch_data_samples)
        last = head_inputs['hidden_states'].shape[0] - 1
        return self.bbox_head(**head_inputs, first_layer=last)
