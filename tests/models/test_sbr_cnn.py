"""Tests of the SBR-CNN modules (bench/models/sbr_cnn.py): R^3-CNN (R3RoIHead, R3MaskHead), FCC heads,
EnhancedNonLocal2d, RectConvBlock, and the recipes' ablation structure.  Real modules on CPU, small inputs,
no pretrained weights; the model configs are the recipes' own rows (recipes/sbr-cnn/*.yaml), shrunk only in
RoI counts / backbone depth for the train/predict tests."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from mmengine.config import ConfigDict

from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules

register_all_modules()
import bench.models  # noqa: E402,F401  (registers the components)
from bench.models.sbr_cnn import (EnhancedNonLocal2d, FCCBBoxHead,  # noqa: E402
                                  FCCMaskIoUHead, R3MaskHead, R3RoIHead, RectConvBlock)
from bench.plan import _strip_pretrained  # noqa: E402
from bench.recipes import load_table  # noqa: E402
from bench.resolve import row_config  # noqa: E402
from tests.models.samples import make_sample  # noqa: E402

RECIPES = Path(__file__).resolve().parents[2] / 'recipes' / 'sbr-cnn'


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def row_model_cfg(table: str, row_id: str) -> dict:
    t = load_table(RECIPES / f'{table}.yaml')
    row = next(r for r in t.rows if r.id == row_id)
    cfg = row_config(row.model).to_dict()['model']
    _strip_pretrained(cfg)
    return cfg


def published_M(table: str, row_id: str):
    t = load_table(RECIPES / f'{table}.yaml')
    return next(r for r in t.rows if r.id == row_id).published.get('params_M')


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------
def test_enhanced_nonlocal_kernels_params_and_identity_at_init():
    nl = EnhancedNonLocal2d(256, reduction=2, use_scale=True, kernel_size=7)
    for name in ('g', 'theta', 'phi', 'conv_out'):
        assert getattr(nl, name).conv.kernel_size == (7, 7)
    # Table 6 notes: 7x7 non-local on 256 ch = 6,423,168, on 64 ch = 401,568
    assert n_params(nl) == 6_423_168
    assert n_params(EnhancedNonLocal2d(64, kernel_size=7)) == 401_568
    x = torch.randn(3, 256, 7, 7)
    # conv_out is zero-initialised (mmcv NonLocal2d): the block starts as the identity
    assert torch.equal(nl(x), x)
    torch.nn.init.normal_(nl.conv_out.conv.weight, std=0.01)
    y = nl(torch.randn(2, 256, 14, 14))
    assert y.shape == (2, 256, 14, 14) and torch.isfinite(y).all()


def test_rect_conv_block_keeps_roi_size():
    # the recipes' "Conv 7x3 -> 3x7" GRoIE module (table-8 row 5): the authors' paddings (1, 3)
    cfg = row_model_cfg('table-8', 'conv7x3-3x7')['roi_head']['bbox_roi_extractor']['pre_cfg']
    assert cfg['paddings'] == [1, 3]
    blk = MODELS.build(dict(cfg))
    assert isinstance(blk, RectConvBlock)
    assert [c.conv.kernel_size for c in blk.convs] == [(7, 3), (3, 7)]
    assert [c.conv.padding for c in blk.convs] == [(1, 1), (3, 3)]
    assert n_params(blk) == 2 * (256 * 7 * 3 * 256 + 256)
    x = torch.randn(2, 256, 7, 7)
    assert blk.convs[0](x).shape == (2, 256, 3, 7)  # 7x7 -> 3x7 -> 7x7
    assert blk(x).shape == (2, 256, 7, 7)
    assert blk(torch.randn(2, 256, 14, 14)).shape == (2, 256, 14, 14)
    # Sec. 3.2's text reading (7x3 pad 3, 3x7 pad 1): 7x7 -> 7x11 -> 7x7, same count
    txt = RectConvBlock(256, 256, paddings=(3, 1))
    assert txt.convs[0](x).shape == (2, 256, 7, 11) and txt(x).shape == (2, 256, 7, 7)
    assert n_params(txt) == n_params(blk)


def test_groie_rows_use_the_authors_sampling_ratio():
    """Every GRoIE extractor samples RoIAlign with sampling_ratio 2 (authors' configs/groie/* and
    r3_cnn-exp_8-*); the single-level baselines keep their base config's 0."""
    seen = 0
    for table in ('table-8', 'table-9', 'table-10', 'table-11'):
        for row in load_table(RECIPES / f'{table}.yaml').rows:
            roi = row_model_cfg(table, row.id).get('roi_head', {})
            for key in ('bbox_roi_extractor', 'mask_roi_extractor'):
                ext = roi.get(key)
                if not ext:
                    continue
                want = 2 if ext['type'] == 'GenericRoIExtractor' else 0
                assert ext['roi_layer']['sampling_ratio'] == want, (table, row.id, key)
                seen += ext['type'] == 'GenericRoIExtractor'
    assert seen == 6 + 6 + 1 + 2 * 3  # tables 8, 9 (6 GRoIE rows each), 10 (1), 11 (3 x bbox + mask)


