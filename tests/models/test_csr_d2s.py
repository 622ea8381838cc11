"""Tests of the CSR-D2S components (bench/models/csr_d2s.py, bench/models/kernel_head.py): real
modules on CPU, small synthetic inputs, no pretrained weights."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config

from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules

register_all_modules()
import bench.models  # noqa: E402,F401  (registers the components)
from tests.models.samples import make_sample  # noqa: E402
from bench.models.csr_d2s import (CrossScaleReweighting, CSRD2SNeck,  # noqa: E402
                                  DepthToSpace, FPNFusionNeck)
from bench.models.kernel_head import KernelClsHead  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / 'bench' / 'configs' / 'csr_d2s'
FULL_CONFIG = CONFIGS / 'kernel_csr_d2s_r50_1x.py'

# Trainable parameters (ResNet-50 frozen_stages=1, counted after model.train()), measured with
# this implementation, and the paper's Table III values.
MEASURED_PARAMS = {128: 31_880_097, 256: 32_437_537}
PUBLISHED_PARAMS = {128: 31.63e6, 256: 32.13e6}


def trainable_params(model: torch.nn.Module) -> int:
    model.train()  # ResNet re-freezes stem + stage 1 here
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_from_config(path: Path, **neck_overrides) -> torch.nn.Module:
    cfg = Config.fromfile(str(path))
    cfg.model.backbone.init_cfg = None
    cfg.model.neck.update(neck_overrides)
    return MODELS.build(cfg.model)


def synthetic_batch() -> dict:
    """Two images (different sizes, one to be rescaled) with a couple of rectangles each."""
    g = torch.Generator().manual_seed(0)
    return dict(
        inputs=[torch.randint(0, 256, (3, 96, 128), generator=g, dtype=torch.uint8),
                torch.randint(0, 256, (3, 80, 112), generator=g, dtype=torch.uint8)],
        data_samples=[
            make_sample((96, 128), [(8, 8, 60, 50), (70, 30, 120, 90)], [0, 1]),
            make_sample((80, 112), [(10, 20, 90, 70)], [2], ori_hw=(160, 224)),
        ])


@pytest.fixture(scope='module')
def resnet50() -> torch.nn.Module:
    net = MODELS.build(dict(type='ResNet', depth=50, out_indices=(1, 2, 3), frozen_stages=1,
                            norm_eval=True, init_cfg=None))
    net.eval()  # mmdet's ResNet.train() does not return self
    return net


@pytest.fixture(scope='module')
def c3_c5(resnet50):
    """ResNet-50 (C3, C4, C5) of two random images of a given size, computed once per size."""
    cache: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}

    def get(hw: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        if hw not in cache:
            with torch.no_grad():
                g = torch.Generator().manual_seed(1)
                cache[hw] = resnet50(torch.randn(2, 3, *hw, generator=g))
        return cache[hw]

    return get


NECKS = {
    'csr+d2s': dict(type='CSRD2SNeck', use_csr=True, use_d2s=True),
    'csr': dict(type='CSRD2SNeck', use_csr=True, use_d2s=False),
    'd2s': dict(type='CSRD2SNeck', use_csr=False, use_d2s=True),
    'fpn': dict(type='FPNFusionNeck', out_channels=256),
}


@pytest.mark.parametrize('name', list(NECKS))
@pytest.mark.parametrize('hw', [(64, 64), (100, 75), (129, 97)])
def test_neck_returns_one_stride8_map(c3_c5, name, hw):
    """Every neck fuses ResNet-50 (C3, C4, C5) into ONE map at C3's (stride-8) size, also for
    input sizes that are not multiples of 32."""
    neck = MODELS.build(NECKS[name])
    feats = c3_c5(hw)
    with torch.no_grad():
        out = neck(feats)
    assert isinstance(out, tuple) and len(out) == 1
    expected_c = 256 if name == 'fpn' else 512
    assert out[0].shape == (2, expected_c, math.ceil(hw[0] / 8), math.ceil(hw[1] / 8))
    assert out[0].shape[-2:] == feats[0].shape[-2:]
    assert torch.isfinite(out[0]).all()


@pytest.mark.parametrize('hw', [(17, 23), (40, 24)])
def test_neck_channel_widths_are_configurable(hw):
    """Narrow widths and odd feature sizes: (C3, C4, C5) = (32, 64, 128) channels."""
    h3, w3 = hw
    feats = [torch.randn(1, 32, h3, w3), torch.randn(1, 64, math.ceil(h3 / 2), math.ceil(w3 / 2)),
             torch.randn(1, 128, math.ceil(h3 / 4), math.ceil(w3 / 4))]
    for use_csr in (True, False):
        for use_d2s in (True, False):
            neck = CSRD2SNeck(in_channels=(32, 64, 128), top_channels=16, csr_channels=8,
                              use_csr=use_csr, use_d2s=use_d2s)
            assert neck(feats)[0].shape == (1, 32, h3, w3)
    fpn = FPNFusionNeck(in_channels=(32, 64, 128), out_channels=24)
    assert fpn(feats)[0].shape == (1, 24, h3, w3)


def test_csr_gate_is_a_global_per_channel_sigmoid(c3_c5):
    """Eqs. 1-5: R has shape (B, C, 1, 1), lies in (0, 1), depends on all three levels, ignores
    the spatial arrangement (GAP), and multiplies the reduced C5 by broadcasting."""
    neck = CSRD2SNeck(csr_channels=128)
    neck.init_weights()
    feats = c3_c5((100, 75))
    with torch.no_grad():
        gate = neck.reweight(feats)
        assert gate.shape == (2, 256, 1, 1)
        assert ((gate > 0) & (gate < 1)).all()
        assert not torch.allclose(gate[0], gate[1])  # per image

        # GAP: shuffling the pixels of every level leaves R unchanged.
        shuffled = []
        for f in feats:
            perm = torch.randperm(f.shape[-2] * f.shape[-1])
            shuffled.append(f.flatten(2)[..., perm].reshape_as(f))
        assert torch.allclose(neck.reweight(shuffled), gate, atol=1e-6)
        # Cross-scale: changing only C3 changes R.
        assert not torch.allclose(neck.reweight([feats[0] * 2, feats[1], feats[2]]), gate)

        # Eq. 5 inside the neck: the first D2S block receives R * Conv1x1(C5).
        seen: dict[str, torch.Tensor] = {}

        def grab(module: torch.nn.Module, args: tuple) -> None:
            seen['x'] = args[0]

        hook = neck.up_blocks[0].register_forward_pre_hook(grab)
        neck(feats)
        hook.remove()
        reduced = neck.reduce_top(feats[2])
        assert torch.allclose(seen['x'], gate * reduced, atol=1e-6)
        ratio = seen['x'] / reduced  # the gate, constant over space
        assert torch.allclose(ratio, gate.expand_as(ratio), atol=1e-4)


def test_csr_shapes_follow_eqs_1_to_4():
    """W0_i: B_i -> c (kernel-size-1 Conv1d), W1: 3c -> 256, W2: 256 -> 256."""
    csr = CrossScaleReweighting(csr_channels=512)
    assert [tuple(p.weight.shape) for p in csr.level_proj] == [(512, 512, 1), (512, 1024, 1),
                                                                (512, 2048, 1)]
    assert tuple(csr.w1.weight.shape) == (256, 3 * 512, 1)
    assert tuple(csr.w2.weight.shape) == (256, 256, 1)


def test_d2s_upsamples_by_two_with_a_parameter_free_shuffle():
    """Sec. III-B: pixel shuffle (no parameters) + 3x3 depthwise-separable mixing."""
    block = DepthToSpace(256, 1024, scale=2)
    x = torch.randn(2, 256, 5, 7)
    y = block(x)
    assert y.shape == (2, 1024, 10, 14)
    assert sum(p.numel() for p in block.shuffle.parameters()) == 0
    mid = 256 // 4
    assert sum(p.numel() for p in block.parameters()) == mid * 9 + mid * 1024 + 1024
    assert block.depthwise.groups == mid and block.depthwise.kernel_size == (3, 3)
    # the rearrangement itself is exactly depth-to-space
    assert torch.equal(block.shuffle(x), F.pixel_shuffle(x, 2))
    # odd target sizes are cropped after the shuffle
    assert block(x, out_size=(9, 13)).shape == (2, 1024, 9, 13)


def _tiny_head() -> KernelClsHead:
    return KernelClsHead(
        num_classes=3, in_channels=32, feat_channels=32, num_convs=4, num_kernels=10,
        num_groups=2, kernel_channels=16, norm_cfg=dict(type='GN', num_groups=8),
        train_cfg=dict(assigner=dict(type='HungarianAssigner', match_costs=[
            dict(type='ClassificationCost', weight=1.0),
            dict(type='DiceCost', weight=2.0, pred_act=True, eps=1.0),
            dict(type='FocalLossCost', weight=3.0, binary_input=True)])),
        test_cfg=dict(max_per_img=5, mask_thr=0.5))


def test_head_loss_decreases_on_a_fixed_batch():
    """Eq. 6 losses on two 64x64 images with rectangle masks go down under optimisation."""
    torch.manual_seed(0)
    head = _tiny_head()
    head.init_weights()
    meta = dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64),
                batch_input_shape=(64, 64))
    samples = [make_sample((64, 64), [(4, 4, 30, 28), (36, 20, 60, 60)], [0, 2]),
               make_sample((64, 64), [(10, 30, 50, 62)], [1])]
    for s in samples:
        s.set_metainfo(meta)
    feats = (torch.randn(2, 32, 8, 8), )
    opt = torch.optim.AdamW(head.parameters(), lr=2e-3)
    history = []
    for _ in range(25):
        losses = head.loss(feats, samples)
        assert set(losses) == {'loss_cls', 'loss_dice', 'loss_focal'}
        total = sum(losses.values())
        history.append(total.item())
        opt.zero_grad()
        total.backward()
        opt.step()
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < 0.7 * history[0], history


def test_head_loss_without_ground_truth():
    """An image without objects gives only the 'no object' classification loss."""
    head = _tiny_head()
    sample = make_sample((64, 64), [], [])
    sample.set_metainfo(dict(batch_input_shape=(64, 64)))
    losses = head.loss((torch.randn(1, 32, 8, 8), ), [sample])
    assert float(losses['loss_dice']) == 0.0 and float(losses['loss_focal']) == 0.0
    assert float(losses['loss_cls']) > 0


def test_full_model_trains_and_predicts():
    """The full model (CSR + D2S + kernel head) on CPU: loss dict in train mode; in predict
    mode DetDataSamples with boolean masks at the original image size and mask-derived boxes."""
    torch.manual_seed(0)
    cfg = Config.fromfile(str(FULL_CONFIG))
    cfg.model.backbone.init_cfg = None
    cfg.model.mask_head.num_classes = 3
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    data = synthetic_batch()
    batch = model.data_preprocessor(data, True)
    losses = model(**batch, mode='loss')
    assert set(losses) == {'loss_cls', 'loss_dice', 'loss_focal'}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.neck.csr.w1.weight.grad is not None

    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(data, False), mode='predict')
    assert len(results) == 2
    for res, ori in zip(results, [(96, 128), (160, 224)]):
        pred = res.pred_instances
        assert isinstance(res, DetDataSample)
        assert pred.masks.dtype == torch.bool and pred.masks.shape[1:] == ori
        n = len(pred)
        assert 0 < n <= 100
        assert pred.scores.shape == (n, ) and pred.labels.shape == (n, )
        assert pred.bboxes.shape == (n, 4)
        assert ((pred.labels >= 0) & (pred.labels < 3)).all()
        assert (pred.scores[:-1] >= pred.scores[1:]).all()


@pytest.mark.parametrize('width', [128, 256])
def test_full_model_parameter_count(width):
    """Trainable parameters vs. Table III (paper: 31.63M at 128, 32.13M at 256)."""
    n = trainable_params(build_from_config(FULL_CONFIG, csr_channels=width))
    rel = (n - PUBLISHED_PARAMS[width]) / PUBLISHED_PARAMS[width]
    print(f'CSR width {width}: {n} trainable params, paper {PUBLISHED_PARAMS[width] / 1e6:.2f}M, '
          f'{rel:+.2%}')
    assert n == MEASURED_PARAMS[width]
    assert abs(rel) < 0.01


@pytest.mark.parametrize('name,expected', [
    ('kernel_fpn_r50_1x.py', 32_039_905),
    ('kernel_csr_r50_1x.py', 33_024_481),
    ('kernel_d2s_r50_1x.py', 31_256_609),
])
def test_ablation_configs_build(name, expected):
    """Table II variants load with Config.fromfile, build, and have the measured sizes."""
    assert trainable_params(build_from_config(CONFIGS / name)) == expected
