"""YOLACT++ (Bolya, Zhou, Xiao, Lee, "YOLACT++: Better Real-time Instance Segmentation", TPAMI 2020,
arXiv 1912.06218), a compared system of amf-sparseinst Table 10 (row ``yolact-pp-r50-dcn-550``: R-50-DCN-FPN,
550, 34.1 mask AP; the table prints no #params).

YOLACT++ is mmdet 3.3's YOLACT plus three changes; this file adds what mmdet does not have. Written here from
the paper's description and the facts of the official code (github.com/dbolya/yolact, ``data/config.py``
``yolact_plus_resnet50_config``, ``yolact.py``, ``backbone.py``, ``layers/modules/multibox_loss.py``,
``layers/output_utils.py``), which was read, never copied. Every reading is in ``yolact_plus.md``.

Model::

    ResNet-50, DCNv2 (modulated deformable 3x3 conv) in the blocks of conv3..conv5
        (``YOLACTPlusResNet``: every ``dcn_interval``-th block of a DCN stage, the official R-50 config: every block)
    -> ``YOLACTPlusFPN``: P3..P5 (1x1 laterals, bilinear top-down, 3x3 output conv + ReLU),
       P6 = 3x3/2 conv of P5's output, P7 = 3x3/2 conv of P6 (no ReLU on P6, P7)
    -> mmdet's ``YOLACTHead`` with 3 anchor scales per octave x ratios {1, 1/2, 2} (9 anchors a location)
    -> ``YOLACTPlusProtonet``: mmdet's YOLACT protonet + semantic-segmentation branch, plus
       ``FastMaskIoUNet``: the cropped predicted mask (prototype resolution, before thresholding) ->
       5 x (3x3 conv stride 2, ReLU) with 8, 16, 32, 64, 128 channels -> 1x1 conv to C + ReLU -> global max
       pooling = the predicted mask IoU per class.
    training: its target is the IoU of the binarised (> 0.5) cropped predicted mask with the ground-truth mask
              at prototype resolution; smooth L1 on the ground-truth class's output, weight 25, summed and
              divided by the number of positive anchors; instances whose ground-truth mask covers <= 25
              prototype pixels are left out
    inference: the score of each detection is multiplied by its predicted mask IoU (for its class)
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_conv_layer
from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet.models.backbones.resnet import ResNet
from mmdet.models.dense_heads.yolact_head import YOLACTProtonet
from mmdet.models.detectors.yolact import YOLACT
from mmdet.models.necks.fpn import FPN
from mmdet.registry import MODELS
from mmdet.utils import InstanceList


# ------------------------------------------------------------------------------------------- backbone
def dcn_blocks(stage_blocks: Sequence[int], stage_with_dcn: Sequence[bool], interval: int) -> list[list[bool]]:
    """Which blocks of each stage get the deformable conv: in a DCN stage, block i when i % interval == 0
    (the official ``ResNetBackbone._make_layer`` with ``dcn_layers`` = the stage's length; its R-101 base
    config uses interval 3, 11 deformable layers; its R-50 config the default interval 1, all 13)."""
    if interval < 1:
        raise ValueError(f"dcn_interval must be >= 1, got {interval}")
    return [[bool(with_dcn) and i % interval == 0 for i in range(n)] for n, with_dcn in zip(stage_blocks, stage_with_dcn)]


@MODELS.register_module()
class YOLACTPlusResNet(ResNet):
    """mmdet's ResNet whose DCN stages put the deformable conv in every ``dcn_interval``-th block only (the
    others keep the plain 3x3 conv, so they load their ImageNet weights as usual). ``dcn_interval=1`` is
    mmdet's ResNet with ``dcn`` / ``stage_with_dcn`` unchanged."""

    def __init__(self, *args, dcn_interval: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dcn_interval = dcn_interval
        if self.dcn is None:
            return
        plan = dcn_blocks(self.stage_blocks, self.stage_with_dcn, dcn_interval)
        for layer_name, keep in zip(self.res_layers, plan):
            for block, use_dcn in zip(getattr(self, layer_name), keep):
                if block.with_dcn and not use_dcn:
                    block.conv2 = build_conv_layer(block.conv_cfg, block.planes, block.planes, kernel_size=3,
                                                   stride=block.conv2_stride, padding=block.dilation,
                                                   dilation=block.dilation, bias=False)
                    block.with_dcn = False

    def deformable_blocks(self) -> list[str]:
        """Names of the blocks whose 3x3 conv is deformable (for tests and the design notes)."""
        return [f"{name}.{i}" for name in self.res_layers for i, b in enumerate(getattr(self, name))
                if hasattr(b.conv2, "conv_offset")]


# ------------------------------------------------------------------------------------------------ neck
@MODELS.register_module()
class YOLACTPlusFPN(FPN):
    """The official YOLACT FPN: mmdet's FPN layers with ``add_extra_convs='on_output'`` (P6 from P5's output,
    P7 from P6: 3x3 stride-2 convs of 256 channels), but a ReLU after each of the P3..P5 output convs and
    none before or after the extra convs (official ``fpn_base``: ``relu_pred_layers=True``,
    ``relu_downsample_layers=False``; the P6 conv therefore sees the rectified P5)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault('add_extra_convs', 'on_output')
        if kwargs['add_extra_convs'] != 'on_output':
            raise ValueError("YOLACTPlusFPN builds P6 from P5's output: add_extra_convs must be 'on_output'")
        if kwargs.get('relu_before_extra_convs'):
            raise ValueError("YOLACTPlusFPN has no ReLU between the extra convs (relu_before_extra_convs=False)")
        kwargs.setdefault('upsample_cfg', dict(mode='bilinear'))
        super().__init__(*args, **kwargs)

    def forward(self, inputs: tuple) -> tuple:
        assert len(inputs) == len(self.in_channels)
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:],
                                                              mode=self.upsample_cfg.get('mode', 'bilinear'),
                                                              align_corners=False)
        n = len(laterals)
        outs = [F.relu(self.fpn_convs[i](laterals[i])) for i in range(n)]
        x = outs[-1]
        for conv in self.fpn_convs[n:]:
            x = conv(x)
            outs.append(x)
        return tuple(outs)


# ----------------------------------------------------------------------------- fast mask re-scoring
@MODELS.register_module()
class FastMaskIoUNet(BaseModule):
    """The fast mask re-scoring network: a 6-layer FCN with a ReLU after every conv and a global max pool.
    Input (N, 1, H, W): cropped predicted masks (sigmoid outputs, not thresholded); output (N, C): the
    predicted mask IoU for every class. Convs 3x3, stride 2, no padding (official ``maskiou_net`` entries
    ``(c, 3, {'stride': 2})``), then a 1x1 conv to ``num_classes`` (followed by a ReLU as well:
    ``include_last_relu=True``)."""

    def __init__(self, num_classes: int, channels: Sequence[int] = (8, 16, 32, 64, 128), kernel_size: int = 3,
                 stride: int = 2, init_cfg=dict(type='Xavier', distribution='uniform', bias=0, layer='Conv2d')) -> None:
        super().__init__(init_cfg=init_cfg)
        layers, cin = [], 1
        for c in channels:
            layers += [nn.Conv2d(cin, c, kernel_size, stride=stride), nn.ReLU(inplace=True)]
            cin = c
        layers += [nn.Conv2d(cin, num_classes, 1), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.num_classes = num_classes
        # the smallest input the unpadded stride-2 convs take (63 for five 3x3/2); 550x550 images give 138
        size = 1
        for _ in channels:
            size = (size - 1) * stride + kernel_size
        self.min_size = size

    def forward(self, masks: Tensor) -> Tensor:
        h, w = masks.shape[-2:]
        if h < self.min_size or w < self.min_size:
            # inputs smaller than paper scale (tests, smoke runs): pad with background (0) at the bottom/right
            masks = F.pad(masks, (0, max(0, self.min_size - w), 0, max(0, self.min_size - h)))
        x = self.convs(masks)
        return F.adaptive_max_pool2d(x, 1).flatten(1)


def mask_iou(pred: Tensor, target: Tensor) -> Tensor:
    """IoU of binary masks (N, H, W) x (N, H, W) -> (N,). An empty union gives 0."""
    inter = (pred * target).sum((1, 2))
    union = pred.sum((1, 2)) + target.sum((1, 2)) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-6), torch.zeros_like(union))


@MODELS.register_module()
class YOLACTPlusProtonet(YOLACTProtonet):
    """mmdet's YOLACT protonet (prototypes, semantic-segmentation branch, the cropped lincomb mask loss) plus
    the fast mask re-scoring network, its loss (``loss_maskiou``) and its rescoring at inference.

    Args:
        maskiou_channels: the re-scoring net's conv widths (official ``maskiou_net``).
        loss_maskiou_weight: the smooth-L1 loss's weight (official ``maskiou_alpha = 25``).
        discard_mask_area: ground-truth masks of at most this many prototype pixels train no IoU
            (official ``discard_mask_area = 5*5``).
        rescore: multiply each detection's score by its predicted mask IoU at inference (official
            ``rescore_mask=True``); the unscored value is kept as ``box_scores``.
        detach_maskiou_input: stop the re-scoring loss's gradient at the predicted mask. The official code
            does not detach it (the loss reaches the prototypes and coefficients too): default False.
    """

    def __init__(self, *args, maskiou_channels: Sequence[int] = (8, 16, 32, 64, 128),
                 loss_maskiou_weight: float = 25.0, discard_mask_area: float = 25.0, rescore: bool = True,
                 detach_maskiou_input: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.maskiou_net = FastMaskIoUNet(self.num_classes, maskiou_channels)
        self.loss_maskiou_weight = loss_maskiou_weight
        self.discard_mask_area = discard_mask_area
        self.rescore = rescore
        self.detach_maskiou_input = detach_maskiou_input

    # ------------------------------------------------------------------------------------------ train
    def _subsample(self, mask_preds: List[Tensor], positive_infos: InstanceList):
        """At most ``max_masks_to_train`` positives an image, chosen at random, for the mask loss and the
        re-scoring loss alike (the official code draws one subset for both). Done here, before mmdet's
        protonet loss, which then finds nothing to subsample."""
        out_preds, out_infos = [], []
        for preds, info in zip(mask_preds, positive_infos):
            n = len(info)
            if n > self.max_masks_to_train:
                keep = torch.randperm(n, device=preds.device)[:self.max_masks_to_train]
                preds, info = preds[:, :, keep], info[keep]
            out_preds.append(preds)
            out_infos.append(info)
        return out_preds, out_infos

    def maskiou_targets(self, mask_preds: List[Tensor], batch_gt_instances: InstanceList,
                        batch_img_metas: List[dict], positive_infos: InstanceList):
        """(inputs (M, 1, h, w), IoU targets (M,), labels (M,)) for the re-scoring net over the batch: each
        positive's cropped predicted mask, the IoU of its binarisation with its ground-truth mask (bilinearly
        resized to prototype resolution and binarised at 0.5), and the ground-truth class."""
        cropped = self.crop_mask_preds(mask_preds, batch_img_metas, positive_infos)
        inputs, targets, labels = [], [], []
        for preds, gt, info in zip(cropped, batch_gt_instances, positive_infos):
            if len(info) == 0 or len(gt) == 0:
                continue
            h, w = preds.shape[-2:]
            with torch.no_grad():
                gt_masks = gt.masks.to_tensor(dtype=torch.float32, device=preds.device)
                gt_masks = F.interpolate(gt_masks.unsqueeze(0), (h, w), mode='bilinear',
                                         align_corners=False).squeeze(0).gt(0.5).float()
                target_masks = gt_masks[info.pos_assigned_gt_inds]
                keep = target_masks.sum((1, 2)) > self.discard_mask_area
            if not keep.any():
                continue
            preds, target_masks = preds[keep], target_masks[keep]
            with torch.no_grad():
                targets.append(mask_iou(preds.gt(0.5).float(), target_masks))
            inputs.append(preds.unsqueeze(1))
            labels.append(gt.labels[info.pos_assigned_gt_inds][keep])
        if not inputs:
            return None
        return torch.cat(inputs), torch.cat(targets), torch.cat(labels)

    def loss_by_feat(self, mask_preds: List[Tensor], segm_preds: List[Tensor], batch_gt_instances: InstanceList,
                     batch_img_metas: List[dict], positive_infos: InstanceList, **kwargs) -> dict:
        num_pos = sum(len(info) for info in positive_infos)   # every positive anchor, before subsampling
        mask_preds, positive_infos = self._subsample(mask_preds, positive_infos)
        losses = super().loss_by_feat(mask_preds, segm_preds, batch_gt_instances, batch_img_metas,
                                      positive_infos, **kwargs)
        samples = self.maskiou_targets(mask_preds, batch_gt_instances, batch_img_metas, positive_infos)
        if samples is None:
            # no instance to score: a zero that still touches the net (every parameter takes part in the graph)
            losses['loss_maskiou'] = sum(p.sum() for p in self.maskiou_net.parameters()) * 0.
            return losses
        inputs, targets, labels = samples
        if self.detach_maskiou_input:
            inputs = inputs.detach()
        pred = self.maskiou_net(inputs).gather(1, labels[:, None]).squeeze(1)
        loss = F.smooth_l1_loss(pred, targets, reduction='sum', beta=1.0)
        losses['loss_maskiou'] = loss * self.loss_maskiou_weight / max(num_pos, 1)
        return losses

    # ---------------------------------------------------------------------------------------- predict
    def predict_by_feat(self, mask_preds: List[Tensor], segm_preds: Tensor, results_list: InstanceList,
                        batch_img_metas: List[dict], rescale: bool = True, **kwargs) -> InstanceList:
        # the crops at prototype resolution, taken before mmdet's step rescales the boxes in place
        cropped = self.crop_mask_preds(mask_preds, batch_img_metas, results_list) if self.rescore else None
        results_list = super().predict_by_feat(mask_preds, segm_preds, results_list, batch_img_metas,
                                               rescale=rescale, **kwargs)
        if not self.rescore:
            return results_list
        for i, results in enumerate(results_list):
            if len(results) == 0 or cropped[i].shape[0] == 0:
                continue
            iou = self.maskiou_net(cropped[i].unsqueeze(1)).gather(1, results.labels[:, None].long()).squeeze(1)
            results.box_scores = results.scores.clone()
            results.scores = results.scores * iou
            order = results.scores.argsort(descending=True)
            results_list[i] = results[order]
        return results_list


# --------------------------------------------------------------------------------------------- detector
@MODELS.register_module()
class YOLACTPlus(YOLACT):
    """YOLACT++: mmdet's YOLACT detector (single-stage instance segmentor) with the modules above in its
    config; nothing else differs at the detector level."""