BBOX_KW = dict(in_channels=256, roi_feat_size=7, num_classes=80, reg_class_agnostic=True,
               bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.] * 4,
                               target_stds=[0.1, 0.1, 0.2, 0.2]))


@pytest.mark.parametrize('l2c, nlb, nla, expected', [
    ('7x7', False, False, 2_273_877),          # Sec. 3.2 version (b): "2.2M"
    ('7x3->3x7', False, False, 2_847_701),     # version (c): "2.8M"
    ('7x7', True, False, 8_697_045),           # version (d): "8.6M"
    ('7x3->3x7', True, False, 9_270_869),      # version (e): "9.2M"
    ('7x7', True, True, 9_098_613),            # Table 6 row 7 head
])
def test_fcc_bbox_head_params_and_shapes(l2c, nlb, nla, expected):
    head = FCCBBoxHead(l2c=l2c, l2c_channels=[128, 64], nl_before=nlb, nl_after=nla, **BBOX_KW)
    assert n_params(head) == expected
    cls, reg = head(torch.randn(5, 256, 7, 7))
    assert cls.shape == (5, 81) and reg.shape == (5, 4)
    # the FC head it replaces (Shared2FCBBoxHead, 13,982,805) is Sec. 3.2's "14M"
    fc = MODELS.build(dict(type='Shared2FCBBoxHead', fc_out_channels=1024, **BBOX_KW))
    assert n_params(fc) == 13_982_805


def test_authors_rect_l2c_head_of_table6_row6():
    """Table 6 row 6 / Table 7 rows 2-7 / SBR-CNN: the authors' Shared2FCC2BBoxHead (configs/r3_cnn/
    r3_cnn-exp_5-row_3-fcc2_8.py: post_reduce=False, (7,3) pad 1, (3,7) pad 3, NL_b) as the recipe
    builds it: the 7x3 conv halves the channels, the 3x7 conv keeps them; 7,980,437 parameters."""
    cfg = row_model_cfg('table-6', 'l2c-rect-nlb')['roi_head']['bbox_head'][0]
    assert cfg['post_reduce'] is False and cfg['l2c'] == '7x3->3x7' and cfg['nl_before'] is True
    head = MODELS.build(ConfigDict(cfg))
    convs = [m.conv for m in head.l2c]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (256, 128, (7, 3), (1, 1)), (128, 128, (3, 7), (3, 3)),
        (128, 64, (7, 3), (1, 1)), (64, 64, (3, 7), (3, 3))]
    assert n_params(head.l2c) == 1_290_624  # vs Table 1's layout 2,581,056
    assert n_params(head) == 7_980_437
    x = torch.randn(3, 256, 7, 7)
    assert convs[0](x).shape == (3, 128, 3, 7)  # 7x7 -> 3x7 -> 7x7
    cls, reg = head(x)
    assert cls.shape == (3, 81) and reg.shape == (3, 4)
    # Table 1's layout (rows 4, 10, 12 of Table 6) is the default
    t1 = FCCBBoxHead(l2c='7x3->3x7', l2c_channels=[128, 64], nl_before=True, **BBOX_KW)
    assert [m.conv.out_channels for m in t1.l2c] == [256, 128, 128, 64] and n_params(t1) == 9_270_869


@pytest.mark.parametrize('nlb, nla', [(True, False), (True, True)])
def test_fcc_relu_after_nonlocal(nlb, nla):
    """The authors' FCC heads apply relu(layer(x)) to every layer of their L2C list, the non-local
    blocks included: what enters L2C after NL_b (and the flattened map after NL_a) is >= 0."""
    torch.manual_seed(0)
    head = FCCBBoxHead(l2c='7x7', l2c_channels=[128, 64], nl_before=nlb, nl_after=nla, **BBOX_KW)
    for nl in (head.nl_before, head.nl_after):
        if nl is not None:  # leave the identity init so the block output keeps x's negative values
            torch.nn.init.normal_(nl.conv_out.conv.weight, std=0.01)
    seen = {}
    head.l2c.register_forward_hook(lambda m, i, o: seen.update(l2c_in=i[0]))
    head.fc_cls.register_forward_hook(lambda m, i, o: seen.update(cls_in=i[0]))
    head(torch.randn(4, 256, 7, 7))
    assert seen['l2c_in'].min() >= 0 and (seen['l2c_in'] > 0).any()
    assert seen['cls_in'].min() >= 0
    head.relu_after_nl = False  # without it the NL_b output keeps the input's negative values
    head(torch.randn(4, 256, 7, 7))
    assert seen['l2c_in'].min() < 0


