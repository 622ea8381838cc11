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
from bench.resolve import row_config  # noqa: E402
from tests.models.samples import make_sample  # noqa: E402

RECIPES = Path(__file__).resolve().parents[2] / 'recipes' / 'amf-sparseinst'

# Trainable parameters of the recipes' models (model.train(), BN frozen, nothing else frozen), measured with
# this implementation.  The paper prints no parameter counts (only GFLOPs, Tables 7-8); see amf_sparseinst.md.
MEASURED_PARAMS = {
    ('table-10', 'sparseinst-r50-608'): 32_794_785,        # SparseInst R-50 (torchvision-style ResNet-50)
    ('table-4', 'sparseinst'): 33_560_628,                 # SparseInst R-50-d-DCNv2 (Table 4 baseline)
    ('table-4', 'amf-sparseinst'): 35_011_942,             # full AMF-SparseInst R-50-d-DCNv2
}
# The other rows differ only in the encoder (same backbone and decoder): full count = the baseline's
# 33_560_628 - 3_082_496 + the encoder's count, e.g. Table 5 'conv-aspp' 36_117_556 (see amf_sparseinst.md).
ENCODER_PARAMS = {'sparseinst': 3_082_496, 'simam-aspp(dw)': 4_074_240, 'aspp(conv)': 5_639_424,
                  '+fem': 4_140_082, '+bifpn': 4_467_968, 'full': 4_533_810}
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


RESIDUAL_EDGES = (512 * 256 + 256) + (1024 * 256 + 256)  # own 1x1 projections of C3 and C4


def test_lite_bifpn_outputs_and_cost():
    feats = backbone_feats()
    bifpn = LiteBiFPN([512, 1024, 2048], 256)
    outs = bifpn(feats)
    assert [tuple(o.shape) for o in outs] == [(2, 256, 8, 12), (2, 256, 4, 6), (2, 256, 2, 3)]
    base = InstanceContextEncoder([512, 1024, 2048], 256)
    # SparseInst's FPN + the two residual-edge projections (BiFPN's first-layer input edges)
    assert n_params(bifpn) == n_params(base.fpn) + RESIDUAL_EDGES == 2_688_512 + 393_728
    assert n_params(LiteBiFPN([512, 1024, 2048], 256, residual_laterals=False)) == n_params(base.fpn)
    # the bottom-up path: N5 depends on C3 (it does not in the top-down-only FPN)
    f = [t.clone().requires_grad_(True) for t in feats]
    bifpn(f)[2].sum().backward()
    assert f[0].grad.abs().sum() > 0


def test_lite_bifpn_residual_edges_carry_their_own_features():
    """Sec. 3 "connecting C3 to N3 and C4 to N4" (BiFPN's same-level input -> output edge): the edge into
    N3 / N4 is its own projection of C3 / C4, not the lateral L3 / L4 that P3 / P4 already contain.  With
    the top-down laterals of C3 and C4 zeroed, C3 and C4 still reach N3 and N4 through the edges; and the
    sum entering N3's / N4's conv is exactly P3 + R3(C3) / P4 + down(N3) + R4(C4)."""
    torch.manual_seed(0)
    feats = backbone_feats()
    bifpn = LiteBiFPN([512, 1024, 2048], 256)
    for conv in bifpn.lateral_convs[:2]:
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    with torch.no_grad():
        ref = bifpn(feats)
        for lvl in (0, 1):
            moved = list(feats)
            moved[lvl] = feats[lvl] + 1.0
            out = bifpn(moved)
            assert not torch.allclose(out[lvl], ref[lvl]), f'C{lvl + 3} does not reach N{lvl + 3}'
    # what enters the output convs
    bifpn = LiteBiFPN([512, 1024, 2048], 256)
    assert [tuple(c.weight.shape) for c in bifpn.residual_convs] == [(256, 512, 1, 1), (256, 1024, 1, 1)]
    seen = {}
    for i in (0, 1):
        bifpn.output_convs[i].register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, a[0]))
    with torch.no_grad():
        n3, n4, _ = bifpn(feats)
        l3, l4, l5 = (c(x) for c, x in zip(bifpn.lateral_convs, feats))
        p4 = l4 + torch.nn.functional.interpolate(l5, size=l4.shape[-2:], mode='nearest')
        p3 = l3 + torch.nn.functional.interpolate(p4, size=l3.shape[-2:], mode='nearest')
        r3, r4 = bifpn.residual_convs[0](feats[0]), bifpn.residual_convs[1](feats[1])
    assert torch.allclose(seen[0], p3 + r3, atol=1e-5)
    assert torch.allclose(seen[1], p4 + LiteBiFPN.down(n3, p4.shape[-2:]) + r4, atol=1e-5)
    assert not torch.allclose(r3, l3)  # the edge is not the lateral


