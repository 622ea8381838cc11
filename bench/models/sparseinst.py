"""SparseInst (Cheng et al., "Sparse Instance Activation for Real-Time Instance Segmentation", CVPR 2022),
the baseline of AMF-SparseInst (Chen et al., ITC 2024; ``../shared/papers/amf-sparseinst.txt``).

The AMF paper does not restate SparseInst; it says (Sec. 4.7) that SparseInst was retrained "in our
environment" with SparseInst's own code base (detectron2).  This file re-implements that model in mmdet 3.x
from the SparseInst paper's description (Sec. 3: instance context encoder, IAM-based decoder with G groups,
bipartite matching with the dice x class score, Sec. 3.4 losses), with the registry names of mmdet's
``projects/SparseInst`` port so that the recipes' configs build.  Facts that the papers leave implicit
(init, the IoU threshold of the objectness target, the inference rescoring) were checked against the public
code of SparseInst / the mmdet port for facts only; see ``amf_sparseinst.md``.

Model::

    ResNet (C3, C4, C5) -> InstanceContextEncoder: 1x1 laterals -> PPM on projected C5 -> top-down FPN (nearest
    x2 + sum) -> 3x3 output convs -> resize P4, P5 to stride 8 -> concat -> 1x1 fusion -> F (256 ch, stride 8)
    -> GroupIAMDecoder: [coord-x, coord-y, F] (258 ch)
         instance branch: 4 x (3x3 conv, ReLU) -> grouped 3x3 conv -> G x N activation maps (sigmoid,
             normalised to sum 1) -> pooled instance features (G x 256 per instance, concatenated) -> FC + ReLU
             -> class logits (C), mask kernel (D), objectness logit (1)
         mask branch: 4 x (3x3 conv, ReLU) -> 1x1 conv to D
         masks = kernel . mask features (stride 8), bilinear x2 -> stride 4
    -> SparseInstCriterion (training) / score = sqrt(p_cls * p_obj) x maskness (inference, no NMS)
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.structures import InstanceData
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from mmdet.models.detectors.base import BaseDetector
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures import SampleList
from mmdet.structures.mask import mask2bbox
from mmdet.utils import ConfigType, OptConfigType, OptMultiConfig, reduce_mean

from bench.models.kernel_head import coord_features  # (x, y) in [-1, 1], CoordConv (SparseInst Sec. 3.3)


# --------------------------------------------------------------------------------------------- helpers
def c2_xavier_fill(module: nn.Module) -> None:
    """detectron2's ``c2_xavier_fill`` (kaiming-uniform with a=1, zero bias): SparseInst's encoder init."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


def c2_msra_fill(module: nn.Module) -> None:
    """detectron2's ``c2_msra_fill`` (kaiming-normal fan_out, relu, zero bias): SparseInst's decoder convs."""
    nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