@pytest.mark.parametrize('l2c, nlb, nla, expected', [
    ('7x7', False, False, 4_620_816),          # Sec. 3.2: "4.6M"
    ('7x3->3x7', False, False, 5_194_640),     # "5.1M"
    ('7x7', True, False, 11_043_984),          # "10.6M" printed (see sbr_cnn.md)
])
def test_fcc_mask_iou_head_params_and_shapes(l2c, nlb, nla, expected):
    head = FCCMaskIoUHead(num_convs=4, roi_feat_size=14, in_channels=256, conv_out_channels=256,
                          num_classes=80, l2c=l2c, l2c_channels=[128, 64], nl_before=nlb,
                          nl_after=nla)
    assert n_params(head) == expected
    out = head(torch.randn(3, 256, 14, 14), torch.randn(3, 28, 28))
    assert out.shape == (3, 80)
    # the MS R-CNN branch it rebuilds (Sec. 3.2's "16.3M")
    ms = MODELS.build(dict(type='MaskIoUHead', num_convs=4, num_fcs=2, roi_feat_size=14,
                           in_channels=256, conv_out_channels=256, fc_out_channels=1024,
                           num_classes=80))
    assert n_params(ms) == 16_340_304


def test_r3_mask_head_first_iteration_uses_c1_of_zeros():
    head = R3MaskHead(with_conv_res=True, num_convs=4, in_channels=256, conv_out_channels=256,
                      num_classes=80)
    torch.nn.init.constant_(head.conv_res.conv.bias, 0.3)
    x = torch.randn(2, 256, 14, 14)
    logits, feat = head(x)  # Eq. 3, first iteration: M1(x + C_1(0))
    ref_logits, ref_feat = head(x, torch.zeros(2, 256, 14, 14))
    assert torch.allclose(logits, ref_logits) and torch.allclose(feat, ref_feat)
    assert logits.shape == (2, 80, 28, 28) and feat.shape == (2, 256, 14, 14)
    head.zero_res_first = False  # HTC's behaviour: no C_1 at the first iteration
    assert not torch.allclose(head(x)[0], logits)


# ------------------------------------------------------------------------------------------------
# Parameter counts of the paper's configurations
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def base_params() -> int:
    """Trainable parameters outside the RoI head (ResNet-50 with stem + stage 1 frozen, FPN, RPN),
    measured once on the full table-2 r3-naive model, which must be 43,912,884 (= 43,912 K)."""
    model = MODELS.build(ConfigDict(row_model_cfg('table-2', 'r3-naive')))
    model.train()
    total = n_params(model)
    assert total == 43_912_884
    assert isinstance(model.roi_head, R3RoIHead)
    return total - n_params(model.roi_head)


# (table, row, measured with this implementation). Published values are read from the recipe.
PARAM_ROWS = [
    ('table-2', 'r3-naive', 43_912_884), ('table-2', 'r3-deeper', 60_604_761),
    ('table-6', 'l2c-7x7', 32_203_956), ('table-6', 'l2c-rect', 32_777_780),
    ('table-6', 'l2c-7x7-nlb', 38_627_124), ('table-6', 'l2c-rect-nlb', 37_910_516),
    ('table-6', 'l2c-7x7-nlb-nla', 39_028_692), ('table-6', 'h2-r3', 60_604_761),
    ('table-6', 'h2-l2c-7x7', 37_186_905), ('table-6', 'h2-l2c-rect', 38_334_553),
    ('table-6', 'h2-l2c-7x7-nlb', 50_033_241), ('table-6', 'h2-l2c-rect-nlb', 51_180_889),
    ('table-7', 'r3-fcc', 37_910_516),
    ('table-7', 'miou', 54_250_820), ('table-7', 'miou-l2c-7x7', 42_531_332),
    ('table-7', 'miou-l2c-rect', 43_105_156), ('table-7', 'miou-l2c-7x7-nlb', 48_954_500),
    ('table-7', 'miou-l2c-7x7-nlb-nla', 49_356_068), ('table-7', 'h2-miou', 66_373_545),
    ('table-7', 'h2-miou-l2c-7x7', 54_654_057), ('table-7', 'h2-miou-l2c-7x7-nlb', 61_077_225),
    ('table-7', 'h2-miou-l2c-7x7-nlb-nla', 61_478_793), ('table-11', 'sbr-cnn', 61_800_708),
]
# Rows whose printed count disagrees with the configuration the text and the authors' configs
# describe (recipe notes, sbr_cnn.md): table-7 rows 3, 4, 6, 7 print counts built on the 7x7 + NL_b
# head (1.2-1.6 % above); row 5's authors' config has Table 1's rectangular detection head (-2.7 %).
DOUBTFUL = {('table-7', 'miou'), ('table-7', 'miou-l2c-7x7'), ('table-7', 'miou-l2c-rect'),
            ('table-7', 'miou-l2c-7x7-nlb'), ('table-7', 'miou-l2c-7x7-nlb-nla')}