def test_fem_weights_come_from_n5_and_n3_and_equation_6():
    """FEM (abstract: "uses N3 and N5 respectively to reweight fusion features in spatial and channel
    dimensions"; Eq. 6 F_out = W5 X_ca + W3 X_sa): channel weights from N5, spatial weights from N3, both
    applied to X_fusion."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 256, 8, 12, generator=g)
    n3, n4, n5 = (torch.randn(2, 256, h, w, generator=g) for h, w in ((8, 12), (4, 6), (2, 3)))
    fem = MODELS.build(FEM_CFG)
    assert fem.guide == 'levels'
    out = fem(x, [n3, n4, n5])
    assert out.shape == x.shape
    a_ca = fem.ca_act(fem.ca_fc(n5.mean((2, 3), keepdim=True)))
    a_sa = torch.sigmoid(fem.sa_conv(torch.cat([n3.mean(1, keepdim=True), n3.amax(1, keepdim=True)], 1)))
    assert torch.allclose(out, 0.4 * x * a_ca + 0.6 * x * a_sa, atol=1e-6)
    # N5 moves only the channel weights, N3 only the spatial ones; N4 is not used
    assert not torch.allclose(fem(x, [n3, n4, n5 + 1]), out)
    assert not torch.allclose(fem(x, [n3 * 2, n4, n5]), out)
    assert torch.equal(fem(x, [n3, n4 + 1, n5]), out)
    assert n_params(fem) == 256 * 256 + 256 + 2 * 25      # eSE FC (C x C + bias) + 5x5 conv, 2 -> 1
    # unguided (Eqs. 1 and 4 as written): the weights come from X_fusion itself
    plain = MODELS.build({**FEM_CFG, 'guide': None})
    plain.load_state_dict(fem.state_dict())
    a_ca_x = fem.ca_act(fem.ca_fc(x.mean((2, 3), keepdim=True)))
    a_sa_x = torch.sigmoid(fem.sa_conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))
    assert torch.allclose(plain(x), 0.4 * x * a_ca_x + 0.6 * x * a_sa_x, atol=1e-6)
    # serial (Table 6): the spatial weights (from N3) applied to X_ca
    serial = MODELS.build({**FEM_CFG, 'connection': 'serial'})
    serial.load_state_dict(fem.state_dict())
    assert torch.allclose(serial(x, [n3, n4, n5]), x * a_ca * a_sa, atol=1e-6)
    ca = MODELS.build({**FEM_CFG, 'spatial_attention': False, 'connection': None})
    sa = MODELS.build({**FEM_CFG, 'channel_attention': False, 'connection': None})
    assert n_params(ca) == 256 * 256 + 256 and n_params(sa) == 50
    assert a_ca.min() >= 0 and a_ca.max() <= 1   # hard-sigmoid gates
    with pytest.raises(AssertionError):
        FEM(256, True, True, connection=None)


def test_amf_encoder_feeds_fem_the_pyramid_levels():
    """AMFEncoder hands FEM the Lite-BiFPN outputs (N3, N4, N5) next to X_fusion."""
    enc = MODELS.build(dict(type='AMFEncoder', in_channels=[512, 1024, 2048], out_channels=256, context=ASPP,
                            lite_bifpn=dict(type='LiteBiFPN'), fem=FEM_CFG))
    enc.eval()
    got = {}
    enc.fem.register_forward_hook(lambda m, a, o: got.update(x=a[0], levels=a[1]))
    enc.fpn.register_forward_hook(lambda m, a, o: got.update(fpn=o))
    with torch.no_grad():
        enc(backbone_feats())
    assert all(a is b for a, b in zip(got['levels'], got['fpn']))
    assert [tuple(t.shape[-2:]) for t in got['levels']] == [(8, 12), (4, 6), (2, 3)]


def test_amf_encoder_with_ppm_is_sparseinst_encoder():
    """AMFEncoder(context=PPM, no Lite-BiFPN, no FEM) computes SparseInst's InstanceContextEncoder, so the
    type switch of Table 4's rows is not itself a change: the rows differ in the ticked modules only."""
    base = InstanceContextEncoder([512, 1024, 2048], 256)
    amf = AMFEncoder([512, 1024, 2048], 256, context=dict(type='PyramidPoolingModule', in_channels=256,
                                                          channels=64))
    state = {k.replace('ppm.', 'context.'): v for k, v in base.state_dict().items()}
    amf.load_state_dict(state)
    feats = backbone_feats()
    with torch.no_grad():
        assert torch.equal(amf(feats), base(feats))


def test_fusion_conv_uses_msra_init():
    """SparseInst's encoder.py initialises the 1x1 fusion conv with c2_msra_fill (kaiming normal, fan_out),
    not c2_xavier_fill: std sqrt(2 / fan_out) = sqrt(2 / 256)."""
    torch.manual_seed(0)
    for enc in (InstanceContextEncoder([512, 1024, 2048], 256), AMFEncoder([512, 1024, 2048], 256)):
        w = enc.fusion.weight
        assert abs(w.std().item() - (2 / 256) ** 0.5) < 0.05 * (2 / 256) ** 0.5
        assert torch.count_nonzero(enc.fusion.bias) == 0


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
        expected = ENCODER_PARAMS[{'aspp': 'simam-aspp(dw)', 'aspp+bifpn': '+bifpn', 'aspp+fem': '+fem',
                                   'full': 'full'}[variant]]
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