def conv3x3_relu_stack(num_convs: int, in_channels: int, channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def resize_to(x: Tensor, size: Sequence[int], mode: str = 'nearest') -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == 'nearest':
        return F.interpolate(x, size=tuple(size), mode='nearest')
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


# --------------------------------------------------------------------------------------------- encoder
@MODELS.register_module()
class PyramidPoolingModule(nn.Module):
    """PSPNet's pyramid pooling on the projected C5 (SparseInst Sec. 3.2): average pooling to 1, 2, 3 and 6
    bins, a 1x1 conv to ``in_channels // 4`` with ReLU per bin, bilinear up-sampling, concatenation with the
    input and a 1x1 bottleneck + ReLU back to ``in_channels``.  No normalisation (as in SparseInst)."""

    def __init__(self, in_channels: int = 256, channels: int | None = None,
                 sizes: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        channels = channels or in_channels // 4
        self.sizes = tuple(sizes)
        self.stages = nn.ModuleList(nn.Conv2d(in_channels, channels, 1) for _ in self.sizes)
        self.bottleneck = nn.Conv2d(in_channels + len(self.sizes) * channels, in_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        priors = [F.interpolate(F.relu(conv(F.adaptive_avg_pool2d(x, s))), size=(h, w), mode='bilinear',
                                align_corners=False) for s, conv in zip(self.sizes, self.stages)]
        return F.relu(self.bottleneck(torch.cat(priors + [x], dim=1)))


class TopDownFPN(nn.Module):
    """SparseInst's feature pyramid: 1x1 laterals on C3-C5 (bias, no norm), ``context`` on the projected C5
    (PPM in SparseInst, SimAM-ASPP in AMF-SparseInst), top-down nearest x2 + sum, 3x3 output convs.
    Returns (P3, P4, P5)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                          for _ in in_channels)
        for m in list(self.lateral_convs) + list(self.output_convs):
            c2_xavier_fill(m)

    def forward(self, inputs: Sequence[Tensor], context: nn.Module | None = None) -> list[Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        prev = laterals[-1] if context is None else context(laterals[-1])
        outs = [self.output_convs[-1](prev)]
        for i in range(len(laterals) - 2, -1, -1):
            prev = laterals[i] + resize_to(prev, laterals[i].shape[-2:])
            outs.insert(0, self.output_convs[i](prev))
        return outs


@MODELS.register_module()
class InstanceContextEncoder(nn.Module):
    """SparseInst's instance context encoder (SparseInst Sec. 3.2, Fig. 3): FPN over C3-C5 with the PPM on
    the projected C5, P4/P5 up-sampled (bilinear) to stride 8, concatenated and fused by a 1x1 conv."""

    def __init__(self, in_channels: Sequence[int] = (512, 1024, 2048), out_channels: int = 256) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.fpn = TopDownFPN(in_channels, out_channels)
        self.ppm = PyramidPoolingModule(out_channels, out_channels // 4)
        self.fusion = nn.Conv2d(out_channels * len(in_channels), out_channels, 1)
        c2_msra_fill(self.fusion)  # SparseInst's encoder.py: c2_msra_fill(self.fusion)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        outs = self.fpn(feats[-len(self.in_channels):], context=self.ppm)
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [resize_to(x, size, 'bilinear') for x in outs[1:]]
        return self.fusion(torch.cat(outs, dim=1))


# --------------------------------------------------------------------------------------------- decoder
class GroupInstanceBranch(nn.Module):
    """Instance branch with G groups of instance activation maps (SparseInst Sec. 3.3, G-IAM)."""

    def __init__(self, in_channels: int, dim: int, num_convs: int, num_masks: int, kernel_dim: int,
                 num_classes: int, num_groups: int) -> None:
        super().__init__()
        self.num_masks = num_masks
        self.num_groups = num_groups
        self.inst_convs = conv3x3_relu_stack(num_convs, in_channels, dim)
        self.iam_conv = nn.Conv2d(dim, num_masks * num_groups, 3, padding=1, groups=num_groups)
        expand = dim * num_groups
        self.fc = nn.Linear(expand, expand)
        self.cls_score = nn.Linear(expand, num_classes)
        self.mask_kernel = nn.Linear(expand, kernel_dim)
        self.objectness = nn.Linear(expand, 1)
        self.init_weights()

    def init_weights(self) -> None:
        for m in self.inst_convs.modules():
            if isinstance(m, nn.Conv2d):
                c2_msra_fill(m)
        bias_value = -math.log((1 - 0.01) / 0.01)  # prior probability 0.01 (focal-loss init)
        for m in (self.iam_conv, self.cls_score):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.constant_(m.bias, bias_value)
        nn.init.normal_(self.mask_kernel.weight, std=0.01)
        nn.init.constant_(self.mask_kernel.bias, 0.0)
        c2_xavier_fill(self.fc)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.inst_convs(x)
        iam = self.iam_conv(x)                                     # B x (G N) x H x W
        b, gn = iam.shape[:2]
        c = x.shape[1]
        prob = iam.sigmoid().flatten(2)
        prob = prob / prob.sum(-1, keepdim=True).clamp(min=1e-6)   # each map sums to 1 over the pixels
        inst = torch.bmm(prob, x.flatten(2).transpose(1, 2))       # B x (G N) x C
        inst = inst.reshape(b, self.num_groups, gn // self.num_groups, c).transpose(1, 2)
        inst = F.relu(self.fc(inst.reshape(b, gn // self.num_groups, self.num_groups * c)))
        return self.cls_score(inst), self.mask_kernel(inst), self.objectness(inst), iam


class MaskBranch(nn.Module):
    """Mask branch: 4 x (3x3 conv, ReLU) and a 1x1 projection to the kernel dimension (SparseInst Sec. 3.3)."""

    def __init__(self, in_channels: int, dim: int, num_convs: int, kernel_dim: int) -> None:
        super().__init__()
        self.mask_convs = conv3x3_relu_stack(num_convs, in_channels, dim)
        self.projection = nn.Conv2d(dim, kernel_dim, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                c2_msra_fill(m)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(self.mask_convs(x))


@MODELS.register_module()
class GroupIAMDecoder(nn.Module):
    """SparseInst's G-IAM decoder (Sec. 3.3).  ``in_channels`` = encoder channels + 2 coordinate channels.

    Returns a dict: ``pred_logits`` (B, N, C), ``pred_masks`` (B, N, H, W) at stride 8 / ``scale_factor``,
    ``pred_scores`` (B, N, 1) objectness logits and, with ``output_iam``, ``pred_iam``."""

    def __init__(self, in_channels: int = 258, num_classes: int = 80, num_groups: int = 4,
                 num_masks: int = 100, ins_dim: int = 256, ins_conv: int = 4, mask_dim: int = 256,
                 mask_conv: int = 4, kernel_dim: int = 128, scale_factor: float = 2.0,
                 output_iam: bool = False) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        self.output_iam = output_iam
        self.inst_branch = GroupInstanceBranch(in_channels, ins_dim, ins_conv, num_masks, kernel_dim,
                                               num_classes, num_groups)
        self.mask_branch = MaskBranch(in_channels, mask_dim, mask_conv, kernel_dim)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        x = torch.cat([coord_features(features), features], dim=1)
        logits, kernels, scores, iam = self.inst_branch(x)
        mask_feats = self.mask_branch(x)
        b, d, h, w = mask_feats.shape
        masks = torch.bmm(kernels, mask_feats.flatten(2)).view(b, -1, h, w)
        if self.scale_factor != 1:
            masks = F.interpolate(masks, scale_factor=self.scale_factor, mode='bilinear', align_corners=False)
        out = dict(pred_logits=logits, pred_masks=masks, pred_scores=scores)
        if self.output_iam:
            out['pred_iam'] = iam
        return out


# --------------------------------------------------------------------------------------------- training
def dice_score(inputs: Tensor, targets: Tensor) -> Tensor:
    """Pairwise dice coefficient (SparseInst Eq. 4 matching score): inputs (N, P) logits, targets (M, P)."""
    inputs = inputs.sigmoid()
    num = 2 * inputs @ targets.t()
    den = (inputs * inputs).sum(-1)[:, None] + (targets * targets).sum(-1)[None, :]
    return num / (den + 1e-4)


def mask_iou(inputs: Tensor, targets: Tensor) -> Tensor:
    """IoU of matched (prediction, target) pairs, prediction binarised at probability 0.4, target at 0.5:
    the target of the objectness (IoU-aware) score (SparseInst Sec. 3.4)."""
    pred = (inputs.sigmoid() >= 0.4).float()
    tgt = (targets > 0.5).float()
    inter = (pred * tgt).sum(-1)
    return inter / (pred.sum(-1) + tgt.sum(-1) - inter + 1e-6)


def gt_mask_tensor(gt: InstanceData, size: Sequence[int], like: Tensor) -> Tensor:
    """Ground-truth masks (at the padded input size) as float (M, h, w), bilinearly resized to ``size``."""
    if len(gt) == 0:
        return like.new_zeros((0, *size))
    masks = gt.masks.to_tensor(dtype=like.dtype, device=like.device)
    return F.interpolate(masks[:, None], size=tuple(size), mode='bilinear', align_corners=False)[:, 0]


@TASK_UTILS.register_module()
class SparseInstMatcher(nn.Module):
    """One-to-one assignment maximising ``dice(m_i, t_k)^alpha * p_i(c_k)^beta`` (SparseInst Eq. 4, Hungarian
    algorithm); predicted masks at stride 4, targets bilinearly down-sampled to that size."""

    def __init__(self, alpha: float = 0.8, beta: float = 0.2) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], gt_masks: Sequence[Tensor],
                gt_labels: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        indices = []
        for i, (tm, tl) in enumerate(zip(gt_masks, gt_labels)):
            if tl.numel() == 0:
                empty = torch.zeros(0, dtype=torch.long)
                indices.append((empty, empty))
                continue
            pm = outputs['pred_masks'][i].flatten(1).float()
            prob = outputs['pred_logits'][i].float().sigmoid()[:, tl]
            cost = dice_score(pm, tm.flatten(1).float()).clamp(min=0) ** self.alpha * prob ** self.beta
            r, c = linear_sum_assignment(cost.cpu().numpy(), maximize=True)
            indices.append((torch.as_tensor(r, dtype=torch.long), torch.as_tensor(c, dtype=torch.long)))
        return indices


@MODELS.register_module()
class SparseInstCriterion(nn.Module):
    """SparseInst's loss (Sec. 3.4): ``L = l_cls (focal, 2.0) + l_obj (BCE on the IoU of the matched mask,
    1.0) + l_mask (BCE 5.0 + dice 2.0)``.  Focal and dice are summed and divided by the number of target
    instances (averaged over GPUs); the BCE terms are means over the matched predictions / pixels."""

    def __init__(self, num_classes: int = 80, assigner: ConfigType = dict(type='SparseInstMatcher'),
                 loss_cls: ConfigType = dict(type='FocalLoss', use_sigmoid=True, alpha=0.25, gamma=2.0,
                                             reduction='sum', loss_weight=2.0),
                 loss_obj: ConfigType = dict(type='CrossEntropyLoss', use_sigmoid=True, reduction='mean',
                                             loss_weight=1.0),
                 loss_mask: ConfigType = dict(type='CrossEntropyLoss', use_sigmoid=True, reduction='mean',
                                              loss_weight=5.0),
                 loss_dice: ConfigType = dict(type='DiceLoss', use_sigmoid=True, reduction='sum', eps=5e-5,
                                              loss_weight=2.0)) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = TASK_UTILS.build(assigner)
        self.loss_cls = MODELS.build(loss_cls)
        self.loss_obj = MODELS.build(loss_obj)
        self.loss_mask = MODELS.build(loss_mask)
        self.loss_dice = MODELS.build(loss_dice)

    def forward(self, outputs: dict[str, Tensor], batch_gt_instances: Sequence[InstanceData]) -> dict:
        logits, masks, scores = outputs['pred_logits'], outputs['pred_masks'], outputs['pred_scores']
        size = masks.shape[-2:]
        gt_masks = [gt_mask_tensor(gt, size, masks) for gt in batch_gt_instances]
        gt_labels = [gt.labels.to(logits.device) for gt in batch_gt_instances]
        indices = self.matcher(outputs, gt_masks, gt_labels)

        num = torch.as_tensor([float(sum(len(t) for t in gt_labels))], device=logits.device)
        num = reduce_mean(num).clamp(min=1).item()

        # classification: every prediction, unmatched ones are background (one-hot all zero)
        target = logits.new_zeros(logits.shape)
        for i, (src, tgt) in enumerate(indices):
            if len(src):
                target[i, src.to(logits.device), gt_labels[i][tgt.to(logits.device)]] = 1.0
        loss_cls = self.loss_cls(logits.flatten(0, 1), target.flatten(0, 1)) / num

        src_masks = torch.cat([masks[i, s.to(masks.device)] for i, (s, _) in enumerate(indices)])
        if src_masks.shape[0] == 0:
            zero = masks.sum() * 0.0
            return dict(loss_cls=loss_cls, loss_obj=scores.sum() * 0.0, loss_dice=zero, loss_mask=zero)
        src_masks = src_masks.flatten(1)
        tgt_masks = torch.cat([gt_masks[i][t.to(masks.device)] for i, (_, t) in enumerate(indices)]).flatten(1)
        src_scores = torch.cat([scores[i, s.to(scores.device), 0] for i, (s, _) in enumerate(indices)])
        with torch.no_grad():
            ious = mask_iou(src_masks, tgt_masks)
        return dict(loss_cls=loss_cls,
                    loss_obj=self.loss_obj(src_scores, ious),
                    loss_dice=self.loss_dice(src_masks, tgt_masks) / num,
                    loss_mask=self.loss_mask(src_masks, tgt_masks))


# --------------------------------------------------------------------------------------------- detector
@MODELS.register_module()
class SparseInst(BaseDetector):
    """Backbone -> encoder (one stride-8 map) -> decoder -> criterion / NMS-free inference.

    ``predict`` returns ``DetDataSample``s whose ``pred_instances`` hold ``scores``, ``labels``, boolean
    ``masks`` (original image size when ``rescale``) and ``bboxes`` derived from the masks (SparseInst
    predicts none), so that CocoMetric can evaluate ``segm`` (and ``bbox``)."""

    def __init__(self, backbone: ConfigType, encoder: ConfigType, decoder: ConfigType, criterion: ConfigType,
                 test_cfg: OptConfigType = None, train_cfg: OptConfigType = None,
                 data_preprocessor: OptConfigType = None, init_cfg: OptMultiConfig = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.encoder = MODELS.build(encoder)
        self.decoder = MODELS.build(decoder)
        self.criterion = MODELS.build(criterion)
        test_cfg = dict(test_cfg or {})
        self.score_thr = test_cfg.get('score_thr', 0.005)
        self.mask_thr = test_cfg.get('mask_thr_binary', 0.45)
        self.max_per_img = test_cfg.get('max_per_img', None)

    def extract_feat(self, batch_inputs: Tensor) -> Tensor:
        return self.encoder(self.backbone(batch_inputs))

    def _forward(self, batch_inputs: Tensor, batch_data_samples: SampleList | None = None):
        out = self.decoder(self.extract_feat(batch_inputs))
        return out['pred_logits'], out['pred_masks'], out['pred_scores']

    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> dict:
        out = self.decoder(self.extract_feat(batch_inputs))
        return self.criterion(out, [ds.gt_instances for ds in batch_data_samples])

    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList, rescale: bool = True) -> SampleList:
        out = self.decoder(self.extract_feat(batch_inputs))
        pad_hw = batch_inputs.shape[-2:]
        results = [self.postprocess(out['pred_logits'][i], out['pred_masks'][i], out['pred_scores'][i],
                                    ds.metainfo, pad_hw, rescale)
                   for i, ds in enumerate(batch_data_samples)]
        return self.add_pred_to_datasample(batch_data_samples, results)

    @torch.no_grad()
    def postprocess(self, logits: Tensor, mask_logits: Tensor, obj_logits: Tensor, meta: dict,
                    pad_hw: Sequence[int], rescale: bool) -> InstanceData:
        """SparseInst inference: score = sqrt(sigmoid(cls) * sigmoid(obj)), top class per instance, keep
        score > score_thr, rescore by the mean probability inside the binarised mask ("maskness"), resize
        the probabilities to the padded input, crop to ``img_shape``, resize to ``ori_shape`` (rescale),
        binarise at ``mask_thr_binary``."""
        probs = (logits.sigmoid() * obj_logits.sigmoid()).sqrt()
        scores, labels = probs.max(-1)
        keep = scores > self.score_thr
        scores, labels, masks = scores[keep], labels[keep], mask_logits[keep].sigmoid()
        img_h, img_w = meta['img_shape'][:2]
        out_hw = meta['ori_shape'][:2] if rescale else (img_h, img_w)
        res = InstanceData()
        if scores.numel() == 0:
            res.scores, res.labels = scores, labels
            res.masks = torch.zeros((0, *out_hw), dtype=torch.bool, device=scores.device)
            res.bboxes = scores.new_zeros((0, 4))
            return res
        binary = (masks > self.mask_thr).float()
        scores = scores * (masks * binary).sum((1, 2)) / (binary.sum((1, 2)) + 1e-6)
        if self.max_per_img is not None and scores.numel() > self.max_per_img:
            scores, order = scores.topk(self.max_per_img)
            labels, masks = labels[order], masks[order]
        masks = F.interpolate(masks[None], size=tuple(pad_hw), mode='bilinear', align_corners=False)
        masks = masks[..., :img_h, :img_w]
        if tuple(out_hw) != (img_h, img_w):
            masks = F.interpolate(masks, size=tuple(out_hw), mode='bilinear', align_corners=False)
        masks = masks[0] > self.mask_thr
        res.scores, res.labels, res.masks = scores, labels, masks
        res.bboxes = mask2bbox(masks).to(scores.dtype)
        return res