TRUNCATED_TABLES = {'table-6', 'table-7'}  # printed in M with one decimal, truncated


@pytest.mark.parametrize('table, row_id, measured', PARAM_ROWS)
def test_paper_config_params(base_params, table, row_id, measured):
    cfg = row_model_cfg(table, row_id)
    roi = cfg['roi_head']
    roi.update(train_cfg=cfg['train_cfg']['rcnn'], test_cfg=cfg['test_cfg']['rcnn'])
    head = MODELS.build(ConfigDict(roi))
    total = base_params + n_params(head)
    assert total == measured
    pub = published_M(table, row_id)
    if pub is None:
        return
    if (table, row_id) in DOUBTFUL:
        assert 0.01 < abs(total / 1e6 - pub) / pub < 0.03  # the documented 1.2-2.7 % gaps
    elif table in TRUNCATED_TABLES:
        assert int(total / 1e5) / 10 == pytest.approx(pub)  # e.g. 32,777,780 -> 32.7
    else:
        assert int(total / 1e3) / 1e3 == pytest.approx(pub)  # Table 2 prints whole K


# ------------------------------------------------------------------------------------------------
# Train / predict with the real R^3-CNN head (tiny backbone and RoI counts to stay fast)
# ------------------------------------------------------------------------------------------------
def tiny(cfg: dict, rois: int = 16) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg['backbone'] = dict(type='ResNet', depth=18, num_stages=4, out_indices=(0, 1, 2, 3),
                           frozen_stages=1, norm_cfg=dict(type='BN', requires_grad=True),
                           norm_eval=True, style='pytorch', init_cfg=None)
    cfg['neck']['in_channels'] = [64, 128, 256, 512]
    cfg['train_cfg']['rpn_proposal'].update(nms_pre=100, max_per_img=rois)
    for c in cfg['train_cfg']['rcnn']:
        c['sampler']['num'] = rois
    cfg['test_cfg']['rpn'].update(nms_pre=100, max_per_img=rois // 2)
    cfg['test_cfg']['rcnn']['max_per_img'] = 10
    return cfg


def batch(n: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    data = dict(
        inputs=[torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8),
                torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8)],
        data_samples=[make_sample((64, 64), [(4, 4, 40, 36), (30, 20, 60, 62)], [0, 1]),
                      make_sample((64, 64), [(10, 8, 50, 50)], [2], ori_hw=(96, 96))])
    return {k: v[:n] for k, v in data.items()}


def count_calls(module: torch.nn.Module) -> list:
    calls = []
    module.register_forward_hook(lambda m, i, o: calls.append(1))
    return calls


@pytest.fixture(scope='module')
def deeper_model():
    """table-2 'R^3-CNN (deeper)': H = 2 pairs, alternation 'aab', L_t = L_e = 3."""
    torch.manual_seed(0)
    return MODELS.build(ConfigDict(tiny(row_model_cfg('table-2', 'r3-deeper'))))


def test_r3_train_loops_alternation_and_backprop(deeper_model):
    model = deeper_model
    model.train()
    head = model.roi_head
    assert head.pair_of_loop == [0, 0, 1] and head.loop_loss_weights == [1, 0.75, 0.5]
    assert [c.assigner.pos_iou_thr for c in head.train_cfg] == [0.5, 0.6, 0.7]
    bbox_calls = [count_calls(h) for h in head.bbox_head]
    mask_calls = [count_calls(h) for h in head.mask_head]
    data = model.data_preprocessor(batch(), True)
    losses = model(**data, mode='loss')
    for t in range(3):
        for k in ('loss_cls', 'loss_bbox', 'loss_mask'):
            assert torch.isfinite(losses[f's{t}.{k}'])
    # B_a trains loops 1-2, B_b loop 3; mask internal loop j = t: loop 1 [M_a], loop 2 [M_a, M_a],
    # loop 3 [M_a, M_a, M_b] (iteration i uses loop i's pair)
    assert (len(bbox_calls[0]), len(bbox_calls[1])) == (2, 1)
    assert (len(mask_calls[0]), len(mask_calls[1])) == (5, 1)
    loss, _ = model.parse_losses(losses)
    loss.backward()
    for pair in range(2):
        assert head.bbox_head[pair].fc_cls.weight.grad.abs().sum() > 0
        assert head.mask_head[pair].conv_logits.weight.grad.abs().sum() > 0
    assert head.mask_head[0].conv_res.conv.weight.grad.abs().sum() > 0  # C_1 is trained


