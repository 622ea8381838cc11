"""Tests of SparseInst (bench/models/sparseinst.py) and the AMF-SparseInst modules
(bench/models/amf_sparseinst.py): real modules on CPU, small synthetic inputs, no pretrained weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules

register_all_modules()
import bench.models  # noqa: E402,F401  (registers the components)
from bench.models.amf_sparseinst import FEM, AMFEncoder, LiteBiFPN, SimAM, SimAMASPP  # noqa: E402
from bench.models.sparseinst import (GroupIAMDecoder, InstanceContextEncoder,  # noqa: E402
                                     SparseInstCriterion, dice_score)
from bench.profile import build as build_row  # noqa: E402
from bench.recipes import load_table  # noqa: E402
from tests.models.samples import make_sample  # noqa: E402

RECIPES = Path(__file__).resolve().parents[2] / 'recipes' / 'amf-sparseinst'

# Trainable parameters of the recipes' models (model.train(), BN frozen, nothing else frozen), measured with
# this implementation.  The paper prints no parameter counts (only GFLOPs, Tables 7-8); see amf_sparseinst.md.
MEASURED_PARAMS = {
    ('table-10', 'sparseinst-r50-608'): 32_794_785,        # SparseInst R-50 (torchvision-style ResNet-50)
    ('table-4', 'sparseinst'): 33_560_628,                 # SparseInst R-50-d-DCNv2 (Table 4 baseline)
    ('table-4', 'amf-sparseinst'): 34_618_214,             # full AMF-SparseInst R-50-d-DCNv2
}
# The other rows differ only in the encoder (same backbone and decoder): full count = the baseline's
# 33_560_628 - 3_082_496 + the encoder's count, e.g. Table 5 'conv-aspp' 36_117_556 (see amf_sparseinst.md).
ENCODER_PARAMS = {'sparseinst': 3_082_496, 'simam-aspp(dw)': 4_074_240, 'aspp(conv)': 5_639_424,
                  '+fem': 4_140_082}
DECODER_PARAMS = 6_257_377

DECODER = dict(type='GroupIAMDecoder', in_channels=258, num_classes=80, num_groups=4, num_masks=100,
               ins_dim=256, ins_conv=4, mask_dim=256, mask_conv=4, kernel_dim=128, scale_factor=2.0)
ASPP = dict(type='SimAMASPP', in_channels=256, out_channels=256, branch_channels=256, dilations=[6, 18, 24],
            depthwise=True, attention=dict(type='SimAM', e_lambda=1e-4), dropout_ratio=0.5)
FEM_CFG = dict(type='FEM', channels=256, channel_attention=True, spatial_attention=True, connection='parallel',
               act_cfg=dict(type='HSigmoid', bias=3.0, divisor=6.0), sa_kernel_size=5, w3=0.6, w5=0.4)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def row_of(table: str, row_id: str):
    return next(r for r in load_table(RECIPES / f'{table}.yaml').rows if r.id == row_id)


@pytest.fixture(scope='module')
def recipe_model():
    """Recipe rows' models built as `bench profile` builds them (no pretrained weights), once each."""
    cache: dict = {}

    def get(table: str, row_id: str) -> torch.nn.Module:
        if (table, row_id) not in cache:
            cache[(table, row_id)] = build_row(row_of(table, row_id))[0]
        return cache[(table, row_id)]

    return get


