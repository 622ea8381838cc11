"""CenterMask (Lee & Park, "CenterMask: Real-Time Anchor-Free Instance Segmentation", CVPR 2020), a compared
system of amf-sparseinst Table 10 (row ``centermask-r50-600``: CenterMask-Lite R-50-FPN, short side 600,
32.9 mask AP).

Written here for mmdet 3.x from the paper's description and the facts of the official R-50 Lite config
(youngwanLEE/CenterMask, maskrcnn-benchmark based: configs/centermask/
centermask_R_50_FPN_lite_res600_ms_bs16_4x.yaml) and its code, read for facts only, never copied. Every
reading, and where the port differs, is in ``centermask.md``.

Model (the Lite widths as built by the config)::

    ResNet-50 (C3..C5) -> FPN P3..P7 (128 ch; P6, P7 from P5 with a ReLU between)
    -> FCOS head (mmdet's FCOSHead): 2-conv classification and box towers (128 ch, GN), centerness on the box
       tower, GIoU box loss, centre sampling 1.5 strides
    -> its boxes (training: the top 100 after NMS plus the ground-truth boxes; IoU >= 0.5 with a ground truth
       is a positive) -> RoIAlign 14x14 on P3..P5, the level of each box by the paper's Eq. 2
       (``adaptive_roi_levels``)
    -> SAG-Mask (``SAGMaskHead``): 2 x (3x3 conv 128, ReLU) -> spatial attention (channel-wise mean and max,
       concatenated, 3x3 conv, sigmoid, multiplied in) -> 2x2 deconv, ReLU -> 1x1 conv, one 28x28 mask a class
    -> MaskIoU head (mmdet's MaskIoUHead, the Lite width): the RoI features + the max-pooled mask, 2 convs
       (the second stride 2), 2 fc 1024 -> the IoU a class; mask score = box score x predicted IoU
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.config import ConfigDict
from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet.models.detectors.single_stage import SingleStageDetector
from mmdet.models.roi_heads.mask_heads.fcn_mask_head import FCNMaskHead
from mmdet.models.roi_heads.roi_extractors.single_level_roi_extractor import SingleRoIExtractor
from mmdet.models.utils import empty_instances, unpack_gt_instances
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures import SampleList
from mmdet.structures.bbox import bbox2roi
from mmdet.utils import ConfigType, InstanceList, OptConfigType, OptMultiConfig


# ------------------------------------------------------------------------------ Eq. 2, level mapping
def adaptive_roi_levels(roi_areas: Tensor, input_areas: Tensor, k_min: int = 3, k_max: int = 5,
                        eps: float = 1e-6) -> Tensor:
    """The paper's adaptive RoI assignment (Eq. 2): k = ceil(k_max - log2(A_input / A_RoI)), clamped to
    [k_min, k_max]; returns k (the FPN level P_k, not an index). A_input is the input image's area (after
    the resize, before padding), A_RoI the box's. With k_max = 5 (the official code: the last pooled level,
    P5) a box of more than half the image goes to P5, one of (1/4, 1/2] to P4, the rest to P3."""
    ratio = input_areas / roi_areas.clamp(min=eps)
    k = torch.ceil(k_max - torch.log2(ratio + eps))
    return k.clamp(min=k_min, max=k_max).long()


@MODELS.register_module()
class AdaptiveLevelRoIExtractor(SingleRoIExtractor):
    """RoIAlign over P_k_min..P_k_max with each RoI's level given by ``adaptive_roi_levels`` (the input
    image's area is needed, so ``forward`` takes the image shapes). ``featmap_strides`` must be 2**k_min ..
    2**k_max."""

    def __init__(self, k_min: int = 3, k_max: int = 5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.k_min, self.k_max = k_min, k_max
        want = [2 ** k for k in range(k_min, k_max + 1)]
        if list(self.featmap_strides) != want:
            raise ValueError(f'featmap_strides {self.featmap_strides} do not match levels P{k_min}..P{k_max} ({want})')

    def roi_levels(self, rois: Tensor, img_shapes: Sequence[Tuple[int, int]]) -> Tensor:
        """Level index (0 = P_k_min) of each RoI (batch index, x1, y1, x2, y2)."""
        areas = torch.tensor([float(h * w) for h, w in img_shapes], device=rois.device, dtype=rois.dtype)
        input_areas = areas[rois[:, 0].long()]
        roi_areas = (rois[:, 3] - rois[:, 1]).clamp(min=0) * (rois[:, 4] - rois[:, 2]).clamp(min=0)
        return adaptive_roi_levels(roi_areas, input_areas, self.k_min, self.k_max) - self.k_min

    def forward(self, feats: Tuple[Tensor], rois: Tensor,  # type: ignore[override]
                img_shapes: Sequence[Tuple[int, int]]) -> Tensor:
        rois = rois.type_as(feats[0])
        out_size = self.roi_layers[0].output_size
        roi_feats = feats[0].new_zeros(rois.size(0), self.out_channels, *out_size)
        if rois.size(0) == 0:
            return roi_feats
        levels = self.roi_levels(rois, img_shapes)
        for i in range(len(self.roi_layers)):
            inds = (levels == i).nonzero(as_tuple=False).squeeze(1)
            if inds.numel() > 0:
                roi_feats[inds] = self.roi_layers[i](feats[i], rois[inds])
            else:  # keep every level in the graph (distributed training needs each parameter used)
                roi_feats = roi_feats + feats[i].sum() * 0.
        return roi_feats


# ------------------------------------------------------------------------------------------ SAG-Mask
class SpatialAttention(nn.Module):
    """The spatial attention module of SAG-Mask: channel-wise average and max pooling, concatenated (2
    channels), a 3x3 conv (no bias) to one map, sigmoid, multiplied into the input."""

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f'kernel_size must be odd, got {kernel_size}')
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def attention(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return self.conv(pooled).sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)


@MODELS.register_module()
class SAGMaskHead(FCNMaskHead):
    """Spatial-attention-guided mask head: mmdet's FCN mask head (``num_convs`` 3x3 convs, 2x deconv, 1x1
    conv to a mask per class) with the spatial attention module between the last conv and the deconv."""

    def __init__(self, sam_kernel_size: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.spatial_attention = SpatialAttention(sam_kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = conv(x)
        x = self.spatial_attention(x)
        if self.upsample is not None:
            x = self.upsample(x)
            if self.upsample_method == 'deconv':
                x = self.relu(x)
        return self.conv_logits(x)


# -------------------------------------------------------------------------------------- the RoI part
@MODELS.register_module()
class CenterMaskRoIHead(BaseModule):
    """The mask branch on FCOS's boxes: adaptive-level RoIAlign, SAG-Mask and the MaskIoU head.

    Training (as the official code): the FCOS boxes of the image (post-processed with ``train_cfg.proposal``
    of the detector) plus the ground-truth boxes are matched to the ground truth by IoU (``assigner``); every
    positive (no sampling) trains the mask (BCE on its class's 28x28 mask) and the MaskIoU head (L2 on the
    IoU of the binarised prediction with the whole ground-truth mask, positives with a target > 0).
    Inference: the masks of the final boxes; score = box score x the predicted mask IoU."""

    def __init__(self, mask_roi_extractor: ConfigType, mask_head: ConfigType, mask_iou_head: OptConfigType = None,
                 train_cfg: OptConfigType = None, test_cfg: OptConfigType = None,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.mask_roi_extractor = MODELS.build(mask_roi_extractor)
        self.mask_head = MODELS.build(mask_head)
        self.mask_iou_head = MODELS.build(mask_iou_head) if mask_iou_head is not None else None
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg
        if train_cfg is not None:
            self.assigner = TASK_UTILS.build(train_cfg['assigner'])
            self.sampler = TASK_UTILS.build(train_cfg['sampler'], default_args=dict(context=self))

    @property
    def with_mask_iou(self) -> bool:
        return self.mask_iou_head is not None

    def _mask_forward(self, x: Tuple[Tensor], rois: Tensor, img_shapes) -> Tuple[Tensor, Tensor]:
        feats = self.mask_roi_extractor(x[:self.mask_roi_extractor.num_inputs], rois, img_shapes)
        return self.mask_head(feats), feats

    def loss(self, x: Tuple[Tensor], proposals: InstanceList, batch_data_samples: SampleList) -> dict:
        batch_gt_instances, batch_gt_instances_ignore, batch_img_metas = unpack_gt_instances(batch_data_samples)
        sampling_results = []
        for props, gts, ignore in zip(proposals, batch_gt_instances, batch_gt_instances_ignore):
            # the FCOS boxes, detached, and the ground-truth boxes (official add_gt_proposals)
            priors = InstanceData(priors=torch.cat([props.bboxes.detach(), gts.bboxes.to(props.bboxes)], 0))
            assign = self.assigner.assign(priors, gts, ignore)
            sampling_results.append(self.sampler.sample(assign, priors, gts))
        img_shapes = [m['img_shape'][:2] for m in batch_img_metas]
        pos_rois = bbox2roi([res.pos_priors for res in sampling_results])
        if pos_rois.size(0) == 0:   # no ground truth in the batch: zero losses that keep the graph whole
            zero = sum(p.sum() for p in self.parameters()) * 0. + sum(f.sum() for f in x) * 0.
            out = dict(loss_mask=zero)
            if self.with_mask_iou:
                out['loss_mask_iou'] = zero.clone()
            return out
        mask_preds, mask_feats = self._mask_forward(x, pos_rois, img_shapes)
        mask_out = self.mask_head.loss_and_target(mask_preds=mask_preds, sampling_results=sampling_results,
                                                  batch_gt_instances=batch_gt_instances,
                                                  rcnn_train_cfg=self.train_cfg)
        losses = dict(mask_out['loss_mask'])
        if self.with_mask_iou:
            pos_labels = torch.cat([res.pos_gt_labels for res in sampling_results])
            idx = torch.arange(mask_preds.size(0), device=mask_preds.device)
            pos_mask_pred = mask_preds[idx, pos_labels]
            iou_pred = self.mask_iou_head(mask_feats, pos_mask_pred)[idx, pos_labels]
            losses.update(self.mask_iou_head.loss_and_target(iou_pred, pos_mask_pred, mask_out['mask_targets'],
                                                             sampling_results, batch_gt_instances, self.train_cfg))
        return losses

    def predict(self, x: Tuple[Tensor], batch_img_metas: List[dict], results_list: InstanceList,
                rescale: bool = False) -> InstanceList:
        """``results_list``: FCOS boxes at the network's input scale (not rescaled)."""
        rois = bbox2roi([res.bboxes for res in results_list])
        if rois.shape[0] == 0:
            return empty_instances(batch_img_metas, rois.device, task_type='mask', instance_results=results_list,
                                   mask_thr_binary=self.test_cfg.mask_thr_binary)
        img_shapes = [m['img_shape'][:2] for m in batch_img_metas]
        mask_preds, mask_feats = self._mask_forward(x, rois, img_shapes)
        num = [len(res) for res in results_list]
        iou_preds = None
        if self.with_mask_iou:
            labels = torch.cat([res.labels for res in results_list])
            idx = torch.arange(labels.size(0), device=labels.device)
            iou_preds = self.mask_iou_head(mask_feats, mask_preds[idx, labels]).split(num, 0)
        results_list = self.mask_head.predict_by_feat(mask_preds=mask_preds.split(num, 0), results_list=results_list,
                                                      batch_img_metas=batch_img_metas, rcnn_test_cfg=self.test_cfg,
                                                      rescale=rescale)
        if iou_preds is not None:
            results_list = self.mask_iou_head.predict_by_feat(mask_iou_preds=iou_preds, results_list=results_list)
        return results_list