def test_r3_predict_more_eval_loops_than_train(deeper_model):
    model = deeper_model
    model.eval()
    head = model.roi_head
    head.test_cfg['loops'] = 5  # Table 4: L_e > L_t keeps the last pair
    bbox_calls = [count_calls(h) for h in head.bbox_head]
    try:
        with torch.no_grad():
            out = model(**model.data_preprocessor(batch(), False), mode='predict')
    finally:
        head.test_cfg['loops'] = 3
    assert (len(bbox_calls[0]), len(bbox_calls[1])) == (2, 3)
    assert len(out) == 2 and all(isinstance(o, DetDataSample) for o in out)
    p = out[1].pred_instances
    assert p.bboxes.shape[1] == 4 and len(p) <= 10
    assert p.masks.shape[1:] == (96, 96)  # rescaled to ori_shape
    assert ((p.scores >= 0) & (p.scores <= 1)).all()
    # tensor mode (used for FLOPs): averaged scores, last deltas, mask logits of the refined RoIs
    with torch.no_grad():
        (cls_scores, bbox_preds, masks), = model(**model.data_preprocessor(batch(), False),
                                                 mode='tensor')  # TwoStageDetector wraps it
    assert len(cls_scores) == 2 and cls_scores[0].shape[1] == 81
    assert masks.shape[1:] == (80, 28, 28) and masks.shape[0] == sum(len(c) for c in cls_scores)


def test_sbr_cnn_full_head_train_and_predict():
    """table-11 SBR-CNN: GRoIE (conv 7x7 pre, EnhancedNonLocal2d post) for boxes and masks, FCC
    7x3->3x7 + NL_b detection head, R3MaskHead, FCC 7x7 Mask IoU branch."""
    torch.manual_seed(0)
    # one image and few RoIs: GRoIE's 7x7 256->256 pre-convs cost ~2.5 GFLOP per 14x14 mask RoI
    cfg = tiny(row_model_cfg('table-11', 'sbr-cnn'), rois=8)
    cfg['test_cfg']['rcnn']['max_per_img'] = 3
    model = MODELS.build(ConfigDict(cfg))
    head = model.roi_head
    assert isinstance(head.bbox_head[0], FCCBBoxHead) and head.bbox_head[0].nl_before is not None
    assert isinstance(head.mask_iou_head, FCCMaskIoUHead)
    assert isinstance(head.bbox_roi_extractor.post_module, EnhancedNonLocal2d)
    model.train()
    losses = model(**model.data_preprocessor(batch(1), True), mode='loss')
    assert 'loss_mask_iou' in losses and torch.isfinite(losses['loss_mask_iou'])
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    assert head.bbox_head[0].l2c[0].conv.weight.grad.abs().sum() > 0
    assert head.bbox_roi_extractor.pre_module.conv.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(**model.data_preprocessor(batch(1), False), mode='predict')
    p = out[0].pred_instances
    assert len(p) <= 3 and p.masks.shape[1:] == (64, 64) and len(p) == len(p.scores) == len(p.labels)


# ------------------------------------------------------------------------------------------------
# Mask IoU branch: masks-only rescoring (the authors' mmdet 2.x get_mask_scores) and tensor mode
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def miou_model():
    """table-7 row 4 'R^3-CNN + M_IoU, L2C 7x7' (the SBR-CNN heads without GRoIE), tiny."""
    torch.manual_seed(0)
    cfg = tiny(row_model_cfg('table-7', 'miou-l2c-7x7'), rois=8)
    cfg['test_cfg']['rcnn'].update(max_per_img=5, score_thr=0.0)
    model = MODELS.build(ConfigDict(cfg))
    head = model.roi_head
    # an untrained IoU branch predicts ~0 for every mask: give it a spread of values
    torch.nn.init.normal_(head.mask_iou_head.fc_mask_iou.weight, std=0.05)
    torch.nn.init.constant_(head.mask_iou_head.fc_mask_iou.bias, 0.5)
    model.eval()
    return model