# ------------------------------------------------------------------------------------------ ablation diffs
from tests.configdiff import flat as _flat  # noqa: E402


ENC = 'model.encoder.'
COMPONENT_PATHS = {
    'context': (ENC + 'context',),                 # the module on the projected C5 (PPM / ASPP variants)
    'attention': (ENC + 'context.attention',),     # Table 5: SimAM or none
    'depthwise': (ENC + 'context.depthwise',),     # Table 5: atrous convs depthwise separable or ordinary
    'dilations': (ENC + 'context.dilations',),     # Table 7
    'lite_bifpn': (ENC + 'lite_bifpn',),
    'fem': (ENC + 'fem',),
    'fem_weights': (ENC + 'fem.w3', ENC + 'fem.w5'),  # Table 8
    'encoder': ('model.encoder',),                 # Table 10: AMF-SparseInst vs SparseInst (the whole encoder)
}
# InstanceContextEncoder -> AMFEncoder: the type and the two modules left null (test above: same computation)
ENCODER_SWITCH = {ENC + 'type', ENC + 'lite_bifpn', ENC + 'fem'}
LABELLED = {
    ('table-4', 'simam-aspp'): ('context',),
    ('table-4', 'simam-aspp-lite-bifpn'): ('lite_bifpn',),
    ('table-4', 'simam-aspp-fem'): ('fem',),
    ('table-4', 'amf-sparseinst'): ('context', 'lite_bifpn', 'fem'),
    ('table-5', 'conv-aspp'): ('context',),
    ('table-5', 'conv-aspp-simam'): ('attention',),
    ('table-5', 'dw-aspp-simam'): ('depthwise',),
    ('table-6', 'ca'): ('fem',),
    ('table-6', 'sa'): ('fem',),
    ('table-6', 'serial'): ('fem',),
    ('table-6', 'parallel'): ('fem',),
    ('table-7', 'rates-6-12-18'): ('dilations',),
    ('table-7', 'rates-6-18-36'): ('dilations',),
    ('table-8', 'w-0.2-0.8'): ('fem_weights',),
    ('table-8', 'w-0.4-0.6'): ('fem_weights',),
    ('table-8', 'w-0.5-0.5'): ('fem_weights',),
    ('table-8', 'w-0.7-0.3'): ('fem_weights',),
}


def _baseline_pairs():
    out = []
    for t in sorted(RECIPES.glob('table-*.yaml')):
        tab = load_table(t)
        for r in tab.rows:
            if not r.baseline:
                continue
            if '/' in r.baseline:
                _, bt, bid = r.baseline.split('/')
                base = row_of(bt, bid)
            else:
                base = next(b for b in tab.rows if b.id == r.baseline)
            out.append((t.stem, r, base))
    return out


def test_every_baseline_row_is_checked():
    rows = {(t, r.id) for t, r, _ in _baseline_pairs()}
    table10 = {k for k in rows if k[0] == 'table-10'}
    assert rows - table10 == set(LABELLED)
    assert table10, 'Table 10 AMF rows name their SparseInst twins as baselines'


@pytest.mark.parametrize('table,row,base', _baseline_pairs(), ids=lambda x: getattr(x, 'id', x))
def test_ablation_row_differs_from_its_baseline_in_the_labelled_component_only(table, row, base):
    """Each row with a ``baseline:`` differs from it, in the resolved config (model, data, schedule), only in
    the labelled component's paths, and does change that component.  Table 10's AMF-SparseInst rows differ
    from their SparseInst twins in the encoder only (same backbone, decoder, data and schedule)."""
    comps = LABELLED.get((table, row.id), ('encoder',))
    fa, fb = _flat(row_config(base.model).to_dict()), _flat(row_config(row.model).to_dict())
    diff = [k for k in sorted(set(fa) | set(fb)) if fa.get(k, '<absent>') != fb.get(k, '<absent>')]
    allowed = tuple(p for c in comps for p in COMPONENT_PATHS[c])
    switch = fa.get(ENC + 'type') == 'InstanceContextEncoder' and fb.get(ENC + 'type') == 'AMFEncoder'
    stray = [k for k in diff if not k.startswith(allowed) and not (switch and k in ENCODER_SWITCH)]
    assert not stray, f'{table}/{row.id} vs {base.id}: changes outside {comps}: {stray}'
    for c in comps:
        assert any(k.startswith(COMPONENT_PATHS[c]) for k in diff), f'{c} unchanged in {row.id}'
    if switch and 'encoder' not in comps:  # modules the label does not name stay off
        for c in ('lite_bifpn', 'fem'):
            assert any(k.startswith(ENC + c + '.') for k in fb) is (c in comps), (row.id, c)
    if table == 'table-4':
        f = row.factors
        assert (fb.get(ENC + 'context.type') == 'SimAMASPP') is bool(f['simam_aspp'])
        assert any(k.startswith(ENC + 'lite_bifpn.') for k in fb) is bool(f['lite_bifpn'])
        assert any(k.startswith(ENC + 'fem.') for k in fb) is bool(f['fem'])
