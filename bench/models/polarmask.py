"""PolarMask (Xie et al., "PolarMask: Single Shot Instance Segmentation with Polar Representation", CVPR 2020),
a compared system of csr-d2s Table I (row ``polarmask``: 29.1 mask AP, 32.09M params).

Written here for mmdet 3.x from the paper's description; the official code (github.com/xieenze/PolarMask, on
mmdetection 1.x) was read for facts the paper leaves open, never copied. Every reading, and where the port
differs from the paper or the official code, is in ``polarmask.md``.

Model::

    ResNet-50 (C3..C5) -> FPN P3..P7 (256 ch, strides 8..128; P6, P7 from P5 with a ReLU between)
    -> PolarMaskHead, shared over the levels:
         classification tower: 4 x (3x3 conv, GN, ReLU) -> 3x3 conv to C class logits
                                                        -> 3x3 conv to 1 polar-centerness logit
         mask tower:           4 x (3x3 conv, GN, ReLU) -> 3x3 conv to n = 36 ray lengths
                                                           (a learnt scale per level, then exp)
         [optional, bbox_branch=True: the official code's third tower, 4 x conv -> 4 box distances]
    training: FCOS assignment (regress ranges per level, centre sampling 1.5 strides around the mass centre,
              smallest box wins), ray targets = the farthest intersection of each ray with the instance's
              contour; focal loss (classes), Polar IoU loss log(sum max(d, d*) / sum min(d, d*)) weighted by
              the centerness target, BCE on polar centerness sqrt(min d* / max d*)
    inference: score = p_cls x (p_centerness + 0.5), top 1000 per level, the 36 contour points -> polygon ->
               its bounding box for NMS (IoU 0.5) -> 100 per image -> polygon filled as the mask
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule, Scale
from mmcv.ops import batched_nms
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
from mmdet.models.detectors.single_stage import SingleStageDetector
from mmdet.models.task_modules.prior_generators import MlvlPointGenerator
from mmdet.models.utils import multi_apply
from mmdet.registry import MODELS
from mmdet.utils import ConfigType, InstanceList, OptConfigType, OptInstanceList, OptMultiConfig, reduce_mean

INF = 1e8
#: a ray that meets no contour (its origin lies outside the instance) gets this length (paper Sec. 3.2)
MIN_RAY = 1e-6


# ------------------------------------------------------------------------------------------ geometry
def ray_angles(num_rays: int, device=None, dtype=torch.float32) -> Tensor:
    """The rays' angles, 0, 360/n, ... degrees in radians; ray k points along (cos, sin) in image axes
    (x right, y down)."""
    return torch.arange(num_rays, device=device, dtype=dtype) * (2 * math.pi / num_rays)


def largest_contour(mask: np.ndarray) -> Optional[np.ndarray]:
    """The outer contour of the largest connected part of a binary mask, (M, 2) float (x, y) at pixel
    centres, or None for an empty mask. Holes and the smaller parts are not represented (one contour
    per instance, as in the paper's Fig. 1(d))."""
    contours, _ = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    c = max(contours, key=cv2.contourArea)
    return c[:, 0, :].astype(np.float32) + 0.5


def mass_center(contour: np.ndarray) -> tuple[float, float]:
    """The centroid of the region the contour encloses (its mass centre); the mean of its points when it
    encloses no area (a line or a point)."""
    m = cv2.moments(contour.astype(np.float32))
    if abs(m['m00']) > 1e-9:
        return m['m10'] / m['m00'], m['m01'] / m['m00']
    x, y = contour.mean(axis=0)
    return float(x), float(y)


def polar_ray_targets(points: Tensor, contour: Tensor, angles: Tensor) -> Tensor:
    """Length of each ray from each point to the contour: the farthest intersection of the ray with the
    closed polygon ``contour`` (M, 2), MIN_RAY where the ray meets it nowhere. points (N, 2) -> (N, n)."""
    a = contour                                   # segment starts (M, 2)
    d = torch.roll(contour, -1, dims=0) - a       # segment vectors (M, 2)
    u = torch.stack([angles.cos(), angles.sin()], -1)      # ray directions (n, 2)
    ap = a[None] - points[:, None]                          # (N, M, 2): P -> A
    denom = u[:, 0, None] * d[None, :, 1] - u[:, 1, None] * d[None, :, 0]           # cross(u, d): (n, M)
    cross_ap_d = ap[..., 0] * d[None, :, 1] - ap[..., 1] * d[None, :, 0]             # (N, M)
    cross_ap_u = ap[:, None, :, 0] * u[None, :, 1, None] - ap[:, None, :, 1] * u[None, :, 0, None]  # (N, n, M)
    ok = denom.abs() > 1e-9
    safe = torch.where(ok, denom, torch.ones_like(denom))
    t = cross_ap_d[:, None, :] / safe[None]                 # distance along the ray (N, n, M)
    s = cross_ap_u / safe[None]                             # position on the segment
    hit = ok[None] & (t >= 0) & (s >= 0) & (s <= 1)
    t = torch.where(hit, t, torch.full_like(t, -1.0)).amax(-1)
    return t.clamp(min=MIN_RAY)


def polar_centerness(ray_targets: Tensor) -> Tensor:
    """The paper's polar centerness (Eq. 1): sqrt(min_i d_i / max_i d_i) over a location's rays."""
    return (ray_targets.min(-1).values / ray_targets.max(-1).values.clamp(min=MIN_RAY)).clamp(min=0).sqrt()


def rays_to_polygons(points: Tensor, lengths: Tensor, angles: Tensor, max_shape=None) -> Tensor:
    """The contour points of each location's rays: (N, 2) origins, (N, n) lengths -> (N, n, 2) (x, y),
    clipped to the image (h, w) when given."""
    x = points[:, None, 0] + lengths * angles.cos()[None]
    y = points[:, None, 1] + lengths * angles.sin()[None]
    if max_shape is not None:
        x = x.clamp(0, max_shape[1])
        y = y.clamp(0, max_shape[0])
    return torch.stack([x, y], -1)


def polygons_to_masks(polygons: Tensor, hw: tuple[int, int]) -> Tensor:
    """Fill each (n, 2) polygon into a binary mask of size hw: (N, n, 2) -> (N, H, W) bool."""
    h, w = int(hw[0]), int(hw[1])
    out = np.zeros((len(polygons), h, w), dtype=np.uint8)
    for i, poly in enumerate(polygons.detach().cpu().numpy()):
        # fillPoly takes integer vertices: 4 fractional bits keep sub-pixel precision (shift=4)
        cv2.fillPoly(out[i], [np.round((poly - 0.5) * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return torch.from_numpy(out).bool().to(polygons.device)


# ------------------------------------------------------------------------------------------------ loss
@MODELS.register_module()
class PolarIoULoss(nn.Module):
    """The Polar IoU loss (paper Eq. 4-6): log(sum_i max(d_i, d*_i) / sum_i min(d_i, d*_i)) per location,
    the IoU of the two polar masks approximated by their rays' sums; weighted and averaged by the caller's
    ``avg_factor`` (the centerness targets' sum, as the official code)."""

    def __init__(self, loss_weight: float = 1.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.loss_weight = loss_weight
        self.eps = eps

    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                avg_factor: Optional[float] = None) -> Tensor:
        both = torch.stack([pred, target], -1)
        loss = (both.amax(-1).sum(-1) / both.amin(-1).sum(-1).clamp(min=self.eps)).log()
        if weight is not None:
            loss = loss * weight
        loss = loss.sum() / avg_factor if avg_factor is not None else loss.mean()
        return self.loss_weight * loss


# ------------------------------------------------------------------------------------------------ head
@MODELS.register_module()
class PolarMaskHead(BaseDenseHead):
    """PolarMask's head: a classification tower (class logits + polar centerness) and a mask-regression
    tower (``num_rays`` ray lengths), shared over the FPN levels (paper Sec. 3.1, Fig. 2). With
    ``bbox_branch=True`` a third tower regresses FCOS box distances, as in the official 2019 code (its
    boxes then serve NMS); the paper drops it (Table 1(e): no gain)."""

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 feat_channels: int = 256,
                 stacked_convs: int = 4,
                 num_rays: int = 36,
                 strides: Sequence[int] = (8, 16, 32, 64, 128),
                 regress_ranges: Sequence[tuple] = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, INF)),
                 center_sampling: str = 'mass',
                 center_sample_radius: float = 1.5,
                 bbox_branch: bool = False,
                 centerness_offset: float = 0.5,
                 loss_cls: ConfigType = dict(type='mmdet.FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                                             loss_weight=1.0),
                 loss_mask: ConfigType = dict(type='PolarIoULoss', loss_weight=1.0),
                 loss_centerness: ConfigType = dict(type='mmdet.CrossEntropyLoss', use_sigmoid=True,
                                                    loss_weight=1.0),
                 loss_bbox: ConfigType = dict(type='mmdet.IoULoss', loss_weight=1.0),
                 conv_cfg: OptConfigType = None,
                 norm_cfg: OptConfigType = dict(type='GN', num_groups=32, requires_grad=True),
                 train_cfg: OptConfigType = None,
                 test_cfg: OptConfigType = None,
                 init_cfg: OptMultiConfig = dict(
                     type='Normal', layer='Conv2d', std=0.01,
                     override=dict(type='Normal', name='conv_cls', std=0.01, bias_prob=0.01))) -> None:
        super().__init__(init_cfg=init_cfg)
        if center_sampling not in ('mass', 'box'):
            raise ValueError(f"center_sampling must be 'mass' or 'box', got {center_sampling!r}")
        if len(strides) != len(regress_ranges):
            raise ValueError(f'{len(strides)} strides but {len(regress_ranges)} regress ranges')
        self.num_classes = num_classes
        self.cls_out_channels = num_classes
        self.in_channels = in_channels
        self.feat_channels = feat_channels
        self.stacked_convs = stacked_convs
        self.num_rays = num_rays
        self.strides = list(strides)
        self.regress_ranges = [tuple(r) for r in regress_ranges]
        self.center_sampling = center_sampling
        self.center_sample_radius = center_sample_radius
        self.bbox_branch = bbox_branch
        self.centerness_offset = centerness_offset
        self.conv_cfg, self.norm_cfg = conv_cfg, norm_cfg
        self.train_cfg, self.test_cfg = train_cfg, test_cfg
        self.prior_generator = MlvlPointGenerator(self.strides, offset=0.5)
        self.loss_cls = MODELS.build(loss_cls)
        self.loss_mask = MODELS.build(loss_mask)
        self.loss_centerness = MODELS.build(loss_centerness)
        self.loss_bbox = MODELS.build(loss_bbox) if bbox_branch else None
        self._init_layers()

    def _tower(self) -> nn.Sequential:
        return nn.Sequential(*[
            ConvModule(self.in_channels if i == 0 else self.feat_channels, self.feat_channels, 3, padding=1,
                       conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, bias=self.norm_cfg is None)
            for i in range(self.stacked_convs)])

    def _init_layers(self) -> None:
        self.cls_convs = self._tower()
        self.mask_convs = self._tower()
        self.conv_cls = nn.Conv2d(self.feat_channels, self.cls_out_channels, 3, padding=1)
        self.conv_centerness = nn.Conv2d(self.feat_channels, 1, 3, padding=1)
        self.conv_mask = nn.Conv2d(self.feat_channels, self.num_rays, 3, padding=1)
        self.mask_scales = nn.ModuleList([Scale(1.0) for _ in self.strides])
        if self.bbox_branch:
            self.reg_convs = self._tower()
            self.conv_reg = nn.Conv2d(self.feat_channels, 4, 3, padding=1)
            self.bbox_scales = nn.ModuleList([Scale(1.0) for _ in self.strides])

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, x: tuple[Tensor]) -> tuple:
        """Per level: class logits (B, C, H, W), ray lengths (B, n, H, W) in pixels, centerness logits
        (B, 1, H, W), box distances (B, 4, H, W) or None without the box branch."""
        return multi_apply(self.forward_single, x, range(len(x)))

    def forward_single(self, x: Tensor, level: int) -> tuple:
        cls_feat = self.cls_convs(x)
        mask_feat = self.mask_convs(x)
        # float() before exp: an fp16 exp overflows above ~11 (the official code does the same)
        rays = self.mask_scales[level](self.conv_mask(mask_feat)).float().exp()
        bbox = None
        if self.bbox_branch:
            bbox = self.bbox_scales[level](self.conv_reg(self.reg_convs(x))).float().exp()
        return self.conv_cls(cls_feat), rays, self.conv_centerness(cls_feat), bbox

    # -- targets -------------------------------------------------------------------------------------
    def get_targets(self, points: list[Tensor], batch_gt_instances: InstanceList) -> tuple:
        """(labels, ray targets, box targets), each concatenated over images and levels in the order of
        the flattened predictions (level-major, then image). Background label: num_classes."""
        num_levels = len(points)
        counts = [len(p) for p in points]
        ranges = torch.cat([points[i].new_tensor(self.regress_ranges[i])[None].expand(counts[i], 2)
                            for i in range(num_levels)])
        strides = torch.cat([points[i].new_full((counts[i],), float(self.strides[i])) for i in range(num_levels)])
        all_points = torch.cat(points)
        per_image = [self._targets_single(gt, all_points, ranges, strides) for gt in batch_gt_instances]
        out = []
        for part in zip(*per_image):   # labels, rays, boxes: split per level, then images within a level
            split = [t.split(counts, 0) for t in part]
            out.append(torch.cat([torch.cat([s[lvl] for s in split]) for lvl in range(num_levels)]))
        return tuple(out)

    def _targets_single(self, gt: InstanceData, points: Tensor, ranges: Tensor, strides: Tensor) -> tuple:
        n = len(points)
        labels = points.new_full((n,), self.num_classes, dtype=torch.long)
        rays = points.new_zeros((n, self.num_rays))
        boxes = points.new_zeros((n, 4))
        if len(gt) == 0:
            return labels, rays, boxes
        masks = gt.masks.to_ndarray() if hasattr(gt.masks, 'to_ndarray') else np.asarray(gt.masks)
        contours, centers, keep = [], [], []
        for i, m in enumerate(masks):
            c = largest_contour(m)
            if c is None:      # an empty mask (cropped away): nothing to regress
                continue
            contours.append(torch.from_numpy(c).to(points))
            centers.append(mass_center(c))
            keep.append(i)
        if not keep:
            return labels, rays, boxes
        keep_t = torch.tensor(keep, device=points.device)
        gt_boxes, gt_labels = gt.bboxes[keep_t].to(points), gt.labels[keep_t]
        if self.center_sampling == 'mass':
            cxy = points.new_tensor(centers)
        else:
            cxy = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
        xs, ys = points[:, 0, None], points[:, 1, None]                          # (n, 1)
        # distances to the box sides (FCOS regression ranges use the largest)
        ltrb = torch.stack([xs - gt_boxes[:, 0], ys - gt_boxes[:, 1], gt_boxes[:, 2] - xs, gt_boxes[:, 3] - ys], -1)
        # centre sampling: radius x stride around the (mass) centre, clipped to the box
        r = strides[:, None] * self.center_sample_radius
        x1 = torch.maximum(cxy[:, 0] - r, gt_boxes[:, 0])
        y1 = torch.maximum(cxy[:, 1] - r, gt_boxes[:, 1])
        x2 = torch.minimum(cxy[:, 0] + r, gt_boxes[:, 2])
        y2 = torch.minimum(cxy[:, 1] + r, gt_boxes[:, 3])
        inside = (xs > x1) & (xs < x2) & (ys > y1) & (ys < y2)
        reach = ltrb.amax(-1)
        in_range = (reach >= ranges[:, 0, None]) & (reach <= ranges[:, 1, None])
        areas = ((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1]))[None].expand(n, -1).clone()
        areas[~(inside & in_range)] = INF
        min_area, owner = areas.min(1)
        pos = min_area < INF
        labels[pos] = gt_labels[owner[pos]]
        boxes[pos] = ltrb[pos, owner[pos]]
        angles = ray_angles(self.num_rays, points.device, points.dtype)
        for j in owner[pos].unique().tolist():
            sel = pos & (owner == j)
            rays[sel] = polar_ray_targets(points[sel], contours[j], angles)
        return labels, rays, boxes

    # -- loss ----------------------------------------------------------------------------------------
    def loss_by_feat(self, cls_scores: list[Tensor], ray_preds: list[Tensor], centernesses: list[Tensor],
                     bbox_preds: list[Optional[Tensor]], batch_gt_instances: InstanceList, batch_img_metas: list[dict],
                     batch_gt_instances_ignore: OptInstanceList = None) -> dict[str, Tensor]:
        sizes = [c.shape[-2:] for c in cls_scores]
        points = self.prior_generator.grid_priors(sizes, dtype=ray_preds[0].dtype, device=ray_preds[0].device)
        labels, ray_targets, box_targets = self.get_targets(points, batch_gt_instances)
        num_imgs = cls_scores[0].size(0)
        flat_cls = torch.cat([c.permute(0, 2, 3, 1).reshape(-1, self.cls_out_channels) for c in cls_scores])
        flat_rays = torch.cat([r.permute(0, 2, 3, 1).reshape(-1, self.num_rays) for r in ray_preds])
        flat_ctr = torch.cat([c.permute(0, 2, 3, 1).reshape(-1) for c in centernesses])
        pos = ((labels >= 0) & (labels < self.num_classes)).nonzero().reshape(-1)
        num_pos = max(reduce_mean(flat_cls.new_tensor(float(len(pos)))).item(), 1.0)
        losses = dict(loss_cls=self.loss_cls(flat_cls, labels, avg_factor=num_pos))
        pos_rays, pos_ctr = flat_rays[pos], flat_ctr[pos]
        if len(pos):
            pos_ray_targets = ray_targets[pos]
            ctr_targets = polar_centerness(pos_ray_targets)
            ctr_sum = max(reduce_mean(ctr_targets.sum().detach()).item(), 1e-6)
            losses['loss_mask'] = self.loss_mask(pos_rays, pos_ray_targets, weight=ctr_targets, avg_factor=ctr_sum)
            losses['loss_centerness'] = self.loss_centerness(pos_ctr, ctr_targets, avg_factor=num_pos)
        else:   # no positive anywhere: zero losses that keep the graph (every parameter gets a gradient)
            losses['loss_mask'] = pos_rays.sum() * 0
            losses['loss_centerness'] = pos_ctr.sum() * 0
        if self.bbox_branch:
            flat_box = torch.cat([b.permute(0, 2, 3, 1).reshape(-1, 4) for b in bbox_preds])[pos]
            if len(pos):
                pts = torch.cat([p.repeat(num_imgs, 1) for p in points])[pos]
                losses['loss_bbox'] = self.loss_bbox(_ltrb_to_box(pts, flat_box), _ltrb_to_box(pts, box_targets[pos]),
                                                     weight=ctr_targets, avg_factor=ctr_sum)
            else:
                losses['loss_bbox'] = flat_box.sum() * 0
        return losses

    # -- inference -----------------------------------------------------------------------------------
    def predict_by_feat(self, cls_scores: list[Tensor], ray_preds: list[Tensor], centernesses: list[Tensor],
                        bbox_preds: list[Optional[Tensor]], batch_img_metas: Optional[list[dict]] = None,
                        cfg: OptConfigType = None, rescale: bool = False, **kwargs) -> InstanceList:
        cfg = self.test_cfg if cfg is None else cfg
        sizes = [c.shape[-2:] for c in cls_scores]
        points = self.prior_generator.grid_priors(sizes, dtype=ray_preds[0].dtype, device=ray_preds[0].device)
        results = []
        for i, meta in enumerate(batch_img_metas):
            results.append(self._predict_single(
                [c[i] for c in cls_scores], [r[i] for r in ray_preds], [c[i] for c in centernesses],
                [b[i] if b is not None else None for b in bbox_preds], points, meta, cfg, rescale))
        return results

    def _predict_single(self, cls_scores, ray_preds, centernesses, bbox_preds, points, meta, cfg, rescale):
        angles = ray_angles(self.num_rays, points[0].device, points[0].dtype)
        img_shape = meta['img_shape'][:2]
        nms_pre, score_thr = cfg.get('nms_pre', 1000), cfg.get('score_thr', 0.05)
        all_polys, all_boxes, all_scores, all_labels = [], [], [], []
        for cls, rays, ctr, box, pts in zip(cls_scores, ray_preds, centernesses, bbox_preds, points):
            scores = cls.permute(1, 2, 0).reshape(-1, self.cls_out_channels).sigmoid()
            ctr = ctr.permute(1, 2, 0).reshape(-1).sigmoid()
            rays = rays.permute(1, 2, 0).reshape(-1, self.num_rays)
            if 0 < nms_pre < len(scores):   # the top locations by class score x centerness (official code)
                keep = (scores * ctr[:, None]).amax(1).topk(nms_pre).indices
                scores, ctr, rays, pts = scores[keep], ctr[keep], rays[keep], pts[keep]
                box = box.permute(1, 2, 0).reshape(-1, 4)[keep] if box is not None else None
            elif box is not None:
                box = box.permute(1, 2, 0).reshape(-1, 4)
            loc, lab = (scores > score_thr).nonzero(as_tuple=True)
            polys = rays_to_polygons(pts[loc], rays[loc], angles, img_shape)
            if box is not None:
                boxes = _ltrb_to_box(pts[loc], box[loc])
                boxes[:, 0::2] = boxes[:, 0::2].clamp(0, img_shape[1])
                boxes[:, 1::2] = boxes[:, 1::2].clamp(0, img_shape[0])
            else:                                      # the polygon's bounding box (no box branch)
                boxes = torch.cat([polys.amin(1), polys.amax(1)], -1)
            all_polys.append(polys)
            all_boxes.append(boxes)
            all_scores.append(scores[loc, lab] * (ctr[loc] + self.centerness_offset))
            all_labels.append(lab)
        polys, boxes, scores, labels = (torch.cat(t) for t in (all_polys, all_boxes, all_scores, all_labels))
        if len(scores):
            nms = cfg.get('nms', dict(type='nms', iou_threshold=0.5))
            _, keep = batched_nms(boxes, scores, labels, nms)
            keep = keep[:cfg.get('max_per_img', 100)]
            polys, boxes, scores, labels = polys[keep], boxes[keep], scores[keep], labels[keep]
        if rescale:
            sx, sy = meta['scale_factor'][:2]
            polys = polys / polys.new_tensor([sx, sy])
            boxes = boxes / boxes.new_tensor([sx, sy, sx, sy])
            out_hw = meta['ori_shape'][:2]
        else:
            out_hw = img_shape
        result = InstanceData()
        result.bboxes, result.scores, result.labels = boxes, scores, labels
        result.masks = polygons_to_masks(polys, out_hw)
        return result


def _ltrb_to_box(points: Tensor, ltrb: Tensor) -> Tensor:
    return torch.stack([points[:, 0] - ltrb[:, 0], points[:, 1] - ltrb[:, 1],
                        points[:, 0] + ltrb[:, 2], points[:, 1] + ltrb[:, 3]], -1)


# -------------------------------------------------------------------------------------------- detector
@MODELS.register_module()
class PolarMask(SingleStageDetector):
    """Backbone -> FPN -> PolarMaskHead (``bbox_head``): mmdet's single-stage detector, whose head returns
    masks with its boxes."""