def test_mask_iou_rescores_masks_only(miou_model, tmp_path):
    """Box scores stay the classification scores; the Mask IoU prediction rescales the mask
    scores only (pred_instances.mask_scores), which mmdet's CocoMetric uses for segm alone."""
    from mmdet.evaluation import CocoMetric
    model, head = miou_model, miou_model.roi_head
    iou_out = []
    hook = head.mask_iou_head.register_forward_hook(lambda m, i, o: iou_out.append(o))
    with torch.no_grad():
        out = model(**model.data_preprocessor(batch(1), False), mode='predict')
    hook.remove()
    p = out[0].pred_instances
    assert len(p) > 0 and len(iou_out) == 1
    iou = iou_out[0][torch.arange(len(p)), p.labels]
    assert torch.allclose(p.mask_scores, p.scores * iou)
    assert not torch.allclose(p.mask_scores, p.scores)
    # the box scores are those of the same model without the branch
    branch = head.mask_iou_head
    head.mask_iou_head = None
    try:
        with torch.no_grad():
            ref = model(**model.data_preprocessor(batch(1), False), mode='predict')[0].pred_instances
    finally:
        head.mask_iou_head = branch
    assert 'mask_scores' not in ref
    assert torch.equal(ref.scores, p.scores) and torch.equal(ref.bboxes, p.bboxes)
    # mmdet's CocoMetric: bbox results carry `scores`, segm results `mask_scores`
    metric = CocoMetric(metric=['bbox', 'segm'])
    metric.cat_ids = list(range(80))
    sample = out[0].to_dict()
    sample.update(img_id=0, instances=[])
    metric.process({}, [sample])
    files = metric.results2json([r for _, r in metric.results], str(tmp_path / 'r'))
    boxes = json.loads(Path(files['bbox']).read_text())
    segms = json.loads(Path(files['segm']).read_text())
    assert [b['score'] for b in boxes] == pytest.approx(p.scores.tolist())
    assert [s['score'] for s in segms] == pytest.approx(p.mask_scores.tolist())


def test_tensor_mode_runs_the_mask_iou_branch(miou_model):
    """FLOPs path: the tensor-mode forward runs what predict runs, the Mask IoU branch included,
    with masks on at most max_per_img RoIs per image (inference runs them on the detections)."""
    model, head = miou_model, miou_model.roi_head
    iou_calls, mask_calls = count_calls(head.mask_iou_head), count_calls(head.mask_head[0])
    with torch.no_grad():
        (cls_scores, bbox_preds, masks, ious), = model(
            **model.data_preprocessor(batch(), False), mode='tensor')
    assert len(iou_calls) == 1 and len(mask_calls) == head.test_loops  # L_e internal iterations
    k = head.test_cfg['max_per_img']
    n_masks = sum(min(len(c), k) for c in cls_scores)
    assert masks.shape == (n_masks, 80, 28, 28) and ious.shape == (n_masks, 80)


@pytest.mark.parametrize('row_id, pair_b_stds', [
    ('h2-r3', [0.05, 0.05, 0.1, 0.1]),            # authors' r3_cnn-exp_5-row_6.py (from exp_1-row_5)
    ('h2-l2c-7x7', [0.05, 0.05, 0.1, 0.1]),       # exp_5-row_7.py
    ('h2-l2c-rect', [0.1, 0.1, 0.2, 0.2]),        # exp_5-row_6-fcc2_2.py: both heads 0.1 / 0.2
    ('h2-l2c-7x7-nlb', [0.05, 0.05, 0.1, 0.1]),   # exp_5-row_8.py
    ('h2-l2c-rect-nlb', [0.05, 0.05, 0.1, 0.1]),  # exp_5-row_9.py
])
def test_table6_h2_rows_use_the_authors_box_coder_stds(row_id, pair_b_stds):
    """Table 6 rows 8-12 (H = 2): pair a's coder stds are [0.1, 0.1, 0.2, 0.2], pair b's those of the authors'
    config for the row; row 10 (rect L2C) is the one whose config gives pair b pair a's stds."""
    heads = row_model_cfg('table-6', row_id)['roi_head']['bbox_head']
    assert [h['bbox_coder']['target_stds'] for h in heads] == [[0.1, 0.1, 0.2, 0.2], pair_b_stds]


# ------------------------------------------------------------------------------------------------
# Ablations: each row differs from its `baseline:` row in the labelled component only
# ------------------------------------------------------------------------------------------------
def _flat(node, prefix: str = '') -> dict:
    out = {}
    if isinstance(node, dict):
        for k, v in node.items():
            out.update(_flat(v, f'{prefix}.{k}' if prefix else str(k)))
    elif isinstance(node, (list, tuple)):
        out[prefix + '#len'] = len(node)
        for i, v in enumerate(node):
            out.update(_flat(v, f'{prefix}[{i}]'))
    else:
        out[prefix] = node
    return out


def _under(path: str, prefix: str) -> bool:
    """Whether a flattened config path lies under ``prefix`` ('[*]' = any list index)."""
    rx = re.escape(prefix).replace(re.escape('[*]'), r'\[\d+\]')
    return re.fullmatch(rx + r'([.\[#].*)?', path) is not None


# the R^3-CNN head swap on HTC's own config: RoI head and its per-loop train/test cfg
R3_HEAD = ['model.roi_head', 'model.train_cfg.rcnn', 'model.test_cfg.rcnn']
# a different detector on the same backbone and neck (Mask R-CNN <-> HTC / R^3-CNN configs)
DETECTOR = ['model.type', 'model.data_preprocessor', 'model.rpn_head', 'model.roi_head',
            'model.train_cfg', 'model.test_cfg']
