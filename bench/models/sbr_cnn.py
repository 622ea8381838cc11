"""Modules of "Self-Balanced R-CNN for instance segmentation" (Rossi, Karimi, Prati, JVCIR 2022).

* :class:`R3RoIHead` -- Recursively Refined R-CNN (R^3-CNN, Sec. 3.1, Fig. 2(b), Eqs. 1-6): ONE
  (or a few) detection/mask head pairs looped ``loops`` times, each loop re-assigning and
  re-sampling the boxes refined by the previous loop with a growing IoU threshold ``u^t``.
* :class:`R3MaskHead` -- the mask head M1 with its internal loop (Eqs. 3-5).
* :class:`FCCBBoxHead`, :class:`FCCMaskIoUHead` -- Fully Connected Channels (Sec. 3.2, Fig. 4,
  Table 1): the two big FC layers of the detection head / Mask IoU branch replaced by the "L2C"
  convolutions, optionally with the 7x7 non-local block before (NL_b) / after (NL_a) them.
* :class:`EnhancedNonLocal2d` -- non-local block whose internal convolutions use 7x7 kernels
  (Sec. 3.2 and 4.6); :class:`RectConvBlock` -- "Conv 7x3 -> 3x7" (Sec. 4.6).

Written from the paper's text (``../shared/papers/sbr-cnn.txt``) against mmdet 3.3's interfaces
(``BaseRoIHead``, ``BBoxHead``, ``HTCMaskHead``, ``MaskIoUHead``, mmcv's ``NonLocal2d``); where the
paper is silent or ambiguous the authors' released mmdetection 2.x fork (``configs/r3_cnn/``,
``fcc2_bbox_head.py``, ``fcc_maskiou_head.py``, ``r3_roi_head.py``) was read for facts only.  Every
reading of an ambiguous passage is listed in ``sbr_cnn.md``; the main ones are repeated below.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule, NonLocal2d
from mmengine.config import ConfigDict
from mmengine.model import ModuleList
from mmengine.structures import InstanceData
from torch import Tensor
from torch.nn.modules.utils import _pair

from mmdet.models.roi_heads.base_roi_head import BaseRoIHead
from mmdet.models.roi_heads.bbox_heads.bbox_head import BBoxHead
from mmdet.models.roi_heads.mask_heads.htc_mask_head import HTCMaskHead
from mmdet.models.roi_heads.mask_heads.maskiou_head import MaskIoUHead
from mmdet.models.task_modules.samplers import SamplingResult
from mmdet.models.test_time_augs import merge_aug_masks
from mmdet.models.utils import empty_instances, unpack_gt_instances
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures import SampleList
from mmdet.structures.bbox import bbox2roi, get_box_tensor
from mmdet.utils import ConfigType, InstanceList, OptConfigType, OptMultiConfig

L2C_MODES = ('7x7', '7x3->3x7')


# ---------------------------------------------------------------------------------------------
# Building blocks: enhanced non-local, rectangular convs, L2C
# ---------------------------------------------------------------------------------------------
@MODELS.register_module()
class EnhancedNonLocal2d(NonLocal2d):
    """Non-local block [46] whose internal convolutions use ``kernel_size`` x ``kernel_size``
    kernels instead of 1x1 (Sec. 3.2: "Our non-local layer, differently from the original one,
    increases the kernels of internal convolutions from 1x1 to 7x7"; Sec. 4.6 "Non-local 7x7").

    Everything else is mmcv's ``NonLocal2d`` (embedded Gaussian, ``reduction`` 2, ``use_scale``,
    residual ``x + conv_out(y)``, ``conv_out`` zero-initialised).  The four internal convolutions
    ``g``, ``theta``, ``phi`` and ``conv_out`` all get the large kernel with ``padding = k // 2``
    so the RoI map keeps its size.  Parameters on 256 channels, k = 7: 3 x (256*128*49 + 128) +
    (128*256*49 + 256) = 6,423,168.
    """

    def __init__(self, in_channels: int, reduction: int = 2, use_scale: bool = True,
                 kernel_size: int = 7, conv_cfg: OptConfigType = None,
                 norm_cfg: OptConfigType = None, mode: str = 'embedded_gaussian',
                 **kwargs) -> None:
        assert not kwargs.pop('sub_sample', False), 'sub_sample is not supported'
        init_kwargs = {k: kwargs.pop(k) for k in ('std', 'zeros_init') if k in kwargs}
        super().__init__(in_channels, reduction=reduction, use_scale=use_scale,
                         conv_cfg=conv_cfg, norm_cfg=norm_cfg, mode=mode, **init_kwargs, **kwargs)
        self.kernel_size = kernel_size
        pad = kernel_size // 2
        conv_cfg = conv_cfg if conv_cfg is not None else dict(type='Conv2d')

        def conv(cin, cout, norm=None):
            return ConvModule(cin, cout, kernel_size, padding=pad, conv_cfg=conv_cfg,
                              norm_cfg=norm, act_cfg=None)

        self.g = conv(self.in_channels, self.inter_channels)
        self.conv_out = conv(self.inter_channels, self.in_channels, norm_cfg)
        if self.mode != 'gaussian':
            self.theta = conv(self.in_channels, self.inter_channels)
            self.phi = conv(self.in_channels, self.inter_channels)
        self.init_weights(**init_kwargs)


@MODELS.register_module()
class RectConvBlock(nn.Module):
    """"Conv 7x3 -> 3x7" of Sec. 4.6: two consecutive convolutions with rectangular kernels,
    ``in_channels -> out_channels -> out_channels`` (256 -> 256 -> 256 as GRoIE pre/post module).

    Each conv is an mmcv ``ConvModule`` (bias, ReLU, no norm), the form of the authors' GRoIE
    configs (``faster_rcnn_r50_fpn_groie_1x_coco-v15.py`` / ``-post-v4.py``: two ConvModules,
    ``kernel_size=(7, 3), padding=1`` then ``kernel_size=(3, 7), padding=3``).  Default paddings
    are the authors' (1, 3): a 7x7 map becomes 3x7, then 7x7 again (an s x s map: (s-4) x s, then
    s x s).  Sec. 3.2's text gives "7x3 with padding 3, and 3x7 with padding 1" (7x7 -> 7x11 ->
    7x7), available as ``paddings=(3, 1)``; the parameter count is the same.
    """

    def __init__(self, in_channels: int = 256, out_channels: int = 256,
                 kernel_sizes: Sequence = ((7, 3), (3, 7)), paddings: Sequence = (1, 3),
                 conv_cfg: OptConfigType = None, norm_cfg: OptConfigType = None,
                 act_cfg: OptConfigType = dict(type='ReLU'), inplace: bool = False) -> None:
        super().__init__()
        assert len(kernel_sizes) == len(paddings) >= 1
        self.in_channels = in_channels
        self.out_channels = out_channels
        layers = []
        cin = in_channels
        for k, p in zip(kernel_sizes, paddings):
            layers.append(ConvModule(cin, out_channels, tuple(_pair(k)), padding=p,
                                     conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
                                     inplace=inplace))
            cin = out_channels
        self.convs = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(x)


def build_l2c(in_channels: int, mode: str, channels: Sequence[int],
              conv_cfg: OptConfigType = None, norm_cfg: OptConfigType = None,
              act_cfg: OptConfigType = dict(type='ReLU'), post_reduce: bool = True,
              rect_paddings: Sequence[int] = (1, 3)) -> nn.Sequential:
    """The L2C convolutions replacing the two big FC layers (Sec. 3.2, Fig. 4(b)/(c), Table 1).

    ``'7x7'``: ``in -> channels[0] -> channels[1]`` with 7x7 kernels, padding 3 (256 -> 128 -> 64).
    ``'7x3->3x7'``: each 7x7 conv replaced by a 7x3 conv then a 3x7 conv.  Which of the two halves
    the channels is the authors' ``post_reduce`` switch (``FCC2BBoxHead`` of their fork):

    * ``post_reduce=True`` (Table 1's conv1a/1b/2a/2b): the 7x3 conv keeps the channels, the 3x7
      conv halves them, 256 -> 256 -> 128 -> 128 -> 64 (2,581,056 weights + biases);
    * ``post_reduce=False`` (the authors' Table 6 row 6 head, ``r3_cnn-exp_5-row_3-fcc2_8.py``):
      the 7x3 conv halves, the 3x7 conv keeps, 256 -> 128 -> 128 -> 64 -> 64 (1,290,624).

    ``rect_paddings``: the authors' (1, 3) (7x3 pad 1: 7x7 -> 3x7; 3x7 pad 3: -> 7x7); Sec. 3.2's
    text gives (3, 1) (7x7 -> 7x11 -> 7x7).  Same parameters, different intermediate map.
    Every conv is a ConvModule (bias, ReLU), as in the authors' heads.
    """
    if mode not in L2C_MODES:
        raise ValueError(f'l2c must be one of {L2C_MODES}, got {mode!r}')
    if len(rect_paddings) != 2:
        raise ValueError(f'rect_paddings must be two ints (7x3 conv, 3x7 conv), got {rect_paddings!r}')
    layers = []
    cin = in_channels
    for cout in channels:
        if mode == '7x7':
            layers.append(ConvModule(cin, cout, 7, padding=3, conv_cfg=conv_cfg,
                                     norm_cfg=norm_cfg, act_cfg=act_cfg, inplace=False))
        else:
            mid = cin if post_reduce else cout
            layers.append(ConvModule(cin, mid, (7, 3), padding=rect_paddings[0],
                                     conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
                                     inplace=False))
            layers.append(ConvModule(mid, cout, (3, 7), padding=rect_paddings[1],
                                     conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
                                     inplace=False))
        cin = cout
    return nn.Sequential(*layers)


def _build_nl(nl_cfg: OptConfigType, channels: int) -> nn.Module:
    cfg = dict(type='EnhancedNonLocal2d', reduction=2, use_scale=True, kernel_size=7)
    if nl_cfg is not None:
        cfg.update(dict(nl_cfg))
    cfg['in_channels'] = channels
    return MODELS.build(cfg)


class _FCCMixin:
    """Builds NL_b -> L2C -> NL_a (Fig. 4(b)-(e)) on a ``channels x s x s`` RoI map.

    A ReLU follows each non-local block (``relu_after_nl``, default True): the authors' FCC heads
    apply ``relu(layer(x))`` to every layer of their L2C list, the non-local blocks included
    (``FCC2BBoxHead.forward``, ``FCCBBoxHead.forward`` via ``relus``, ``FCC(2)MaskIoUHead.forward``).
    The paper does not mention it.  After the convs (already conv + ReLU) it is a no-op.
    """

    def _init_fcc(self, in_channels: int, l2c: str, l2c_channels: Sequence[int],
                  nl_before: bool, nl_after: bool, nl_cfg: OptConfigType,
                  conv_cfg: OptConfigType, norm_cfg: OptConfigType, post_reduce: bool = True,
                  rect_paddings: Sequence[int] = (1, 3), relu_after_nl: bool = True) -> int:
        self.l2c_mode = l2c
        self.l2c_channels = tuple(l2c_channels)
        self.post_reduce = bool(post_reduce)
        self.rect_paddings = tuple(rect_paddings)
        self.relu_after_nl = bool(relu_after_nl)
        self.nl_before = _build_nl(nl_cfg, in_channels) if nl_before else None
        self.l2c = build_l2c(in_channels, l2c, l2c_channels, conv_cfg, norm_cfg,
                             post_reduce=post_reduce, rect_paddings=rect_paddings)
        self.nl_after = _build_nl(nl_cfg, l2c_channels[-1]) if nl_after else None
        self.nl_relu = nn.ReLU(inplace=False)
        return l2c_channels[-1]

    def _nl(self, block: nn.Module, x: Tensor) -> Tensor:
        x = block(x)
        return self.nl_relu(x) if self.relu_after_nl else x

    def _forward_fcc(self, x: Tensor) -> Tensor:
        if self.nl_before is not None:
            x = self._nl(self.nl_before, x)
        x = self.l2c(x)
        if self.nl_after is not None:
            x = self._nl(self.nl_after, x)
        return x.flatten(1)


# ---------------------------------------------------------------------------------------------
# FCC heads
# ---------------------------------------------------------------------------------------------
@MODELS.register_module()
class FCCBBoxHead(_FCCMixin, BBoxHead):
    """Detection head with Fully Connected Channels (Sec. 3.2, Fig. 4(b)-(e)).

    ``Shared2FCBBoxHead`` with its two shared FCs (12.8M + 1.0M weights) replaced by L2C
    (:func:`build_l2c`), optionally preceded by an :class:`EnhancedNonLocal2d` on the 256-channel
    RoI map (``nl_before``, NL_b, Fig. 4(d)/(e)) and/or followed by one on the 64-channel L2C
    output (``nl_after``, NL_a), each followed by a ReLU (authors' code); then one cls FC and one
    reg FC on the flattened 64x7x7 map.  Counts with 81 classes and class-agnostic regression:
    7x7 2,273,877 ("2.2M"), 7x3->3x7 2,847,701 ("2.8M"), plus 6,423,168 per 256-channel NL
    (Sec. 3.2's "8.6M" = 8,697,045; "9.2M" = 9,270,869).  With ``post_reduce=False`` (the authors'
    ``Shared2FCC2BBoxHead`` of Table 6 row 6 / Table 7 rows 2-7 / SBR-CNN) the rectangular L2C is
    256 -> 128 -> 128 -> 64 -> 64: 1,557,269, or 7,980,437 with NL_b (Table 6 row 6: 37,910,516
    = "37.9").  Arguments other than the FCC ones are ``BBoxHead``'s (``fc_out_channels`` etc.
    are ignored).
    """

    def __init__(self, in_channels: int = 256, roi_feat_size: int = 7, l2c: str = '7x7',
                 l2c_channels: Sequence[int] = (128, 64), nl_before: bool = False,
                 nl_after: bool = False, nl_cfg: OptConfigType = None,
                 post_reduce: bool = True, rect_paddings: Sequence[int] = (1, 3),
                 relu_after_nl: bool = True,
                 conv_cfg: OptConfigType = None, norm_cfg: OptConfigType = None,
                 init_cfg: OptMultiConfig = None, **kwargs) -> None:
        for k in ('fc_out_channels', 'num_shared_convs', 'num_shared_fcs', 'conv_out_channels'):
            kwargs.pop(k, None)
        super().__init__(in_channels=in_channels, roi_feat_size=roi_feat_size,
                         init_cfg=init_cfg, **kwargs)
        assert not self.with_avg_pool, 'FCCBBoxHead flattens the RoI map (no avg pool)'
        out_c = self._init_fcc(in_channels, l2c, l2c_channels, nl_before, nl_after, nl_cfg,
                               conv_cfg, norm_cfg, post_reduce, rect_paddings, relu_after_nl)
        last_dim = out_c * self.roi_feat_area
        # rebuild the predictors on the flattened L2C output (BBoxHead built them on in*7*7)
        if self.with_cls:
            cls_channels = (self.loss_cls.get_cls_channels(self.num_classes)
                            if self.custom_cls_channels else self.num_classes + 1)
            cfg = self.cls_predictor_cfg.copy()
            cfg.update(in_features=last_dim, out_features=cls_channels)
            self.fc_cls = MODELS.build(cfg)
        if self.with_reg:
            box_dim = self.bbox_coder.encode_size
            out_dim = box_dim if self.reg_class_agnostic else box_dim * self.num_classes
            cfg = self.reg_predictor_cfg.copy()
            if isinstance(cfg, (dict, ConfigDict)):
                cfg.update(in_features=last_dim, out_features=out_dim)
            self.fc_reg = MODELS.build(cfg)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        x = self._forward_fcc(x)
        cls_score = self.fc_cls(x) if self.with_cls else None
        bbox_pred = self.fc_reg(x) if self.with_reg else None
        return cls_score, bbox_pred


@MODELS.register_module()
class FCCMaskIoUHead(_FCCMixin, MaskIoUHead):
    """Mask IoU branch (MS R-CNN [45]) with FCC (Sec. 3.2, Table 7).

    mmdet's ``MaskIoUHead`` (4 3x3 convs on the 257-channel 14x14 input, the last with stride 2,
    then FC 12544->1024, FC 1024->1024, FC 1024->num_classes) with its first two FCs replaced by
    L2C exactly as in :class:`FCCBBoxHead` (on the 256x7x7 map after the convs, NL_b / NL_a
    optional, each followed by a ReLU); the last FC (per-class mask IoU) now reads the flattened
    64x7x7 map.  Counts: MS R-CNN branch 16,340,304 ("16.3M"), L2C 7x7 4,620,816 ("4.6M"),
    7x3->3x7 5,194,640 ("5.1M"; the authors' ``FCC2MaskIoUHead`` always uses the Table 1 layout,
    ``post_reduce=True``).
    """

    def __init__(self, num_convs: int = 4, roi_feat_size: int = 14, in_channels: int = 256,
                 conv_out_channels: int = 256, num_classes: int = 80, l2c: str = '7x7',
                 l2c_channels: Sequence[int] = (128, 64), nl_before: bool = False,
                 nl_after: bool = False, nl_cfg: OptConfigType = None,
                 post_reduce: bool = True, rect_paddings: Sequence[int] = (1, 3),
                 relu_after_nl: bool = True,
                 conv_cfg: OptConfigType = None, norm_cfg: OptConfigType = None,
                 loss_iou: ConfigType = dict(type='MSELoss', loss_weight=0.5),
                 init_cfg: OptMultiConfig = [
                     dict(type='Kaiming', override=dict(name='convs')),
                     dict(type='Normal', std=0.01, override=dict(name='fc_mask_iou'))],
                 **kwargs) -> None:
        for k in ('num_fcs', 'fc_out_channels'):
            kwargs.pop(k, None)
        assert not kwargs, f'unexpected arguments {sorted(kwargs)}'
        super().__init__(num_convs=num_convs, num_fcs=0, roi_feat_size=roi_feat_size,
                         in_channels=in_channels, conv_out_channels=conv_out_channels,
                         num_classes=num_classes, loss_iou=loss_iou, init_cfg=init_cfg)
        del self.fcs
        out_c = self._init_fcc(conv_out_channels, l2c, l2c_channels, nl_before, nl_after,
                               nl_cfg, conv_cfg, norm_cfg, post_reduce, rect_paddings,
                               relu_after_nl)
        s = _pair(roi_feat_size)
        pooled_area = (s[0] // 2) * (s[1] // 2)
        self.fc_mask_iou = nn.Linear(out_c * pooled_area, num_classes)

    def forward(self, mask_feat: Tensor, mask_preds: Tensor) -> Tensor:
        mask_pred_pooled = self.max_pool(mask_preds.sigmoid().unsqueeze(1))
        x = torch.cat((mask_feat, mask_pred_pooled), 1)
        for conv in self.convs:
            x = self.relu(conv(x))
        return self.fc_mask_iou(self._forward_fcc(x))


# ---------------------------------------------------------------------------------------------
# R^3-CNN
# ---------------------------------------------------------------------------------------------
@MODELS.register_module()
class R3MaskHead(HTCMaskHead):
    """Mask head M1 of R^3-CNN (Sec. 3.1, Eqs. 3-5).

    HTCMaskHead layout: ``num_convs`` 3x3 convs (M1), deconv U (14 -> 28), 1x1 ``conv_logits``
    C_2 (Eq. 4), and with ``with_conv_res`` the 1x1 conv C_1 (``conv_res``) applied to the
    previous internal iteration's output and summed with the RoI features x^t (Eq. 3).  The
    internal loop itself is driven by :class:`R3RoIHead` (j = t iterations in loop t).

    Eq. 3 writes the first iteration as ``M1(x^t + C_1(0))``: with ``zero_res_first`` (default)
    C_1 is applied to a zero tensor when no previous output is given, i.e. the learned constant
    ReLU(bias of C_1) is added, as the authors' ``R3MaskHead`` does (``res_feat = zeros_like(x)``,
    then ``conv_res``).  mmdet's HTC stage-1 head skips C_1 instead; ``zero_res_first=False``
    reproduces that.
    """

    def __init__(self, *args, zero_res_first: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.zero_res_first = zero_res_first and self.with_conv_res

    def forward(self, x: Tensor, res_feat: Optional[Tensor] = None, return_logits: bool = True,
                return_feat: bool = True) -> Union[Tensor, List[Tensor]]:
        if res_feat is None and self.zero_res_first:
            res_feat = x.new_zeros((x.shape[0], self.conv_out_channels) + tuple(x.shape[2:]))
        return super().forward(x, res_feat, return_logits=return_logits,
                               return_feat=return_feat)


@MODELS.register_module()
class R3RoIHead(BaseRoIHead):
    """Recursively Refined R-CNN RoI head (Sec. 3.1, Fig. 2(b), Eqs. 1-6).

    Args:
        loops (int): training loops L_t.
        alternation (str): one letter per training loop; letter ``k`` ('a', 'b', ...) selects
            the pair ``(bbox_head[k], mask_head[k])`` used in that loop (Sec. 4.3, "Alt.").
            Defaults to 'a' * loops.
        loop_loss_weights (list[float]): alpha_t of Eq. 6.
        bbox_roi_extractor / mask_roi_extractor (dict): ONE extractor each, shared by every loop
            and pair (the loop goes back through the same RoI extractor, Fig. 2(b)).
        bbox_head / mask_head (dict or list[dict]): the H pairs.
        mask_iou_head (dict, optional): one Mask IoU branch [45] shared by all loops and pairs.
        test_mask_merge (str): 'mean' averages the sigmoid masks of all internal iterations at
            test time (mmdet 2.x HTC and the authors' code), 'last' keeps the last one.

    Training, loop t (0-based here): the boxes of the previous loop (RPN proposals at t = 0) are
    assigned with ``train_cfg[t]`` (IoU threshold u^t, Eq. 1) and sampled; the pair of letter
    ``alternation[t]`` computes L_bbox^t (Eq. 2); its regressor refines the sampled boxes
    (b^{t+1}); as in HTC's interleaved mode the refined boxes are re-assigned/re-sampled with the
    same cfg to train the mask head, which runs its internal loop of t + 1 iterations (Eqs. 3-5;
    iteration i uses the mask head of loop i's letter, so with H = 1 it is M1 t + 1 times); both
    losses are weighted by alpha_t (Eq. 6).  The refined boxes feed loop t + 1.  The Mask IoU
    branch is trained in the last loop only (unweighted; its loss weight is in ``loss_iou``).

    Test: ``test_cfg.loops`` (L_e, default L_t) loops; loop t >= L_t keeps the last training
    letter; the classification scores of all loops are averaged ("we merge all the predictions,
    computing the average of the classification predictions", Sec. 3.1) and the last loop's
    regression decodes the final boxes; the mask head runs L_e internal iterations.  With the Mask
    IoU branch the predicted IoU of each mask (last iteration's logits, detected class) rescales the
    MASK scores only: ``pred_instances.mask_scores = scores * IoU``, which mmdet's CocoMetric uses
    for segm while ``scores`` (boxes) stay the averaged classification scores, as in the authors'
    mmdet 2.x code (their ``get_mask_scores`` feeds the segm results only).  mmdet 3.3's
    ``MaskIoUHead.predict_by_feat`` would rescale ``scores``, i.e. the box AP too.
    """

    def __init__(self, loops: int, loop_loss_weights: Sequence[float],
                 bbox_roi_extractor: ConfigType, bbox_head: Union[ConfigType, List],
                 mask_roi_extractor: OptConfigType = None,
                 mask_head: Union[OptConfigType, List] = None,
                 alternation: Optional[str] = None, mask_iou_head: OptConfigType = None,
                 test_mask_merge: str = 'mean', shared_head: OptConfigType = None,
                 train_cfg: OptConfigType = None, test_cfg: OptConfigType = None,
                 init_cfg: OptMultiConfig = None) -> None:
        assert shared_head is None, 'shared_head is not supported'
        assert test_mask_merge in ('mean', 'last')
        self.loops = int(loops)
        self.alternation = alternation if alternation is not None else 'a' * self.loops
        assert len(self.alternation) == self.loops, \
            f'alternation {self.alternation!r} must have one letter per loop ({loops})'
        self.pair_of_loop = [ord(c) - ord('a') for c in self.alternation]
        self.loop_loss_weights = list(loop_loss_weights)
        assert len(self.loop_loss_weights) == self.loops
        self.test_mask_merge = test_mask_merge
        super().__init__(bbox_roi_extractor=bbox_roi_extractor, bbox_head=bbox_head,
                         mask_roi_extractor=mask_roi_extractor, mask_head=mask_head,
                         shared_head=None, train_cfg=train_cfg, test_cfg=test_cfg,
                         init_cfg=init_cfg)
        self.num_pairs = len(self.bbox_head)
        assert max(self.pair_of_loop) < self.num_pairs and min(self.pair_of_loop) >= 0, \
            f'alternation {self.alternation!r} needs more than {self.num_pairs} pairs'
        if self.with_mask:
            assert len(self.mask_head) == self.num_pairs
        self.mask_iou_head = MODELS.build(mask_iou_head) if mask_iou_head is not None else None

    # ---- construction -------------------------------------------------------------------
    @property
    def with_semantic(self) -> bool:  # HybridTaskCascade asks its roi_head
        return False

    @property
    def with_mask_iou(self) -> bool:
        return self.mask_iou_head is not None

    def init_bbox_head(self, bbox_roi_extractor: ConfigType, bbox_head) -> None:
        self.bbox_roi_extractor = MODELS.build(bbox_roi_extractor)
        heads = bbox_head if isinstance(bbox_head, (list, tuple)) else [bbox_head]
        self.bbox_head = ModuleList([MODELS.build(h) for h in heads])

    def init_mask_head(self, mask_roi_extractor: OptConfigType, mask_head) -> None:
        heads = mask_head if isinstance(mask_head, (list, tuple)) else [mask_head]
        self.mask_head = ModuleList([MODELS.build(h) for h in heads])
        if mask_roi_extractor is not None:
            self.share_roi_extractor = False
            self.mask_roi_extractor = MODELS.build(mask_roi_extractor)
        else:
            self.share_roi_extractor = True
            self.mask_roi_extractor = self.bbox_roi_extractor

    def init_assigner_sampler(self) -> None:
        self.bbox_assigner, self.bbox_sampler = [], []
        if self.train_cfg is None:
            return
        cfgs = self.train_cfg
        if not isinstance(cfgs, (list, tuple)):
            cfgs = [cfgs] * self.loops
            self.train_cfg = cfgs
        assert len(cfgs) >= self.loops, \
            f'train_cfg.rcnn needs one entry per training loop ({self.loops}), got {len(cfgs)}'
        for t, cfg in enumerate(cfgs[:self.loops]):
            self.current_stage = t
            self.bbox_assigner.append(TASK_UTILS.build(cfg.assigner))
            self.bbox_sampler.append(TASK_UTILS.build(cfg.sampler, default_args=dict(context=self)))

    def _pair(self, loop: int) -> int:
        """Pair index of a loop; loops beyond L_t keep the last letter (test with L_e > L_t)."""
        return self.pair_of_loop[min(loop, self.loops - 1)]

    # ---- forward pieces -----------------------------------------------------------------
    def _bbox_forward(self, pair: int, x: Tuple[Tensor], rois: Tensor) -> dict:
        ext = self.bbox_roi_extractor
        bbox_feats = ext(x[:ext.num_inputs], rois)
        cls_score, bbox_pred = self.bbox_head[pair](bbox_feats)
        return dict(cls_score=cls_score, bbox_pred=bbox_pred, bbox_feats=bbox_feats)

    def _mask_features(self, x: Tuple[Tensor], rois: Tensor) -> Tensor:
        ext = self.mask_roi_extractor
        return ext(x[:ext.num_inputs], rois)

    def _mask_iterations(self, mask_feats: Tensor, num_iters: int,
                         all_logits: bool = False) -> Union[Tensor, List[Tensor]]:
        """Internal loop of Eqs. 3-4: ``num_iters`` iterations, iteration i with the mask head of
        loop i's pair; returns the last logits (or the logits of every iteration)."""
        last_feat = None
        logits = []
        for i in range(num_iters):
            head = self.mask_head[self._pair(i)]
            if i < num_iters - 1 and not all_logits:
                last_feat = head(mask_feats, last_feat, return_logits=False)
            else:
                pred, last_feat = head(mask_feats, last_feat)
                logits.append(pred)
        return logits if all_logits else logits[-1]

    def _sample(self, loop: int, results_list: InstanceList, batch_gt_instances,
                batch_gt_instances_ignore, x: Tuple[Tensor]) -> List[SamplingResult]:
        assigner, sampler = self.bbox_assigner[loop], self.bbox_sampler[loop]
        sampling_results = []
        for i, results in enumerate(results_list):
            if 'bboxes' in results:  # rename (rpn / refined) bboxes to priors
                results.priors = results.pop('bboxes')
            assign_result = assigner.assign(results, batch_gt_instances[i],
                                            batch_gt_instances_ignore[i])
            sampling_results.append(sampler.sample(
                assign_result, results, batch_gt_instances[i],
                feats=[lvl[i][None] for lvl in x]))
        return sampling_results

    # ---- training -----------------------------------------------------------------------
    def loss(self, x: Tuple[Tensor], rpn_results_list: InstanceList,
             batch_data_samples: SampleList) -> dict:
        assert len(rpn_results_list) == len(batch_data_samples)
        batch_gt_instances, batch_gt_instances_ignore, batch_img_metas = \
            unpack_gt_instances(batch_data_samples)
        losses = dict()
        results_list = rpn_results_list
        for t in range(self.loops):
            self.current_stage = t
            pair = self._pair(t)
            w = self.loop_loss_weights[t]
            cfg = self.train_cfg[t]
            bbox_head = self.bbox_head[pair]

            # Eq. 1: assign b^t with threshold u^t, sample; Eq. 2: L_bbox^t
            sampling_results = self._sample(t, results_list, batch_gt_instances,
                                            batch_gt_instances_ignore, x)
            rois = bbox2roi([res.priors for res in sampling_results])
            bbox_results = self._bbox_forward(pair, x, rois)
            bbox_results.update(rois=rois)
            bbox_results.update(bbox_head.loss_and_target(
                cls_score=bbox_results['cls_score'], bbox_pred=bbox_results['bbox_pred'],
                rois=rois, sampling_results=sampling_results, rcnn_train_cfg=cfg))
            for name, value in bbox_results['loss_bbox'].items():
                losses[f's{t}.{name}'] = value * w if 'loss' in name else value

            # b^{t+1} = f(x^t, b^t): refined boxes for the mask branch and the next loop
            with torch.no_grad():
                results_list = bbox_head.refine_bboxes(sampling_results, bbox_results,
                                                       batch_img_metas)
            if self.with_mask:
                mask_sampling = self._sample(t, results_list, batch_gt_instances,
                                             batch_gt_instances_ignore, x)
                pos_rois = bbox2roi([res.pos_priors for res in mask_sampling])
                mask_feats = self._mask_features(x, pos_rois)
                mask_preds = self._mask_iterations(mask_feats, t + 1)  # j = t iterations
                mask_out = self.mask_head[pair].loss_and_target(
                    mask_preds=mask_preds, sampling_results=mask_sampling,
                    batch_gt_instances=batch_gt_instances, rcnn_train_cfg=cfg)
                for name, value in mask_out['loss_mask'].items():
                    losses[f's{t}.{name}'] = value * w if 'loss' in name else value
                if self.with_mask_iou and t == self.loops - 1:
                    losses.update(self._mask_iou_loss(mask_feats, mask_preds,
                                                      mask_out['mask_targets'], mask_sampling,
                                                      batch_gt_instances, cfg))
            # the refined boxes (now 'priors') are re-read as 'bboxes' by the next loop
            for res in results_list:
                if 'priors' in res and 'bboxes' not in res:
                    res.bboxes = res.pop('priors')
        return losses

    def _mask_iou_loss(self, mask_feats, mask_preds, mask_targets, sampling_results,
                       batch_gt_instances, cfg) -> dict:
        pos_labels = torch.cat([res.pos_gt_labels for res in sampling_results])
        idx = torch.arange(mask_preds.size(0), device=mask_preds.device)
        pos_mask_pred = mask_preds[idx, pos_labels]
        mask_iou_pred = self.mask_iou_head(mask_feats, pos_mask_pred)
        pos_mask_iou_pred = mask_iou_pred[idx, pos_labels]
        return self.mask_iou_head.loss_and_target(pos_mask_iou_pred, pos_mask_pred,
                                                  mask_targets, sampling_results,
                                                  batch_gt_instances, cfg)

    # ---- inference ----------------------------------------------------------------------
    @property
    def test_loops(self) -> int:
        cfg = self.test_cfg
        loops = cfg.get('loops', None) if cfg is not None else None
        return int(loops) if loops else self.loops

    def _refine_roi(self, x: Tuple[Tensor], rois: Tensor, batch_img_metas: List[dict],
                    num_proposals_per_img: Sequence[int]) -> tuple:
        ms_scores = []
        for t in range(self.test_loops):
            pair = self._pair(t)
            bbox_head = self.bbox_head[pair]
            res = self._bbox_forward(pair, x, rois)
            rois = rois.split(num_proposals_per_img, 0)
            cls_scores = res['cls_score'].split(num_proposals_per_img, 0)
            bbox_preds = res['bbox_pred'].split(num_proposals_per_img, 0)
            ms_scores.append(cls_scores)
            if t < self.test_loops - 1:
                if bbox_head.custom_activation:
                    cls_scores = [bbox_head.loss_cls.get_activation(s) for s in cls_scores]
                refined = []
                for i in range(len(batch_img_metas)):
                    if rois[i].shape[0] > 0:
                        label = cls_scores[i][:, :-1].argmax(dim=1)
                        boxes = get_box_tensor(bbox_head.regress_by_class(
                            rois[i][:, 1:], label, bbox_preds[i], batch_img_metas[i]))
                        refined.append(torch.cat([rois[i][:, [0]], boxes], dim=1))
                rois = torch.cat(refined)
        cls_scores = [sum(s[i] for s in ms_scores) / float(len(ms_scores))
                      for i in range(len(batch_img_metas))]
        return rois, cls_scores, bbox_preds

    def predict_bbox(self, x: Tuple[Tensor], batch_img_metas: List[dict],
                     rpn_results_list: InstanceList, rcnn_test_cfg: ConfigType,
                     rescale: bool = False) -> InstanceList:
        proposals = [res.bboxes for res in rpn_results_list]
        num_proposals_per_img = tuple(len(p) for p in proposals)
        rois = bbox2roi(proposals)
        last_head = self.bbox_head[self._pair(self.test_loops - 1)]
        if rois.shape[0] == 0:
            return empty_instances(batch_img_metas, rois.device, task_type='bbox',
                                   box_type=last_head.predict_box_type,
                                   num_classes=last_head.num_classes,
                                   score_per_cls=rcnn_test_cfg is None)
        rois, cls_scores, bbox_preds = self._refine_roi(x, rois, batch_img_metas,
                                                        num_proposals_per_img)
        return last_head.predict_by_feat(rois=rois, cls_scores=cls_scores,
                                         bbox_preds=bbox_preds,
                                         batch_img_metas=batch_img_metas, rescale=rescale,
                                         rcnn_test_cfg=rcnn_test_cfg)

    def predict_mask(self, x: Tuple[Tensor], batch_img_metas: List[dict],
                     results_list: InstanceList, rescale: bool = False) -> InstanceList:
        bboxes = [res.bboxes for res in results_list]
        mask_rois = bbox2roi(bboxes)
        if mask_rois.shape[0] == 0:
            return empty_instances(batch_img_metas, mask_rois.device, task_type='mask',
                                   instance_results=results_list,
                                   mask_thr_binary=self.test_cfg.mask_thr_binary)
        n_per_img = [len(res) for res in results_list]
        mask_feats = self._mask_features(x, mask_rois)
        all_logits = self._mask_iterations(mask_feats, self.test_loops, all_logits=True)
        kept = all_logits if self.test_mask_merge == 'mean' else all_logits[-1:]
        aug_masks = [[m.sigmoid().detach() for m in logits.split(n_per_img, 0)]
                     for logits in kept]
        merged = [merge_aug_masks([m[i] for m in aug_masks], batch_img_metas[i])
                  for i in range(len(batch_img_metas))]
        last_mask_head = self.mask_head[self._pair(self.test_loops - 1)]
        if self.with_mask_iou:
            labels = torch.cat([res.labels for res in results_list])
            idx = torch.arange(labels.size(0), device=labels.device)
            mask_iou_preds = self.mask_iou_head(mask_feats, all_logits[-1][idx, labels])
            mask_iou_preds = mask_iou_preds[idx, labels].split(n_per_img, 0)
        results_list = last_mask_head.predict_by_feat(
            mask_preds=merged, results_list=results_list, batch_img_metas=batch_img_metas,
            rcnn_test_cfg=self.test_cfg, rescale=rescale, activate_map=True)
        if self.with_mask_iou:
            for res, iou in zip(results_list, mask_iou_preds):
                res.mask_scores = res.scores * iou
        return results_list

    def predict(self, x: Tuple[Tensor], rpn_results_list: InstanceList,
                batch_data_samples: SampleList, rescale: bool = False) -> InstanceList:
        """BaseRoIHead.predict; with the Mask IoU branch every result also carries
        ``mask_scores`` (empty results included), so CocoMetric scores masks with it."""
        results_list = super().predict(x, rpn_results_list, batch_data_samples, rescale=rescale)
        if self.with_mask and self.with_mask_iou:
            for res in results_list:
                if 'mask_scores' not in res:
                    res.mask_scores = res.scores.new_zeros(res.scores.shape[:1])
        return results_list

    def forward(self, x: Tuple[Tensor], rpn_results_list: InstanceList,
                batch_data_samples: SampleList = None) -> tuple:
        """Tensor-mode forward (no post-processing; the FLOPs path): what :meth:`predict` runs.

        The L_e box loops on every proposal (averaged scores, last loop's deltas); then, as in
        inference, the mask branch (L_e internal iterations) and the Mask IoU branch on at most
        ``test_cfg.max_per_img`` RoIs per image (inference runs them on the <= max_per_img
        detections after NMS; here the first refined RoIs stand in for them, as mmdet's
        ``MaskScoringRoIHead.forward`` uses ``rois[:100]``).  The Mask IoU branch reads the last
        iteration's logits of each RoI's top class.  Returns ``(cls_scores, bbox_preds[,
        mask_logits[, mask_iou_preds]])``.
        """
        batch_img_metas = [s.metainfo for s in batch_data_samples]
        proposals = [res.bboxes for res in rpn_results_list]
        num_proposals_per_img = tuple(len(p) for p in proposals)
        rois, cls_scores, bbox_preds = self._refine_roi(x, bbox2roi(proposals), batch_img_metas,
                                                        num_proposals_per_img)
        results = (cls_scores, bbox_preds)
        if self.with_mask:
            k = self.test_cfg.get('max_per_img', 100) if self.test_cfg is not None else 100
            mask_rois = torch.cat([r[:k] for r in rois])
            mask_feats = self._mask_features(x, mask_rois)
            logits = self._mask_iterations(mask_feats, self.test_loops)
            results = results + (logits, )
            if self.with_mask_iou:
                scores = torch.cat([c[:k] for c in cls_scores])
                num_classes = logits.size(1)
                labels = scores[:, :num_classes].argmax(dim=1)
                idx = torch.arange(labels.size(0), device=labels.device)
                results = results + (self.mask_iou_head(mask_feats, logits[idx, labels]), )
        return results
