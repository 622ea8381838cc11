"""Modules of "Multi-Task Learning via Scale Aware Feature Pyramid Networks and Effective Joint
Head" (Ni, Yao; ``../shared/papers/sa-fpn-ej-head.txt``), written from the paper's text for
mmdet 3.3.  Type names and arguments are the ones the recipes (recipes/sa-fpn/) already use.

Necks (Sec. 3.1, Fig. 1b, Fig. 2, Table 3); all take ResNet (C2, C3, C4, C5) like mmdet's FPN
and return ``num_outs`` maps of ``out_channels`` at strides 4..64:

* :class:`BUFPN`   Bottom-Up FPN (Fig. 2b): each level fuses only its neighbouring shallower level.
* :class:`BUFFPN`  Bottom-Up-Fusion FPN (Fig. 2c): each level fuses both neighbouring levels.
* :class:`SAFPN`   Scale Aware FPN: mmdet's top-down FPN ("TD-FPN", Fig. 2a) and a bottom-up
  pyramid run side by side on the same backbone levels and are merged level by level, by
  concatenation + 1x1 conv (the paper's SA-FPN) or by element-wise sum (Table 3 "add").

RoI heads (Sec. 3.2, Fig. 1b, Fig. 3, Tables 4 and 5):

* :class:`BoundaryRefinement`  stacked 3x3 convs on the RoI features, with an optional identity
  shortcut (Fig. 3; Table 5's "Simple Conv x N" rows have no shortcut).
* :class:`EJHead`        the Effective *Joint* Head on a StandardRoIHead: detection and
  segmentation "merged into a single branch" (Sec. 1).  One RoI feature path serves both tasks:
  the mask head reads the box head's RoI extractor (when "Enriched Feature" makes both 14x14, they
  are one module) and the BoundaryRefinement convs ("Shared Conv", Sec. 1) run on that path before
  *both* the box head and the mask head; "Interleaving" feeds the box head's own predicted boxes
  (IoU >= 0.5 with a ground truth) to the mask head in training.  "Enriched Feature" (14x14 box
  RoIs) is plain mmdet config (roi_layer.output_size, bbox_head.roi_feat_size).
* :class:`EJCascadeHead` the same joint head at every stage of a CascadeRoIHead (Table 2).

Every reading of a passage the paper leaves open is listed in ``sa_fpn.md``; the main ones:

1. Bottom-up pyramid (Fig. 2b/c): lateral 1x1 convs C_i -> 256 (as FPN), ``N_2 = L_2``,
   ``N_i = L_i + Down(N_{i-1})`` (BU-FPN) or ``N_i = L_i + Down(N_{i-1}) + Up(L_{i+1})``
   (BUF-FPN; the deeper neighbour enters through its lateral, because the bottom-up pass has
   not reached it yet), then a 3x3 output conv per level (as FPN).  ``Down`` is a stride-2 3x3
   conv (PANet's bottom-up path, which the paper cites), ``Up`` nearest interpolation (FPN's
   up-sampling, parameter-free); fusion is a sum.  No norm/activation (FPN has none).
2. SA-FPN merges the four backbone-resolution levels P2..P5; P6 is max-pooled from the merged
   P5, the way mmdet's FPN builds its 5th level.  The 1x1 reduction conv (512 -> 256) has a
   bias and no norm/activation.
3. BoundaryRefinement convs: 3x3, 256 -> 256, bias, ReLU after each conv, no norm; the
   shortcut adds the input to the branch output (Fig. 3: "two branches are added at the pixel
   level") with no activation after the sum.  With ``joint=True`` (the default, the paper's
   "unified path" / "Shared Conv") the same BR module refines the box RoI features and the mask
   RoI features; ``joint=False`` keeps the earlier reading (BR on the box path only, separate
   mask RoI extractor), kept only to measure the alternative.
4. Interleaving (Sec. 3.2): in training, after the box head has run on the sampled RoIs, each
   RoI's box is decoded with the regression of the class the head scores highest (the box a
   detection of that RoI would have at test time), detached, clipped to the image; boxes whose
   best IoU with a ground-truth box is >= ``interleaving_iou_thr`` (0.5) are the mask
   branch's positives, with that ground truth as target.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule, ModuleList
from torch import Tensor

from mmdet.models.necks import FPN
from mmdet.models.roi_heads import CascadeRoIHead, StandardRoIHead
from mmdet.models.task_modules.assigners import AssignResult
from mmdet.models.task_modules.samplers import SamplingResult
from mmdet.models.utils import unpack_gt_instances
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.structures.bbox import bbox2roi, bbox_overlaps, get_box_tensor
from mmdet.utils import ConfigType, InstanceList, OptConfigType, OptMultiConfig

_XAVIER = dict(type='Xavier', layer='Conv2d', distribution='uniform')


def _resize_to(x: Tensor, ref: Tensor, mode: str = 'nearest') -> Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode=mode)


def _extra_levels(outs: List[Tensor], num_outs: int) -> List[Tensor]:
    """Levels beyond the backbone's: max-pool (kernel 1, stride 2) of the last, as mmdet's FPN
    does with ``add_extra_convs=False`` (P6 for RPN anchors only)."""
    outs = list(outs)
    while len(outs) < num_outs:
        outs.append(F.max_pool2d(outs[-1], 1, stride=2))
    return outs


# ---------------------------------------------------------------------------------------------
# Necks (Sec. 3.1)
# ---------------------------------------------------------------------------------------------
@MODELS.register_module()
class BUFPN(BaseModule):
    """Bottom-Up style FPN (paper Sec. 3.1, Fig. 2b, Table 3 'BU-FPN').

    "BU-FPN takes every level output of the backbone as the input of the next step and applies
    down-sampling and fusion operation step by step to build a feature pyramid from bottom to
    top"; "each layer of feature pyramid combines with only neighboring shallower layer".

    ``L_i = Conv1x1(C_i)``; ``N_0 = L_0``; ``N_i = L_i + Down(N_{i-1})``; ``P_i = Conv3x3(N_i)``;
    extra levels by max-pooling.  With ``fuse_deeper`` (:class:`BUFFPN`, Fig. 2c) each level also
    adds its deeper neighbour, ``Up(L_{i+1})`` (nearest up-sampling, no parameters).

    Args mirror mmdet's FPN: ``in_channels`` (backbone widths, shallowest first),
    ``out_channels``, ``num_outs`` (>= len(in_channels)); ``conv_cfg``/``norm_cfg``/``act_cfg``
    apply to every conv (None by default, as FPN); ``upsample_mode`` of ``Up``.
    """

    fuse_deeper = False

    def __init__(self,
                 in_channels: Sequence[int],
                 out_channels: int,
                 num_outs: int,
                 conv_cfg: OptConfigType = None,
                 norm_cfg: OptConfigType = None,
                 act_cfg: OptConfigType = None,
                 upsample_mode: str = 'nearest',
                 init_cfg: OptMultiConfig = _XAVIER) -> None:
        super().__init__(init_cfg=init_cfg)
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_ins = len(self.in_channels)
        assert num_outs >= self.num_ins, 'num_outs must cover every backbone level'
        self.num_outs = num_outs
        self.upsample_mode = upsample_mode
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.lateral_convs = ModuleList(
            [ConvModule(c, out_channels, 1, inplace=False, **common) for c in self.in_channels])
        # one stride-2 3x3 conv per bottom-up transition (level i-1 -> level i)
        self.downsample_convs = ModuleList([
            ConvModule(out_channels, out_channels, 3, stride=2, padding=1, inplace=False, **common)
            for _ in range(self.num_ins - 1)])
        self.fpn_convs = ModuleList([
            ConvModule(out_channels, out_channels, 3, padding=1, inplace=False, **common)
            for _ in range(self.num_ins)])

    def _down(self, i: int, x: Tensor, ref: Tensor) -> Tensor:
        y = self.downsample_convs[i - 1](x)
        if y.shape[-2:] != ref.shape[-2:]:  # odd sizes: stride-2 conv gives ceil(h/2) like ResNet
            y = _resize_to(y, ref)
        return y

    def forward(self, inputs: Sequence[Tensor]) -> tuple:
        assert len(inputs) == self.num_ins
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        fused: List[Tensor] = []
        for i, lat in enumerate(laterals):
            n = lat
            if i > 0:
                n = n + self._down(i, fused[i - 1], lat)
            if self.fuse_deeper and i + 1 < self.num_ins:
                n = n + _resize_to(laterals[i + 1], lat, self.upsample_mode)
            fused.append(n)
        outs = [conv(n) for conv, n in zip(self.fpn_convs, fused)]
        return tuple(_extra_levels(outs, self.num_outs))


@MODELS.register_module()
class BUFFPN(BUFPN):
    """Bottom-Up-Fusion FPN (paper Sec. 3.1, Fig. 2c, Table 3 'BUF-FPN'): as :class:`BUFPN`, but
    "both neighboring shallower and deeper features are fused":
    ``N_i = L_i + Down(N_{i-1}) + Up(L_{i+1})``."""

    fuse_deeper = True


@MODELS.register_module()
class SAFPN(BaseModule):
    """Scale Aware FPN (paper Sec. 3.1, Fig. 1b; Table 3 last two rows).

    A top-down FPN (mmdet's FPN, "TD-FPN", Fig. 2a) and a bottom-up FPN (``bottom_up``, the
    paper's default BUF-FPN) both read the backbone levels; per level their outputs are merged:

    * ``fusion='concat'`` (the paper's SA-FPN): ``P_i = Conv1x1([TD_i, BU_i])``, 2C -> C
      ("concatenating performs better than element-wise addition. Then we add 1x1 convolutions
      to reduce dimensions");
    * ``fusion='add'`` (Table 3 "TD-FPN add BUF-FPN"): ``P_i = TD_i + BU_i``.

    The merge is done on the backbone-resolution levels; the extra level(s) (P6) are max-pooled
    from the merged top level, as mmdet's FPN builds its 5th level.
    """

    def __init__(self,
                 in_channels: Sequence[int],
                 out_channels: int,
                 num_outs: int,
                 bottom_up: str = 'BUFFPN',
                 fusion: str = 'concat',
                 conv_cfg: OptConfigType = None,
                 norm_cfg: OptConfigType = None,
                 act_cfg: OptConfigType = None,
                 init_cfg: OptMultiConfig = _XAVIER) -> None:
        super().__init__(init_cfg=init_cfg)
        assert fusion in ('concat', 'add'), f'fusion must be concat or add, got {fusion!r}'
        assert bottom_up in ('BUFFPN', 'BUFPN'), f'unknown bottom-up pyramid {bottom_up!r}'
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.fusion = fusion
        n = len(self.in_channels)
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.top_down = FPN(self.in_channels, out_channels, num_outs=n, **common)
        self.bottom_up = MODELS.build(
            dict(type=bottom_up, in_channels=self.in_channels, out_channels=out_channels,
                 num_outs=n, **common))
        if fusion == 'concat':
            self.reduce_convs = ModuleList([
                ConvModule(2 * out_channels, out_channels, 1, inplace=False, **common)
                for _ in range(n)])
        else:
            self.reduce_convs = None

    def forward(self, inputs: Sequence[Tensor]) -> tuple:
        td = self.top_down(inputs)
        bu = self.bottom_up(inputs)
        if self.fusion == 'concat':
            outs = [conv(torch.cat([a, b], dim=1)) for conv, a, b in zip(self.reduce_convs, td, bu)]
        else:
            outs = [a + b for a, b in zip(td, bu)]
        return tuple(_extra_levels(outs, self.num_outs))


# ---------------------------------------------------------------------------------------------
# Effective Joint Head (Sec. 3.2)
# ---------------------------------------------------------------------------------------------
@MODELS.register_module()
class BoundaryRefinement(BaseModule):
    """Boundary Refinement (paper Sec. 3.2, Fig. 3, Table 5).

    ``num_convs`` stacked 3x3 convs (``in_channels`` -> ``in_channels``, bias, ReLU, no norm by
    default) on the RoI features; with ``shortcut`` the input is added pixel-wise to the branch's
    output ("two branches are added at the pixel level").  Spatial size and width are kept, so
    the box head after it is unchanged.  Table 5: "Simple Conv x N" = ``num_convs=N,
    shortcut=False``; BR = ``num_convs=2, shortcut=True``.
    """

    def __init__(self,
                 in_channels: int = 256,
                 num_convs: int = 2,
                 shortcut: bool = True,
                 conv_cfg: OptConfigType = None,
                 norm_cfg: OptConfigType = None,
                 act_cfg: OptConfigType = dict(type='ReLU'),
                 init_cfg: OptMultiConfig = dict(
                     type='Kaiming', layer='Conv2d', nonlinearity='relu')) -> None:
        super().__init__(init_cfg=init_cfg)
        assert num_convs >= 1
        self.in_channels = in_channels
        self.num_convs = num_convs
        self.shortcut = shortcut
        self.convs = nn.Sequential(*[
            ConvModule(in_channels, in_channels, 3, padding=1, conv_cfg=conv_cfg,
                       norm_cfg=norm_cfg, act_cfg=act_cfg, inplace=False)
            for _ in range(num_convs)])

    def forward(self, x: Tensor) -> Tensor:
        y = self.convs(x)
        return x + y if self.shortcut else y


def _interleaved_sampling(bbox_head, rois: Tensor, cls_score: Tensor, bbox_pred: Tensor,
                          batch_gt_instances: InstanceList, batch_img_metas: List[dict],
                          iou_thr: float) -> List[SamplingResult]:
    """Interleaving (paper Sec. 3.2, Fig. 1b): the box head's predicted boxes that overlap a
    ground truth by IoU >= ``iou_thr`` become the mask branch's positive samples.

    Each RoI's box is decoded with the regression of its top-scoring foreground class (what a
    detection of that RoI would be at test time), clipped to the image and detached.  Returns
    one :class:`SamplingResult` per image whose ``pos_priors`` are those boxes and whose
    ``pos_assigned_gt_inds``/``pos_gt_labels`` are their best-matching ground truths, which is
    what mmdet's mask heads read to build mask targets and pick the class channel.
    """
    with torch.no_grad():
        scores = cls_score
        if getattr(bbox_head, 'custom_activation', False):
            scores = bbox_head.loss_cls.get_activation(scores)
        labels = scores[:, :bbox_head.num_classes].argmax(dim=1)
        results = []
        for i, img_meta in enumerate(batch_img_metas):
            inds = torch.nonzero(rois[:, 0] == i, as_tuple=False).squeeze(1)
            boxes = get_box_tensor(bbox_head.regress_by_class(
                rois[inds, 1:], labels[inds], bbox_pred[inds], img_meta)).detach()
            gt = batch_gt_instances[i]
            gt_boxes = get_box_tensor(gt.bboxes)
            num_gts, n = gt_boxes.shape[0], boxes.shape[0]
            if num_gts > 0 and n > 0:
                ious = bbox_overlaps(boxes, gt_boxes)
                max_iou, argmax = ious.max(dim=1)
                pos = max_iou >= iou_thr
            else:
                max_iou = boxes.new_zeros(n)
                argmax = torch.zeros(n, dtype=torch.long, device=boxes.device)
                pos = torch.zeros(n, dtype=torch.bool, device=boxes.device)
            gt_inds = torch.where(pos, argmax + 1, torch.zeros_like(argmax))
            assigned_labels = torch.full_like(argmax, -1)
            if num_gts > 0:
                assigned_labels[pos] = gt.labels[argmax[pos]]
            assign = AssignResult(num_gts, gt_inds, max_iou, assigned_labels)
            pos_inds = torch.nonzero(pos, as_tuple=False).squeeze(1)
            neg_inds = torch.nonzero(~pos, as_tuple=False).squeeze(1)
            results.append(SamplingResult(
                pos_inds=pos_inds, neg_inds=neg_inds, priors=boxes, gt_bboxes=gt_boxes,
                assign_result=assign, gt_flags=boxes.new_zeros(n, dtype=torch.uint8)))
    return results


def _same_extractor(a: OptConfigType, b: OptConfigType) -> bool:
    """Whether two RoI extractor configs describe the same (parameter-free) RoIAlign extractor."""
    if a is None or b is None or isinstance(a, list) or isinstance(b, list):
        return False
    return dict(a) == dict(b)


@MODELS.register_module()
class EJHead(StandardRoIHead):
    """Effective Joint Head (paper Sec. 1, Sec. 3.2, Fig. 1b, Fig. 3; Tables 2, 4, 5) on mmdet's
    StandardRoIHead.

    The paper "merg[es] the detection branch and the instance segmentation branch into single
    branch" (Sec. 1): "the whole flow of information goes through an unified path", on which
    "we can add additional convolutions" (Boundary Refinement; "Shared Conv" in Sec. 1).  With
    ``joint=True`` this head therefore has one RoI feature path for both tasks:

    * one RoI extractor: when the mask extractor's config equals the box extractor's (14x14 once
      "Enriched Feature" is on), the mask head reads the box extractor (mmdet's
      ``share_roi_extractor``); with 7x7 box RoIs the mask head keeps its own 14x14 RoIAlign, which
      is the same parameter-free operator at another output size;
    * one BoundaryRefinement, applied to the RoI features of *both* heads (box RoIs before the box
      head's FCs, mask RoIs before the mask head's convs), in training and at test time;
    * Interleaving: in training the mask head is fed the box head's predicted boxes with IoU >=
      ``interleaving_iou_thr`` to a ground truth ("we simply connect the segmentation branch behind
      the detection head in series when training"); at test time mmdet already predicts masks on
      the detected boxes.

    Args:
        interleaving: train the mask branch on the box head's own predicted boxes (Sec. 3.2).
        interleaving_iou_thr: the IoU filter, 0.5 in the paper.
        boundary_refinement: None or a :class:`BoundaryRefinement` config.
        joint: True (the paper's unified path, above).  False: the earlier two-branch reading (BR on
            the box path only, separate mask RoI extractor); kept to measure the alternative.
        Other arguments: as StandardRoIHead.  "Enriched Feature" is
        ``bbox_roi_extractor.roi_layer.output_size=14`` and ``bbox_head.roi_feat_size=14``.
    """

    def __init__(self,
                 *args,
                 interleaving: bool = True,
                 interleaving_iou_thr: float = 0.5,
                 boundary_refinement: OptConfigType = None,
                 joint: bool = True,
                 **kwargs) -> None:
        if joint and _same_extractor(kwargs.get('mask_roi_extractor'),
                                     kwargs.get('bbox_roi_extractor')):
            kwargs['mask_roi_extractor'] = None  # one extractor: StandardRoIHead shares it
        super().__init__(*args, **kwargs)
        self.interleaving = interleaving
        self.interleaving_iou_thr = interleaving_iou_thr
        self.joint = joint
        self.boundary_refinement = (MODELS.build(boundary_refinement)
                                    if boundary_refinement else None)

    def _bbox_forward(self, x: Tuple[Tensor], rois: Tensor) -> dict:
        """StandardRoIHead's box forward with BoundaryRefinement between RoIAlign and the box head.

        ``bbox_feats`` in the result stays the raw RoI features; :meth:`_mask_forward` applies BR
        itself, so a mask head that reuses them (shared extractor, no Interleaving) sees exactly
        what it sees at test time."""
        bbox_feats = self.bbox_roi_extractor(x[:self.bbox_roi_extractor.num_inputs], rois)
        if self.with_shared_head:
            bbox_feats = self.shared_head(bbox_feats)
        head_in = bbox_feats
        if self.boundary_refinement is not None:
            head_in = self.boundary_refinement(bbox_feats)
        cls_score, bbox_pred = self.bbox_head(head_in)
        return dict(cls_score=cls_score, bbox_pred=bbox_pred, bbox_feats=bbox_feats)

    def _mask_forward(self, x: Tuple[Tensor], rois: Optional[Tensor] = None,
                      pos_inds: Optional[Tensor] = None,
                      bbox_feats: Optional[Tensor] = None) -> dict:
        """StandardRoIHead's mask forward; with ``joint`` the mask RoI features pass through the
        same BoundaryRefinement as the box RoI features ("Shared Conv") before the mask head."""
        assert (rois is not None) ^ (pos_inds is not None and bbox_feats is not None)
        if rois is not None:
            mask_feats = self.mask_roi_extractor(x[:self.mask_roi_extractor.num_inputs], rois)
            if self.with_shared_head:
                mask_feats = self.shared_head(mask_feats)
        else:
            mask_feats = bbox_feats[pos_inds]
        if self.joint and self.boundary_refinement is not None:
            mask_feats = self.boundary_refinement(mask_feats)
        return dict(mask_preds=self.mask_head(mask_feats), mask_feats=mask_feats)

    def bbox_loss(self, x: Tuple[Tensor], sampling_results: List[SamplingResult]) -> dict:
        results = super().bbox_loss(x, sampling_results)
        results['rois'] = bbox2roi([res.priors for res in sampling_results])
        return results

    def loss(self, x: Tuple[Tensor], rpn_results_list: InstanceList,
             batch_data_samples: SampleList) -> dict:
        if not (self.interleaving and self.with_mask):
            return super().loss(x, rpn_results_list, batch_data_samples)
        assert len(rpn_results_list) == len(batch_data_samples)
        batch_gt_instances, batch_gt_instances_ignore, batch_img_metas = \
            unpack_gt_instances(batch_data_samples)

        sampling_results = []
        for i in range(len(batch_data_samples)):
            rpn_results = rpn_results_list[i]
            rpn_results.priors = rpn_results.pop('bboxes')
            assign_result = self.bbox_assigner.assign(
                rpn_results, batch_gt_instances[i], batch_gt_instances_ignore[i])
            sampling_results.append(self.bbox_sampler.sample(
                assign_result, rpn_results, batch_gt_instances[i],
                feats=[lvl_feat[i][None] for lvl_feat in x]))

        losses = dict()
        bbox_results = self.bbox_loss(x, sampling_results)
        losses.update(bbox_results['loss_bbox'])

        mask_samples = _interleaved_sampling(
            self.bbox_head, bbox_results['rois'], bbox_results['cls_score'],
            bbox_results['bbox_pred'], batch_gt_instances, batch_img_metas,
            self.interleaving_iou_thr)
        pos_rois = bbox2roi([res.pos_priors for res in mask_samples])
        mask_results = self._mask_forward(x, pos_rois)
        mask_loss = self.mask_head.loss_and_target(
            mask_preds=mask_results['mask_preds'], sampling_results=mask_samples,
            batch_gt_instances=batch_gt_instances, rcnn_train_cfg=self.train_cfg)
        losses.update(mask_loss['loss_mask'])
        return losses


@MODELS.register_module()
class EJCascadeHead(CascadeRoIHead):
    """The joint EJ-Head at every stage of mmdet's CascadeRoIHead (paper Table 2, last row; how the
    paper applies EJ-Head to a cascade is not stated).

    Stage ``t`` is an :class:`EJHead` with ``joint=True``: its own :class:`BoundaryRefinement`
    (built from the one config, like the per-stage box heads) refines stage ``t``'s box RoI
    features and its mask RoI features; stage ``t``'s mask head reads stage ``t``'s box extractor
    when their configs are equal (14x14, "Enriched Feature"); with ``interleaving`` stage ``t``'s
    mask head is trained on stage ``t``'s own predicted boxes with IoU >= ``interleaving_iou_thr``
    (a float, or one per stage).  Testing is CascadeRoIHead's (masks of every stage on the final
    boxes, averaged), each stage's mask head behind its stage's BR.
    """

    def __init__(self,
                 *args,
                 interleaving: bool = True,
                 interleaving_iou_thr: Union[float, Sequence[float]] = 0.5,
                 boundary_refinement: OptConfigType = None,
                 joint: bool = True,
                 **kwargs) -> None:
        if joint and _same_extractor(kwargs.get('mask_roi_extractor'),
                                     kwargs.get('bbox_roi_extractor')):
            kwargs['mask_roi_extractor'] = None  # CascadeRoIHead then shares each stage's extractor
        super().__init__(*args, **kwargs)
        self.interleaving = interleaving
        self.joint = joint
        if isinstance(interleaving_iou_thr, (int, float)):
            interleaving_iou_thr = [float(interleaving_iou_thr)] * self.num_stages
        assert len(interleaving_iou_thr) == self.num_stages
        self.interleaving_iou_thr = list(interleaving_iou_thr)
        if boundary_refinement:
            cfgs = (boundary_refinement if isinstance(boundary_refinement, list)
                    else [boundary_refinement] * self.num_stages)
            assert len(cfgs) == self.num_stages
            self.boundary_refinement = ModuleList([MODELS.build(c) for c in cfgs])
        else:
            self.boundary_refinement = None

    def _bbox_forward(self, stage: int, x: Tuple[Tensor], rois: Tensor) -> dict:
        extractor = self.bbox_roi_extractor[stage]
        bbox_feats = extractor(x[:extractor.num_inputs], rois)
        head_in = bbox_feats
        if self.boundary_refinement is not None:
            head_in = self.boundary_refinement[stage](bbox_feats)
        cls_score, bbox_pred = self.bbox_head[stage](head_in)
        return dict(cls_score=cls_score, bbox_pred=bbox_pred, bbox_feats=bbox_feats)

    def _mask_forward(self, stage: int, x: Tuple[Tensor], rois: Tensor) -> dict:
        extractor = self.mask_roi_extractor[stage]
        mask_feats = extractor(x[:extractor.num_inputs], rois)
        if self.joint and self.boundary_refinement is not None:
            mask_feats = self.boundary_refinement[stage](mask_feats)
        return dict(mask_preds=self.mask_head[stage](mask_feats))

    def loss(self, x: Tuple[Tensor], rpn_results_list: InstanceList,
             batch_data_samples: SampleList) -> dict:
        """CascadeRoIHead.loss with the mask branch of each stage fed by Interleaving."""
        if not (self.interleaving and self.with_mask):
            return super().loss(x, rpn_results_list, batch_data_samples)
        assert len(rpn_results_list) == len(batch_data_samples)
        batch_gt_instances, batch_gt_instances_ignore, batch_img_metas = \
            unpack_gt_instances(batch_data_samples)

        losses = dict()
        results_list = rpn_results_list
        for stage in range(self.num_stages):
            self.current_stage = stage
            weight = self.stage_loss_weights[stage]
            sampling_results = []
            for i in range(len(batch_data_samples)):
                results = results_list[i]
                results.priors = results.pop('bboxes')
                assign_result = self.bbox_assigner[stage].assign(
                    results, batch_gt_instances[i], batch_gt_instances_ignore[i])
                sampling_results.append(self.bbox_sampler[stage].sample(
                    assign_result, results, batch_gt_instances[i],
                    feats=[lvl_feat[i][None] for lvl_feat in x]))

            bbox_results = self.bbox_loss(stage, x, sampling_results)
            for name, value in bbox_results['loss_bbox'].items():
                losses[f's{stage}.{name}'] = value * weight if 'loss' in name else value

            mask_samples = _interleaved_sampling(
                self.bbox_head[stage], bbox_results['rois'], bbox_results['cls_score'],
                bbox_results['bbox_pred'], batch_gt_instances, batch_img_metas,
                self.interleaving_iou_thr[stage])
            pos_rois = bbox2roi([res.pos_priors for res in mask_samples])
            mask_results = self._mask_forward(stage, x, pos_rois)
            mask_loss = self.mask_head[stage].loss_and_target(
                mask_preds=mask_results['mask_preds'], sampling_results=mask_samples,
                batch_gt_instances=batch_gt_instances, rcnn_train_cfg=self.train_cfg[stage])
            for name, value in mask_loss['loss_mask'].items():
                losses[f's{stage}.{name}'] = value * weight if 'loss' in name else value

            if stage < self.num_stages - 1:
                with torch.no_grad():
                    results_list = self.bbox_head[stage].refine_bboxes(
                        sampling_results, bbox_results, batch_img_metas)
                    if results_list is None:
                        break
        return losses