LOOPS = ['model.roi_head.loops', 'model.roi_head.alternation', 'model.roi_head.loop_loss_weights',
         'model.train_cfg.rcnn', 'model.test_cfg.rcnn.loops']
PAIRS = ['model.roi_head.bbox_head', 'model.roi_head.mask_head', 'model.roi_head.alternation']
M_IOU = ['model.roi_head.mask_iou_head', 'model.train_cfg.rcnn[*].mask_thr_binary']
FACTOR_PATHS = {  # (table or '*', factor key) -> config paths the factor may change
    ('*', 'l_t'): LOOPS, ('*', 'h'): PAIRS, ('*', 'l_e'): ['model.test_cfg.rcnn.loops'],
    ('*', 'alt'): ['model.roi_head.alternation'], ('*', 'm_iou'): M_IOU,
    ('table-6', 'l2c'): ['model.roi_head.bbox_head'], ('table-6', 'nl_b'): ['model.roi_head.bbox_head'],
    ('table-6', 'nl_a'): ['model.roi_head.bbox_head'],
    # Table 7's L2C / NL flags describe the Mask IoU branch (Sec. 4.3)
    ('table-7', 'l2c'): ['model.roi_head.mask_iou_head'],
    ('table-7', 'nl_b'): ['model.roi_head.mask_iou_head'],
    ('table-7', 'nl_a'): ['model.roi_head.mask_iou_head'],
    ('table-8', 'method'): ['model.roi_head.bbox_roi_extractor'],
    ('table-9', 'method'): ['model.roi_head.bbox_roi_extractor'],
    ('table-10', 'method'): ['model.roi_head.bbox_roi_extractor'],
}
TABLE_11 = {  # Table 11's single 'method' column: what each row adds to its baseline (Sec. 4.7)
    'sbr-cnn': R3_HEAD, 'sbr-cnn-gcnet': R3_HEAD, 'sbr-cnn-dcn': R3_HEAD,
    'gcnet': ['model.backbone'], 'dcn': ['model.backbone'],
    'htc-gcnet': DETECTOR, 'htc-dcn': DETECTOR,
}
TRAIN_ONLY = {('table-2', 'mask-3x'): ['train.epochs', 'train.lr_steps']}  # "Mask (3x)": schedule


def _allowed(table: str, row, base) -> list:
    if table == 'table-11':
        return TABLE_11[row.id]
    if (table, row.id) in TRAIN_ONLY:
        return TRAIN_ONLY[(table, row.id)]
    paths = []
    for key in sorted(set(row.factors) | set(base.factors)):
        if row.factors.get(key) == base.factors.get(key):
            continue
        if key == 'model':  # R^3-CNN vs HTC on HTC's config, or vs Mask R-CNN's config
            paths += R3_HEAD if row.model.config == base.model.config else DETECTOR
        else:
            paths += FACTOR_PATHS.get((table, key)) or FACTOR_PATHS[('*', key)]
    return paths


ABLATIONS = [(f'table-{n}', r.id) for n in range(2, 12)
             for r in load_table(RECIPES / f'table-{n}.yaml').rows if r.baseline]


def test_every_ablation_table_is_covered():
    tables = {t for t, _ in ABLATIONS}
    assert tables == {f'table-{n}' for n in range(2, 12)} and len(ABLATIONS) == 61


def _resolved(r) -> dict:
    """A row's resolved config (model config + recipe train spec), flattened."""
    d = _flat(row_config(r.model).to_dict())
    d.update(_flat({'train': r.train.model_dump()}))
    return d


def _rows(table: str, row_id: str):
    rows = {r.id: r for r in load_table(RECIPES / f'{table}.yaml').rows}
    return rows[row_id], rows[rows[row_id].baseline]


def _outside(table: str, row, base, a: dict, b: dict) -> list:
    """Flattened paths where ``a`` (row) and ``b`` (baseline) differ outside the row's labelled component."""
    diff = sorted(k for k in set(a) | set(b) if a.get(k, '<absent>') != b.get(k, '<absent>'))
    assert diff, f'{table}/{row.id} is identical to its baseline {row.baseline}'
    allowed = _allowed(table, row, base)
    return [k for k in diff if not any(_under(k, p) for p in allowed)]


@pytest.mark.parametrize('table, row_id', ABLATIONS)
def test_ablation_changes_only_the_labelled_component(table, row_id):
    row, base = _rows(table, row_id)
    outside = _outside(table, row, base, _resolved(row), _resolved(base))
    assert not outside, (f'{table}/{row_id} vs {row.baseline}: changes outside '
                         f'{_allowed(table, row, base)}: {outside[:8]}')