# ---------------------------------------------------------------------------------------- detector
@MODELS.register_module()
class CenterMask(SingleStageDetector):
    """FCOS (``bbox_head``) + the CenterMask RoI part (``roi_head``).

    ``train_cfg``: ``proposal`` (how FCOS's boxes are post-processed for the mask branch in training; the
    official code: threshold 0.03, 1,000 a level, NMS 0.6, 100 an image) and ``rcnn`` (the assigner,
    sampler, mask size and the binarisation threshold of the mask IoU targets). ``test_cfg``: ``fcos`` (the
    detection post-processing) and ``rcnn`` (``mask_thr_binary``)."""

    def __init__(self, backbone: ConfigType, neck: ConfigType, bbox_head: ConfigType, roi_head: ConfigType,
                 train_cfg: OptConfigType = None, test_cfg: OptConfigType = None,
                 data_preprocessor: OptConfigType = None, init_cfg: OptMultiConfig = None) -> None:
        train_cfg = ConfigDict(train_cfg or {})
        test_cfg = ConfigDict(test_cfg or {})
        super().__init__(backbone=backbone, neck=neck, bbox_head=bbox_head, train_cfg=None,
                         test_cfg=test_cfg.get('fcos'), data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.train_cfg, self.test_cfg = train_cfg, test_cfg
        roi_head = dict(roi_head, train_cfg=train_cfg.get('rcnn'), test_cfg=test_cfg.get('rcnn'))
        self.roi_head = MODELS.build(roi_head)

    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> dict:
        x = self.extract_feat(batch_inputs)
        outs = self.bbox_head(x)
        batch_gt_instances, batch_gt_instances_ignore, batch_img_metas = unpack_gt_instances(batch_data_samples)
        losses = self.bbox_head.loss_by_feat(*outs, batch_gt_instances, batch_img_metas, batch_gt_instances_ignore)
        with torch.no_grad():
            proposals = self.bbox_head.predict_by_feat(*[[t.detach() for t in o] for o in outs],
                                                       batch_img_metas=batch_img_metas,
                                                       cfg=self.train_cfg['proposal'], rescale=False)
        losses.update(self.roi_head.loss(x, proposals, batch_data_samples))
        return losses

    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList, rescale: bool = True) -> SampleList:
        x = self.extract_feat(batch_inputs)
        batch_img_metas = [s.metainfo for s in batch_data_samples]
        results = self.bbox_head.predict(x, batch_data_samples, rescale=False)
        results = self.roi_head.predict(x, batch_img_metas, results, rescale=rescale)
        return self.add_pred_to_datasample(batch_data_samples, results)


def lite_param_breakdown(model: nn.Module) -> dict:
    """Trainable parameters (call after ``model.train()``) of the model's parts."""
    parts = {'backbone': model.backbone, 'neck': model.neck, 'fcos_head': model.bbox_head,
             'sag_mask_head': model.roi_head.mask_head}
    if model.roi_head.with_mask_iou:
        parts['mask_iou_head'] = model.roi_head.mask_iou_head
    out = {k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, m in parts.items()}
    out['total'] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return out


__all__ = ['adaptive_roi_levels', 'AdaptiveLevelRoIExtractor', 'SpatialAttention', 'SAGMaskHead',
           'CenterMaskRoIHead', 'CenterMask', 'lite_param_breakdown']