def backbone_feats(hw=(64, 96), b=2):
    g = torch.Generator().manual_seed(0)
    h, w = hw
    return [torch.randn(b, c, h // s, w // s, generator=g) for c, s in ((512, 8), (1024, 16), (2048, 32))]


# ------------------------------------------------------------------------------------------ AMF modules
def test_simam_is_parameter_free_3d_attention():
    m = SimAM(1e-4)
    assert n_params(m) == 0
    x = torch.randn(2, 8, 5, 7)
    y = m(x)
    assert y.shape == x.shape
    # a constant map has zero energy term everywhere: weight = sigmoid(0.5)
    c = torch.full((1, 3, 4, 4), 2.0)
    assert torch.allclose(m(c), c * torch.sigmoid(torch.tensor(0.5)))
    # the outlier neuron of a channel gets the largest weight (SimAM's energy)
    z = torch.zeros(1, 1, 4, 4)
    z[0, 0, 1, 2] = 1.0
    w = m(z + 1.0) / (z + 1.0)
    assert w.flatten().argmax() == 1 * 4 + 2


def test_simam_aspp_shapes_and_depthwise_saving():
    x = torch.randn(2, 256, 3, 4)
    dw, conv = MODELS.build(ASPP), MODELS.build({**ASPP, 'depthwise': False, 'attention': None})
    dw.eval()
    assert dw(x).shape == (2, 256, 3, 4) and conv(x).shape == (2, 256, 3, 4)
    # 3x3 conv + 3 x (dw 3x3 + pw 1x1) + pooling 1x1 + 1x1 projection of 5 x 256 channels
    expected_dw = (256 * 256 * 9 + 256) + 3 * ((256 * 9 + 256) + (256 * 256 + 256)) + (256 * 256 + 256) \
        + (5 * 256 * 256 + 256)
    assert n_params(dw) == expected_dw == 1_188_864
    assert n_params(conv) == expected_dw - 3 * ((256 * 9 + 256) + (256 * 256 + 256)) + 3 * (256 * 256 * 9 + 256)
    # dilation rates do not change the parameters (Table 7)
    assert n_params(MODELS.build({**ASPP, 'dilations': [6, 12, 18]})) == n_params(dw)
    assert isinstance(dw.attention, SimAM) and isinstance(conv.attention, torch.nn.Identity)


def test_lite_bifpn_outputs_and_cost_equal_to_sparseinst_fpn():
    feats = backbone_feats()
    bifpn = LiteBiFPN([512, 1024, 2048], 256)
    outs = bifpn(feats)
    assert [tuple(o.shape) for o in outs] == [(2, 256, 8, 12), (2, 256, 4, 6), (2, 256, 2, 3)]
    base = InstanceContextEncoder([512, 1024, 2048], 256)
    assert n_params(bifpn) == n_params(base.fpn)  # "without increasing costs"
    # the bottom-up path: N5 depends on C3 (it does not in the top-down-only FPN)
    f = [t.clone().requires_grad_(True) for t in feats]
    bifpn(f)[2].sum().backward()
    assert f[0].grad.abs().sum() > 0


def test_fem_branches_and_equation_6():
    x = torch.randn(2, 256, 6, 5)
    fem = MODELS.build(FEM_CFG)
    out = fem(x)
    assert out.shape == x.shape
    assert torch.allclose(out, 0.4 * fem.channel(x) + 0.6 * fem.spatial(x))
    assert n_params(fem) == 256 * 256 + 256 + 2 * 25      # eSE FC (C x C + bias) + 5x5 conv, 2 -> 1
    serial = MODELS.build({**FEM_CFG, 'connection': 'serial'})
    serial.load_state_dict(fem.state_dict())
    assert torch.allclose(serial(x), fem.spatial(fem.channel(x)))
    ca = MODELS.build({**FEM_CFG, 'spatial_attention': False, 'connection': None})
    sa = MODELS.build({**FEM_CFG, 'channel_attention': False, 'connection': None})
    assert n_params(ca) == 256 * 256 + 256 and n_params(sa) == 50
    # channel weights are hard-sigmoid values in [0, 1]
    gate = fem.ca_act(fem.ca_fc(x.mean((2, 3), keepdim=True)))
    assert gate.min() >= 0 and gate.max() <= 1
    with pytest.raises(AssertionError):
        FEM(256, True, True, connection=None)


@pytest.mark.parametrize('variant', ['sparseinst', 'aspp', 'aspp+bifpn', 'aspp+fem', 'full'])
def test_encoders_give_one_stride8_map(variant):
    feats = backbone_feats()
    if variant == 'sparseinst':
        enc = MODELS.build(dict(type='InstanceContextEncoder', in_channels=[512, 1024, 2048], out_channels=256))
        expected = ENCODER_PARAMS['sparseinst']
    else:
        enc = MODELS.build(dict(type='AMFEncoder', in_channels=[512, 1024, 2048], out_channels=256, context=ASPP,
                                lite_bifpn=dict(type='LiteBiFPN', in_channels=[512, 1024, 2048], out_channels=256)
                                if 'bifpn' in variant or variant == 'full' else None,
                                fem=FEM_CFG if 'fem' in variant or variant == 'full' else None))
        expected = ENCODER_PARAMS['+fem' if ('fem' in variant or variant == 'full') else 'simam-aspp(dw)']
    if variant == 'aspp':
        conv = AMFEncoder([512, 1024, 2048], 256, context={**ASPP, 'depthwise': False})
        assert n_params(conv) == ENCODER_PARAMS['aspp(conv)']
    enc.eval()
    with torch.no_grad():
        out = enc(feats)
    assert out.shape == (2, 256, 8, 12) and torch.isfinite(out).all()
    assert n_params(enc) == expected


# ------------------------------------------------------------------------------------------ SparseInst parts
def test_group_iam_decoder_shapes():
    dec = GroupIAMDecoder(**{k: v for k, v in DECODER.items() if k != 'type'}, output_iam=True)
    assert n_params(dec) == DECODER_PARAMS
    out = dec(torch.randn(2, 256, 8, 12))
    assert out['pred_logits'].shape == (2, 100, 80)
    assert out['pred_scores'].shape == (2, 100, 1)
    assert out['pred_masks'].shape == (2, 100, 16, 24)  # stride 4
    assert out['pred_iam'].shape == (2, 400, 8, 12)      # G x N activation maps
    # focal-loss prior initialisation: class probabilities start at 0.01
    assert torch.allclose(dec.inst_branch.cls_score.bias.sigmoid(), torch.tensor(0.01), atol=1e-6)


def test_matcher_recovers_the_perfect_assignment():
    matcher = TASK_UTILS.build(dict(type='SparseInstMatcher', alpha=0.8, beta=0.2))
    tgt = torch.zeros(2, 8, 8)
    tgt[0, :4, :4] = 1
    tgt[1, 4:, 2:] = 1
    masks = torch.full((1, 5, 8, 8), -10.0)
    masks[0, 3] = tgt[0] * 20 - 10
    masks[0, 1] = tgt[1] * 20 - 10
    logits = torch.zeros(1, 5, 3)
    (src, dst), = matcher(dict(pred_masks=masks, pred_logits=logits), [tgt], [torch.tensor([0, 2])])
    assert dict(zip(dst.tolist(), src.tolist())) == {0: 3, 1: 1}
    assert dice_score(masks[0, 3:4].flatten(1), tgt[:1].flatten(1)).item() > 0.99


def test_criterion_losses_with_and_without_targets():
    crit = MODELS.build(dict(type='SparseInstCriterion', num_classes=80,
                             assigner=dict(type='SparseInstMatcher', alpha=0.8, beta=0.2)))
    assert isinstance(crit, SparseInstCriterion)
    out = dict(pred_logits=torch.randn(2, 10, 80, requires_grad=True),
               pred_masks=torch.randn(2, 10, 16, 16, requires_grad=True),
               pred_scores=torch.randn(2, 10, 1, requires_grad=True))
    gts = [make_sample((64, 64), [(4, 4, 40, 30)], [5]).gt_instances,
           make_sample((64, 64), [], []).gt_instances]
    losses = crit(out, gts)
    assert set(losses) == {'loss_cls', 'loss_obj', 'loss_dice', 'loss_mask'}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert out['pred_masks'].grad.abs().sum() > 0 and out['pred_scores'].grad.abs().sum() > 0
    empty = crit({k: v.detach() for k, v in out.items()}, [gts[1], gts[1]])
    assert empty['loss_mask'] == 0 and empty['loss_cls'] > 0


# ------------------------------------------------------------------------------------------ recipes' models
def test_recipe_parameter_counts(recipe_model):
    """Trainable parameters of the recipes' models, built exactly as `bench profile` builds them."""
    for (table, row_id), expected in MEASURED_PARAMS.items():
        model = recipe_model(table, row_id)
        model.train()
        assert n_params(model) == expected, (table, row_id, n_params(model))
        assert n_params(model.decoder) == DECODER_PARAMS


def _batch():
    g = torch.Generator().manual_seed(0)
    return dict(
        inputs=[torch.randint(0, 256, (3, 96, 128), generator=g, dtype=torch.uint8),
                torch.randint(0, 256, (3, 80, 112), generator=g, dtype=torch.uint8)],
        data_samples=[make_sample((96, 128), [(8, 8, 60, 50), (70, 30, 120, 90)], [0, 1]),
                      make_sample((80, 112), [(10, 20, 90, 70)], [2], ori_hw=(160, 224))])


def test_full_amf_sparseinst_trains_and_predicts(recipe_model):
    """Table 4's full model (R-50-d-DCNv2, SimAM-ASPP, Lite-BiFPN, FEM) through mmdet's train/test API."""
    model = recipe_model('table-4', 'amf-sparseinst')
    model.train()
    assert isinstance(model.encoder, AMFEncoder) and isinstance(model.encoder.context, SimAMASPP)
    data = model.data_preprocessor(_batch(), True)
    losses = model(**data, mode='loss')
    assert set(losses) == {'loss_cls', 'loss_obj', 'loss_dice', 'loss_mask'}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.encoder.fem.sa_conv.weight.grad.abs().sum() > 0
    assert model.backbone.layer4[0].conv2.weight.grad is not None  # DCNv2 stage trains

    model.eval()
    with torch.no_grad():
        preds = model.test_step(_batch())
    assert len(preds) == 2 and all(isinstance(p, DetDataSample) for p in preds)
    for p, hw in zip(preds, [(96, 128), (160, 224)]):   # second image is rescaled to its original size
        inst = p.pred_instances
        assert inst.masks.dtype == torch.bool and tuple(inst.masks.shape[-2:]) == hw
        n = len(inst)
        assert inst.scores.shape == (n,) and inst.labels.shape == (n,) and inst.bboxes.shape == (n, 4)
        assert n <= 100 and (inst.scores > 0).all() and (inst.labels < 80).all()


def test_sparseinst_baseline_trains(recipe_model):
    """Table 10's SparseInst R-50 (PPM encoder): finite losses that reach the encoder."""
    model = recipe_model('table-10', 'sparseinst-r50-608')
    model.train()
    assert isinstance(model.encoder, InstanceContextEncoder)
    batch = _batch()
    batch['inputs'] = [t[:, :64, :64] for t in batch['inputs']]
    batch['data_samples'] = [make_sample((64, 64), [(8, 8, 50, 40)], [3]), make_sample((64, 64), [], [])]
    losses = model(**model.data_preprocessor(batch, True), mode='loss')
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.encoder.ppm.bottleneck.weight.grad.abs().sum() > 0