# Rows whose baseline is another detector (R3_HEAD: HTC -> R^3-CNN on HTC's config; DETECTOR: Mask R-CNN's
# config -> HTC's) may change the whole RoI head and its per-stage cfgs. What must still be equal (issue 25):
# backbone, neck, schedule and data, present in both; the RPN and data preprocessor are the baseline's
# (R3_HEAD: the same mmdet config) or the named mmdet config's own, untouched by the recipe (DETECTOR: HTC's
# RPN is mmdet's HTC one, not Mask R-CNN's); the RoI extractors stay HTC's, except in Table 11's SBR-CNN rows,
# whose GRoIE replaces both (Sec. 4.7: 'with our GRoIE ... in place of both').
PINNED = ['model.backbone', 'model.neck', 'train', 'optim_wrapper', 'param_scheduler', 'train_cfg', 'val_cfg',
          'test_cfg', 'auto_scale_lr', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator',
          'test_evaluator']
RPN = ['model.data_preprocessor', 'model.rpn_head', 'model.train_cfg.rpn', 'model.train_cfg.rpn_proposal',
       'model.test_cfg.rpn']
EXTRACTORS = ['model.roi_head.bbox_roi_extractor', 'model.roi_head.mask_roi_extractor']
GROIE_ROWS = {('table-11', 'sbr-cnn'), ('table-11', 'sbr-cnn-gcnet'), ('table-11', 'sbr-cnn-dcn')}
DETECTOR_SWAPS = [(t, r) for t, r in ABLATIONS
                  if any(p in _allowed(t, *_rows(t, r)) for p in ('model.roi_head', 'model.type'))]


def _part(d: dict, prefix: str) -> dict:
    return {k: v for k, v in d.items() if _under(k, prefix)}


def _pinned_violations(table: str, row, base, a: dict, b: dict) -> list:
    """What a detector-swap row changes that must stay equal (see PINNED); [] when nothing."""
    out = []
    for p in PINNED:
        if not _part(a, p):
            out.append(f'{p}: missing')
        elif _part(a, p) != _part(b, p):
            out.append(f'{p}: differs from the baseline')
    if 'model.type' in _allowed(table, row, base):  # another mmdet config: its own RPN, untouched
        from bench.recipes import ModelSpec
        own = _flat(row_config(ModelSpec(config=row.model.config)).to_dict())
        out += [f'{p}: not {row.model.config}\'s own' for p in RPN if _part(a, p) != _part(own, p)]
    else:
        out += [f'{p}: differs from the baseline' for p in RPN if _part(a, p) != _part(b, p)]
    if (table, row.id) not in GROIE_ROWS:
        out += [f'{p}: differs from the baseline' for p in EXTRACTORS if _part(a, p) != _part(b, p)]
    return out


def test_detector_swap_rows_are_listed():
    """The rows the pinned-parts guard covers: every row whose labelled change is the detector or its whole
    RoI head (Tables 2-7 and 11)."""
    assert len(DETECTOR_SWAPS) == 21
    assert {t for t, _ in DETECTOR_SWAPS} == {'table-2', 'table-3', 'table-4', 'table-5', 'table-6', 'table-7',
                                              'table-11'}


@pytest.mark.parametrize('table, row_id', DETECTOR_SWAPS)
def test_detector_swap_rows_keep_backbone_neck_schedule_data_and_rpn(table, row_id):
    row, base = _rows(table, row_id)
    assert not _pinned_violations(table, row, base, _resolved(row), _resolved(base))


@pytest.mark.parametrize('table, row_id, path, value', [
    ('table-2', 'r3-naive', 'model.roi_head.bbox_roi_extractor.roi_layer.sampling_ratio', 2),  # R3_HEAD
    ('table-6', 'h2-r3', 'model.roi_head.mask_roi_extractor.roi_layer.output_size', 7),
    ('table-3', 'r3-lt1', 'model.test_cfg.rpn.nms.iou_threshold', 0.5),             # DETECTOR: RPN
    ('table-3', 'r3-lt1', 'model.rpn_head.loss_bbox.loss_weight', 2.0),
    ('table-3', 'r3-lt1', 'model.data_preprocessor.pad_size_divisor', 64),
])
def test_pinned_parts_guard_catches_what_the_component_guard_lets_through(table, row_id, path, value):
    """A tampered detector-swap row: the labelled-component guard allows the change (it lies under the whole
    RoI head / train_cfg / test_cfg / rpn_head the swap may change), the pinned-parts guard does not."""
    row, base = _rows(table, row_id)
    a, b = _resolved(row), _resolved(base)
    assert path in a
    a = dict(a, **{path: value})
    assert not _outside(table, row, base, a, b)  # the old guard alone: passes
    assert _pinned_violations(table, row, base, a, b)
