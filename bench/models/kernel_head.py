"""Instance-kernel classification head of CSR-D2S (Vo et al., Sec. III, Fig. 1, Eq. 6).

Paper, Section III-B (last paragraph) and Fig. 1: the segmentation head takes the single fused
stride-8 feature of the neck and has two branches, an *instance kernel classification* branch
and a *mask* branch, each a stack of four 3x3 convolutions.  Masks are produced by a 1x1
(dynamic) convolution of the predicted instance kernels with the mask features.  Training uses
set-based (bipartite) assignment and ``L = 1 * L_cls(CE) + 2 * L_dice + 3 * L_focal`` (Eq. 6);
inference thresholds masks at 0.5 (Fig. 4) and needs no NMS.

How the N instance kernels are produced is not specified by the paper ("motivated by the new
design of the classified instance kernels" of K-Net / SOLOv2).  We use *instance activation
maps* (IAM, the kernel generator of SparseInst, Cheng et al., CVPR 2022) with G groups:

* the kernel branch (4 x [3x3 conv, GN, ReLU], CoordConv input as in SOLOv2) gives ``F_k``;
* a 3x3 conv with ``G * N`` output channels and a sigmoid gives N activation maps per group,
  i.e. a *fixed set of N learned activation kernels* that are applied to every image;
* each map, normalised to sum 1 over the pixels, pools ``F_k`` into an instance feature; the G
  group features of an instance are concatenated and mixed by a linear layer + ReLU;
* from the instance feature a linear layer predicts the class logits (C + 1, the last one is
  "no object") and another linear layer the dynamic 1x1 kernel (``kernel_channels`` values);
* the mask branch (4 x [3x3 conv, GN, ReLU] + 1x1 projection to ``kernel_channels``) gives the
  mask features ``F_m``; mask logits = kernel (1x1 conv, here an einsum) applied to ``F_m``.

Why this design: (1) it matches Fig. 1 exactly (single stride-8 input, two 4-conv branches, one
1x1 dynamic convolution) -- SparseInst is the published model with this very topology; (2) the
N predictions are an unordered *set* whose kernels are conditioned on the image, which is what
one-to-one Hungarian assignment needs (a grid of SOLO cells would be assigned by location, and a
fixed set of N kernels without image conditioning would not be "predicted" kernels at all);
(3) with G = 4 groups (SparseInst's default) the whole model lands within 1 % of the paper's
parameter count (see ``csr_d2s.md``).  The mask-score ("maskness", SOLOv2) multiplier used at
inference is parameter free, so the loss stays exactly Eq. 6.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import bias_init_with_prob, kaiming_init, normal_init
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet.models.dense_heads.base_mask_head import BaseMaskHead
from mmdet.models.utils import multi_apply
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures.mask import mask2bbox
from mmdet.utils import ConfigType, InstanceList, OptConfigType, OptMultiConfig, reduce_mean

NUM_COCO_CLASSES = 80


def coord_features(feat: Tensor) -> Tensor:
    """Normalised (x, y) coordinates in [-1, 1] as two extra channels (CoordConv, SOLOv2)."""
    b, _, h, w = feat.shape
    ys = torch.linspace(-1, 1, h, device=feat.device, dtype=feat.dtype)
    xs = torch.linspace(-1, 1, w, device=feat.device, dtype=feat.dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing='ij')
    return torch.stack([xx, yy])[None].expand(b, -1, -1, -1)


def gt_masks_to_tensor(gt_instances: InstanceData, size: tuple[int, int],
                       device: torch.device) -> Tensor:
    """Ground-truth masks (already padded to the batch input shape) resized to ``size``.

    Bilinear resizing gives soft targets at the prediction resolution, as K-Net does.
    """
    masks = gt_instances.masks
    if hasattr(masks, 'to_tensor'):
        masks = masks.to_tensor(dtype=torch.float32, device=device)
    masks = masks.float().to(device)
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size))
    if tuple(masks.shape[-2:]) != tuple(size):
        masks = F.interpolate(masks[None], size=size, mode='bilinear', align_corners=False)[0]
    return masks


def masks_to_results(mask_logits: Tensor, scores: Tensor, labels: Tensor, img_meta: dict,
                     rescale: bool, mask_thr: float, use_maskness: bool,
                     score_thr: float, chunk_size: int = 25) -> InstanceData:
    """Turn the selected mask logits of one image into mmdet ``pred_instances``.

    ``mask_logits`` (k, h, w) are defined on the padded batch input (at any stride); they are
    resized to the padded input, cropped to ``img_shape`` and, when ``rescale``, resized to
    ``ori_shape``; then thresholded at ``mask_thr`` (paper, Fig. 4: 0.5).  With ``use_maskness``
    the score is multiplied by the mean foreground probability inside the binary mask (SOLOv2's
    maskness, computed at the prediction resolution).  Boxes are the tight boxes of the masks.
    """
    if use_maskness and mask_logits.numel() > 0:
        probs = mask_logits.sigmoid()
        fg = (probs > mask_thr).float()
        maskness = (probs * fg).flatten(1).sum(1) / fg.flatten(1).sum(1).clamp(min=1.0)
        scores = scores * maskness
    keep = scores > score_thr
    scores, labels, mask_logits = scores[keep], labels[keep], mask_logits[keep]
    order = scores.argsort(descending=True)
    scores, labels, mask_logits = scores[order], labels[order], mask_logits[order]

    pad_h, pad_w = img_meta['batch_input_shape']
    img_h, img_w = img_meta['img_shape'][:2]
    out_h, out_w = img_meta['ori_shape'][:2] if rescale else (img_h, img_w)
    if mask_logits.shape[0] == 0:
        masks = mask_logits.new_zeros((0, out_h, out_w), dtype=torch.bool)
    else:
        chunks = []
        for part in mask_logits.split(chunk_size):  # bounds memory at full resolution
            up = F.interpolate(part[None], size=(pad_h, pad_w), mode='bilinear',
                               align_corners=False)[:, :, :img_h, :img_w]
            if (out_h, out_w) != (img_h, img_w):
                up = F.interpolate(up, size=(out_h, out_w), mode='bilinear',
                                   align_corners=False)
            chunks.append(up[0].sigmoid() > mask_thr)
        masks = torch.cat(chunks)
    results = InstanceData()
    results.scores = scores
    results.labels = labels
    results.masks = masks
    results.bboxes = mask2bbox(masks) if masks.shape[0] > 0 else scores.new_zeros((0, 4))
    return results


@MODELS.register_module()
class KernelClsHead(BaseMaskHead):
    """Instance-kernel classification + mask branch head (paper Sec. III-B, Fig. 1, Eq. 6).

    Args:
        num_classes: number of object classes (80 for COCO).
        in_channels: channels of the neck's fused stride-8 feature.
        feat_channels: width of the 3x3 convs of both branches.
        num_convs: 3x3 convs per branch (paper: four).
        num_kernels: N, number of predicted instance kernels (set size for matching).
        num_groups: G, groups of instance activation maps per kernel (SparseInst G-IAM).
        kernel_channels: E, channels of the mask features = length of a dynamic 1x1 kernel.
        mask_upsample_stride: bilinear up-sampling of the stride-8 mask logits before loss and
            inference (2 -> masks at stride 4, the resolution K-Net and SparseInst use).
        with_coord: concatenate normalised coordinates to both branch inputs (CoordConv).
        norm_cfg: normalisation of the branch convs.
        bg_cls_weight: cross-entropy weight of the "no object" class (DETR / MaskFormer use 0.1;
            the paper does not say).  The loss's ``class_weight`` is always set to
            ``[1] * num_classes + [bg_cls_weight]`` so that overriding ``num_classes`` works.
        loss_cls: classification loss, paper Eq. 6 "alpha * L_cls", softmax cross-entropy over
            C + 1 classes (alpha = 1).
        loss_dice: mask Dice loss, "beta * L_dice" (beta = 2).
        loss_focal: per-pixel sigmoid focal loss on the masks, "gamma * L_focal" (gamma = 3).
        train_cfg: ``dict(assigner=...)``, a bipartite (Hungarian) assigner from TASK_UTILS.
        test_cfg: ``dict(max_per_img, mask_thr, score_thr, use_maskness)``.
    """

    def __init__(self,
                 num_classes: int = NUM_COCO_CLASSES,
                 in_channels: int = 512,
                 feat_channels: int = 256,
                 num_convs: int = 4,
                 num_kernels: int = 100,
                 num_groups: int = 4,
                 kernel_channels: int = 256,
                 mask_upsample_stride: int = 2,
                 with_coord: bool = True,
                 norm_cfg: OptConfigType = dict(type='GN', num_groups=32, requires_grad=True),
                 bg_cls_weight: float = 0.1,
                 loss_cls: ConfigType = dict(
                     type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                 loss_dice: ConfigType = dict(
                     type='DiceLoss', use_sigmoid=True, activate=True, naive_dice=True,
                     eps=1.0, loss_weight=2.0),
                 loss_focal: ConfigType = dict(
                     type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=3.0),
                 train_cfg: OptConfigType = None,
                 test_cfg: OptConfigType = None,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feat_channels = feat_channels
        self.num_kernels = num_kernels
        self.num_groups = num_groups
        self.kernel_channels = kernel_channels
        self.mask_upsample_stride = mask_upsample_stride
        self.with_coord = with_coord
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg if test_cfg is not None else {}

        class_weight = [1.0] * num_classes + [float(bg_cls_weight)]
        self.loss_cls = MODELS.build(dict(loss_cls, class_weight=class_weight))
        self.loss_dice = MODELS.build(loss_dice)
        self.loss_focal = MODELS.build(loss_focal)
        self.register_buffer('class_weight', torch.tensor(class_weight), persistent=False)
        self.assigner = None
        if train_cfg is not None and train_cfg.get('assigner') is not None:
            self.assigner = TASK_UTILS.build(train_cfg['assigner'])

        branch_in = in_channels + (2 if with_coord else 0)
        self.kernel_convs = self._stack_convs(branch_in, feat_channels, num_convs, norm_cfg)
        self.mask_convs = self._stack_convs(branch_in, feat_channels, num_convs, norm_cfg)
        # N*G learned instance-activation filters (the "fixed set of kernels" of the head).
        self.iam_conv = nn.Conv2d(feat_channels, num_groups * num_kernels, 3, padding=1)
        self.group_fc = nn.Linear(num_groups * feat_channels, feat_channels)
        self.fc_cls = nn.Linear(feat_channels, num_classes + 1)
        self.fc_kernel = nn.Linear(feat_channels, kernel_channels)
        self.mask_proj = nn.Conv2d(feat_channels, kernel_channels, 1)

    @staticmethod
    def _stack_convs(in_channels: int, channels: int, num_convs: int,
                     norm_cfg: OptConfigType) -> nn.Sequential:
        return nn.Sequential(*[
            ConvModule(in_channels if i == 0 else channels, channels, 3, padding=1,
                       norm_cfg=norm_cfg, act_cfg=dict(type='ReLU'))
            for i in range(num_convs)
        ])

    def init_weights(self) -> None:
        """Kaiming for the branch convs; IAM / kernel / class layers as in SparseInst."""
        super().init_weights()
        for m in list(self.kernel_convs.modules()) + list(self.mask_convs.modules()):
            if isinstance(m, nn.Conv2d):
                kaiming_init(m, mode='fan_out', nonlinearity='relu')
        kaiming_init(self.mask_proj, mode='fan_out', nonlinearity='relu')
        normal_init(self.iam_conv, std=0.01, bias=bias_init_with_prob(0.01))
        normal_init(self.fc_kernel, std=0.01)
        normal_init(self.fc_cls, std=0.01)
        nn.init.xavier_uniform_(self.group_fc.weight)
        nn.init.zeros_(self.group_fc.bias)

    def forward(self, x: tuple[Tensor, ...] | list[Tensor]) -> tuple[Tensor, Tensor]:
        """Predict the N kernels' class logits and mask logits.

        Args:
            x: neck outputs; only ``x[0]`` (the fused stride-8 feature) is used.

        Returns:
            cls_logits (B, N, C + 1) and mask_logits (B, N, h, w) at stride
            ``8 / mask_upsample_stride``.
        """
        feat = x[0]
        if self.with_coord:
            feat = torch.cat([feat, coord_features(feat)], dim=1)
        b = feat.shape[0]

        # instance kernel classification branch
        kernel_feat = self.kernel_convs(feat)  # (B, C', H, W)
        iam = self.iam_conv(kernel_feat).sigmoid().flatten(2)  # (B, G*N, HW)
        iam = iam / iam.sum(-1, keepdim=True).clamp(min=1e-6)
        inst = torch.bmm(iam, kernel_feat.flatten(2).transpose(1, 2))  # (B, G*N, C')
        inst = inst.reshape(b, self.num_groups, self.num_kernels, self.feat_channels)
        inst = inst.permute(0, 2, 1, 3).reshape(b, self.num_kernels, -1)
        inst = F.relu(self.group_fc(inst))  # (B, N, C')
        cls_logits = self.fc_cls(inst)
        kernels = self.fc_kernel(inst)  # (B, N, E)

        # mask branch and the 1x1 dynamic convolution "kernel (*) mask features"
        mask_feat = self.mask_proj(self.mask_convs(feat))  # (B, E, H, W)
        mask_logits = torch.einsum('bne,behw->bnhw', kernels, mask_feat)
        if self.mask_upsample_stride > 1:
            mask_logits = F.interpolate(mask_logits, scale_factor=self.mask_upsample_stride,
                                        mode='bilinear', align_corners=False)
        return cls_logits, mask_logits

    # ------------------------------------------------------------------ training
    def _get_targets_single(self, cls_logits: Tensor, mask_logits: Tensor,
                            gt_instances: InstanceData,
                            img_meta: dict) -> tuple[Tensor, Tensor, Tensor]:
        """Hungarian assignment for one image.

        Returns labels (N,) with ``num_classes`` for unmatched kernels, the indices of the
        matched kernels and their (soft) target masks at the prediction resolution.
        """
        gt_masks = gt_masks_to_tensor(gt_instances, tuple(mask_logits.shape[-2:]),
                                      mask_logits.device)
        gt_labels = gt_instances.labels
        labels = gt_labels.new_full((self.num_kernels, ), self.num_classes)
        if gt_labels.numel() == 0:
            pos_inds = gt_labels.new_zeros((0, ))
            return labels, pos_inds, gt_masks
        assert self.assigner is not None, 'train_cfg.assigner is required for training'
        pred = InstanceData(scores=cls_logits.detach(), masks=mask_logits.detach())
        gt = InstanceData(labels=gt_labels, masks=gt_masks)
        assign_result = self.assigner.assign(pred_instances=pred, gt_instances=gt,
                                             img_meta=img_meta)
        pos_inds = torch.nonzero(assign_result.gt_inds > 0, as_tuple=False).squeeze(1)
        matched_gt = assign_result.gt_inds[pos_inds] - 1
        labels[pos_inds] = gt_labels[matched_gt]
        return labels, pos_inds, gt_masks[matched_gt]

    def loss_by_feat(self, cls_logits: Tensor, mask_logits: Tensor,
                     batch_gt_instances: InstanceList, batch_img_metas: list[dict],
                     **kwargs: Any) -> dict[str, Tensor]:
        """Paper Eq. 6: ``1 * CE(cls) + 2 * Dice(mask) + 3 * Focal(mask)`` on matched kernels.

        Classification is averaged with the class weights (DETR/MaskFormer convention); the
        mask losses are averaged over the matched kernels of the whole (distributed) batch.
        """
        labels, pos_inds, pos_targets = multi_apply(self._get_targets_single,
                                                    list(cls_logits), list(mask_logits),
                                                    batch_gt_instances, batch_img_metas)
        labels = torch.cat(labels)
        flat_cls = cls_logits.flatten(0, 1)
        cls_avg = reduce_mean(self.class_weight[labels].sum()).clamp(min=1.0)
        loss_cls = self.loss_cls(flat_cls, labels, avg_factor=cls_avg.item())

        pos_preds = torch.cat([m[inds] for m, inds in zip(mask_logits, pos_inds)])
        pos_targets = torch.cat(pos_targets)
        num_pos = reduce_mean(cls_logits.new_tensor(float(pos_preds.shape[0]))).clamp(min=1.0)
        if pos_preds.shape[0] == 0:
            zero = mask_logits.sum() * 0
            return dict(loss_cls=loss_cls, loss_dice=zero, loss_focal=zero)
        pos_preds = pos_preds.flatten(1)
        pos_targets = pos_targets.flatten(1)
        loss_dice = self.loss_dice(pos_preds, pos_targets, avg_factor=num_pos.item())
        loss_focal = self.loss_focal(pos_preds, pos_targets,
                                     avg_factor=num_pos.item() * pos_preds.shape[1])
        return dict(loss_cls=loss_cls, loss_dice=loss_dice, loss_focal=loss_focal)

    # ----------------------------------------------------------------- inference
    def predict_by_feat(self, cls_logits: Tensor, mask_logits: Tensor,
                        batch_img_metas: list[dict], rescale: bool = True,
                        **kwargs: Any) -> InstanceList:
        """Top-k (kernel, class) pairs by class probability [x maskness]; no NMS."""
        cfg = self.test_cfg
        max_per_img = int(cfg.get('max_per_img', 100))
        results = []
        for cls_i, masks_i, meta in zip(cls_logits, mask_logits, batch_img_metas):
            probs = cls_i.softmax(-1)[:, :self.num_classes]
            k = min(max_per_img, probs.numel())
            scores, idx = probs.flatten().topk(k)
            kernel_idx = torch.div(idx, self.num_classes, rounding_mode='floor')
            labels = idx % self.num_classes
            results.append(masks_to_results(
                masks_i[kernel_idx], scores, labels, meta, rescale,
                mask_thr=float(cfg.get('mask_thr', 0.5)),
                use_maskness=bool(cfg.get('use_maskness', True)),
                score_thr=float(cfg.get('score_thr', 0.0))))
        return results
