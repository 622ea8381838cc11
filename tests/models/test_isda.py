"""Tests of the ISDA components (bench/models/isda.py): real modules on CPU, small synthetic inputs,
no pretrained weights."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData

from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules

register_all_modules()
import bench.models  # noqa: E402,F401  (registers the components)
from bench.models.isda import ISDA, ISDAHead, ISDAMaskFeatureHead, image_coordinates  # noqa: E402
from bench.recipes import load_table  # noqa: E402
from bench.resolve import row_config  # noqa: E402
from tests.models.samples import make_sample  # noqa: E402

RECIPES = Path(__file__).resolve().parents[2] / 'recipes' / 'isda'

# Trainable parameters (ResNet-50 frozen_stages=1, counted after model.train()) of the recipe rows, measured
# with this implementation.  The paper prints no parameter counts (nothing published to compare with).
MEASURED_PARAMS = {
    ('table-1', 'res-1-8'): 41_633_618,
    ('table-1', 'res-1-4'): 41_633_618,
    ('table-1', 'res-1-2'): 41_633_618,
    ('table-2', 'none'): 41_631_314,
    ('table-2', 'mp'): 41_634_132,
    ('table-2', 'kp'): 41_630_800,
    ('table-2', 'mp-kp'): 41_633_618,
    ('table-3', 'isda'): 41_633_618,
}


def row_model_cfg(table: str, row_id: str) -> ConfigDict:
    tab = load_table(RECIPES / f'{table}.yaml')
    row = next(r for r in tab.rows if r.id == row_id)
    cfg = row_config(row.model).to_dict()['model']
    cfg['backbone']['init_cfg'] = None
    assert cfg['init_cfg']['type'] == 'Pretrained'  # the COCO Deformable DETR start (Sec. 4); no download here
    cfg['init_cfg'] = None
    return ConfigDict(cfg)


def small_cfg(table: str, row_id: str, layers: int = 2) -> ConfigDict:
    """The recipe row with 3 classes, 12 queries and ``layers`` encoder/decoder layers (CPU speed)."""
    cfg = row_model_cfg(table, row_id)
    cfg.num_queries = 12
    cfg.bbox_head.num_classes = 3
    cfg.encoder.num_layers = layers
    cfg.decoder.num_layers = layers
    cfg.test_cfg.max_per_img = 10
    return cfg


def trainable(model: torch.nn.Module) -> int:
    model.train()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def synthetic_batch() -> dict:
    g = torch.Generator().manual_seed(0)
    return dict(
        inputs=[torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8),
                torch.randint(0, 256, (3, 48, 64), generator=g, dtype=torch.uint8)],
        data_samples=[make_sample((64, 64), [(4, 4, 30, 30), (36, 20, 60, 60)], [0, 1]),
                      make_sample((48, 64), [(10, 12, 50, 40)], [2], ori_hw=(96, 128))])


# ------------------------------------------------------------------------------ parameters
def test_parameter_counts_of_the_recipe_rows():
    """Exact trainable counts of every ISDA row, and the layer arithmetic of the positional variants."""
    counts = {}
    for (table, row_id), expected in MEASURED_PARAMS.items():
        model = MODELS.build(row_model_cfg(table, row_id))
        assert isinstance(model, ISDA) and isinstance(model.bbox_head, ISDAHead)
        counts[row_id] = trainable(model)
        assert counts[row_id] == expected, (table, row_id, counts[row_id])
    # MP adds 2 input channels to P5's first 3x3 conv (2*9*128) and two kernel entries (258 = |MFR|); KP takes
    # two of the kernel's entries for R, so the kernel FFN's last Linear has 2 outputs (2*257 weights) fewer
    assert counts['mp-kp'] - counts['none'] == 2 * 9 * 128
    assert counts['mp'] - counts['mp-kp'] == 2 * 257
    assert counts['none'] - counts['kp'] == 2 * 257


# ------------------------------------------------------------------------------ losses / costs
def test_mask_iou_loss_and_cost():
    """Sec. 3.3: loss = 1 - IoU(m, m_hat); the cost is the same quantity for every (prediction, gt) pair."""
    gt = torch.zeros(2, 8, 8)
    gt[0, :4, :4] = 1
    gt[1, 4:, :] = 1
    big = 20.0
    logits = torch.full((3, 8, 8), -big)
    logits[0, :4, :4] = big                     # = gt 0
    logits[1, :4, :] = big                      # half of it overlaps gt 0 ... IoU 16/32
    logits[2, 4:, 4:] = big                     # inside gt 1: IoU 16/32
    loss = MODELS.build(dict(type='MaskIoULoss', loss_weight=3.0))
    per = loss(logits[[0, 2]].flatten(1), gt.flatten(1), reduction_override='none')
    assert torch.allclose(per, torch.tensor([0.0, 3 * 0.5]), atol=1e-4)
    assert torch.allclose(loss(logits[[0, 2]], gt, avg_factor=2.0), torch.tensor(0.75), atol=1e-4)
    cost = TASK_UTILS.build(dict(type='MaskIoUCost', weight=3.0))
    c = cost(InstanceData(masks=logits), InstanceData(masks=gt, labels=torch.tensor([0, 1])))
    expected = 3 * (1 - torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.0, 0.5]]))
    assert c.shape == (3, 2) and torch.allclose(c, expected, atol=1e-4)
    # soft masks give gradients
    x = torch.zeros(1, 64, requires_grad=True)
    loss(x, torch.ones(1, 64)).backward()
    assert x.grad is not None and (x.grad < 0).all()


# ------------------------------------------------------------------------------ mask feature head
def pyramid(hw=(64, 96), batch=2, c=256):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, c, math.ceil(hw[0] / s), math.ceil(hw[1] / s), generator=g)
            for s in (4, 8, 16, 32, 64)]


@pytest.mark.parametrize('stride', [8, 4, 2])
def test_mfr_stride_and_coordinate_channels(stride):
    """Table 1: the MFR is at 1/stride of the input; with MP its last two channels are normalised pixel
    coordinates (Sec. 4.1) and P5's first conv sees 256 + 2 channels (Sec. 3.2)."""
    head = ISDAMaskFeatureHead(mask_stride=stride, mfr_positions=True)
    assert head.convs_all_levels[3].conv0.conv.in_channels == 258
    assert head.convs_all_levels[2].conv0.conv.in_channels == 256
    assert head.conv_pred.conv.out_channels == 256
    feats = pyramid()
    ratios = torch.tensor([[1.0, 1.0], [0.5, 0.75]])  # 2nd image: valid w 48 of 96, valid h 48 of 64
    with torch.no_grad():
        mfr = head(feats, ratios)
    assert mfr.shape == (2, 258, 64 // stride, 96 // stride)
    xy = mfr[:, 256:]
    assert torch.allclose(xy, image_coordinates(2, mfr.shape[-2:], ratios, mfr))
    h, w = mfr.shape[-2:]
    assert torch.allclose(xy[0, 0, 0], (torch.arange(w) + 0.5) / w)          # x: 0 .. 1 over the image
    assert torch.allclose(xy[1, 0, 0, w // 2 - 1], torch.tensor(1 - 0.5 / w * 2))  # valid half ends near 1
    assert torch.allclose(xy[0, 1, :, 0], (torch.arange(h) + 0.5) / h)


def test_mfr_without_positions():
    """No MP: the MFR is the 256 learned channels (no coordinate channels, no padding)."""
    head = ISDAMaskFeatureHead(mfr_positions=False)
    assert head.convs_all_levels[3].conv0.conv.in_channels == 256
    assert head.mfr_channels == 256 and ISDAMaskFeatureHead(mfr_positions=True).mfr_channels == 258
    feats = pyramid()
    with torch.no_grad():
        assert head(feats).shape == (2, 256, 16, 24)


# ------------------------------------------------------------------------------ mask head
@pytest.mark.parametrize('mp,kp', [(False, False), (True, False), (False, True), (True, True)])
def test_mask_head_kernels_and_masks(mp, kp):
    """Fig. 4: G_pos = [G_raw, R] (KP); masks = G_pos (1x1 dynamic conv) MFR; shared weights over layers; the
    kernel is as long as the MFR (258 with MP, else 256), so with KP G_raw has two entries fewer."""
    head = ISDAHead(num_classes=3, kernel_positions=kp, num_pred_layer=2,
                    mask_feature_head=dict(type='ISDAMaskFeatureHead', mfr_positions=mp))
    head.init_weights()
    assert head.cls_branches[0] is head.cls_branches[1]            # share_pred_layer
    assert head.kernel_branches[0] is head.kernel_branches[1]
    assert head.kernel_dims == (258 if mp else 256)
    assert head.kernel_branches[0][-1].out_features == head.kernel_dims - (2 if kp else 0)
    feats = pyramid(batch=1)
    g = torch.Generator().manual_seed(1)
    hs = torch.randn(2, 1, 5, 256, generator=g)
    refs = [torch.rand(1, 5, 2, generator=g)] * 3
    with torch.no_grad():
        cls, masks = head(hs, refs, feats)
        mfr = head.mask_feature_head(feats, None)
        kernel = head.kernel_branches[1](hs[1])
        if kp:
            kernel = torch.cat([kernel, refs[1]], -1)
        expected = torch.einsum('bqd,bdhw->bqhw', kernel, mfr)
        cls2, masks2 = head(hs, [r.flip(-1) for r in refs], feats)   # other reference points
    assert cls.shape == (2, 1, 5, 3) and masks.shape == (2, 1, 5, 16, 24)
    assert torch.allclose(masks[1], expected, atol=1e-4)
    assert torch.equal(cls, cls2)
    # R changes the masks whenever it is in the kernel: it multiplies the coordinate channels (MP) or two
    # learned MFR channels (no MP)
    assert torch.allclose(masks, masks2) == (not kp)


# ------------------------------------------------------------------------------ full model
def _check_predictions(results, max_det):
    assert len(results) == 2
    for res, ori in zip(results, [(64, 64), (96, 128)]):
        assert isinstance(res, DetDataSample)
        pred = res.pred_instances
        n = len(pred)
        assert 0 < n <= max_det
        assert pred.masks.dtype == torch.bool and pred.masks.shape == (n, *ori)
        assert pred.bboxes.shape == (n, 4) and pred.scores.shape == (n, )
        assert ((pred.labels >= 0) & (pred.labels < 3)).all()
        assert (pred.scores[:-1] >= pred.scores[1:]).all()


def test_full_model_trains_and_predicts():
    """Table 1/2 full model (MP + KP, 1/4 MFR; recipe config with 3 classes, 12 queries, 2+2 layers): the encoder
    gets P3..P6, the head gets P2..P6; train mode gives finite per-layer losses that reach the transformer, the
    MFR head and the kernel FFN; test mode gives DetDataSamples with masks at the original image size."""
    model = MODELS.build(small_cfg('table-2', 'mp-kp'))
    torch.manual_seed(0)
    model.init_weights()
    seen = {}

    def grab(module, args, kwargs, output):  # returns None: the output is kept
        seen.setdefault('shapes', kwargs['spatial_shapes'].tolist())

    model.encoder.register_forward_hook(grab, with_kwargs=True)
    data = synthetic_batch()
    model.train()
    losses = model(**model.data_preprocessor(copy.deepcopy(data), True), mode='loss')
    assert set(losses) == {'loss_cls', 'loss_mask', 'd0.loss_cls', 'd0.loss_mask'}
    assert seen['shapes'] == [[8, 8], [4, 4], [2, 2], [1, 1]]   # P3..P6 of a 64x64 padded batch
    total = sum(losses.values())
    assert torch.isfinite(total)
    assert 0 < losses['loss_mask'].item() <= 3.0 + 1e-4
    total.backward()
    head = model.bbox_head
    for p in [model.query_embedding.weight, model.encoder.layers[0].self_attn.value_proj.weight,
              head.mask_feature_head.convs_all_levels[3].conv0.conv.weight,
              head.mask_feature_head.convs_all_levels[0].conv0.conv.weight,
              head.kernel_branches[0][0].weight, head.cls_branches[0].weight, model.neck.convs[0].conv.weight]:
        assert p.grad is not None and p.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(copy.deepcopy(data), False), mode='predict')
    _check_predictions(results, 10)


def test_low_resolution_baseline_row_predicts():
    """Table 2 'none' row (no MP, no KP) with Table 1's 1/8 MFR: masks at stride 8, resized to the image."""
    cfg = small_cfg('table-2', 'none', layers=1)
    cfg.bbox_head.mask_feature_head.mask_stride = 8
    model = MODELS.build(cfg)
    model.init_weights()
    model.eval()
    data = model.data_preprocessor(copy.deepcopy(synthetic_batch()), False)
    with torch.no_grad():
        feats = model.extract_feat(data['inputs'])
        head_in = model.forward_transformer(feats, data['data_samples'])
        _, masks = model.bbox_head(head_in['hidden_states'], head_in['references'], head_in['mlvl_feats'])
        results = model(**data, mode='predict')
    assert masks.shape[-2:] == (8, 8)
    _check_predictions(results, 10)


def test_coco_pretrained_deformable_detr_initialisation(tmp_path):
    """Sec. 4: 'ResNet-50 ... pretrained on ImageNet. The deformable Transformer and the classification branch in
    ISDA are pretrained on MS COCO'; Sec. 3.2: the queries are 'learned during training with random
    initialization'. From a Deformable DETR checkpoint (model-level Pretrained init_cfg) only encoder, decoder,
    level embeddings, reference-point FC and classifier are copied; the backbone keeps its own (ImageNet)
    init_cfg, and the neck, the queries and the mask parts keep their own init."""
    from mmengine.config import Config
    import mmdet
    detr_cfg = Config.fromfile(str(Path(mmdet.__file__).parent / '.mim' / 'configs' / 'deformable_detr' /
                                   'deformable-detr_r50_16xb2-50e_coco.py')).model
    detr_cfg.backbone.init_cfg = None
    detr_cfg.num_queries = 12
    detr_cfg.bbox_head.num_classes = 3
    detr_cfg.encoder.num_layers = 1
    detr_cfg.decoder.num_layers = 1
    torch.manual_seed(1)
    detr = MODELS.build(detr_cfg)
    detr.init_weights()
    ckpt = tmp_path / 'detr.pth'
    torch.save({'state_dict': detr.state_dict()}, ckpt)
    # stand-in for torchvision's ImageNet ResNet-50 (no download in tests): another ResNet-50's weights
    torch.manual_seed(2)
    imagenet = MODELS.build(dict(type='ResNet', depth=50, init_cfg=None))
    imagenet_ckpt = tmp_path / 'imagenet_r50.pth'
    torch.save(imagenet.state_dict(), imagenet_ckpt)

    cfg = small_cfg('table-1', 'res-1-4', layers=1)
    cfg.init_cfg = dict(type='Pretrained', checkpoint=str(ckpt))
    cfg.backbone.init_cfg = dict(type='Pretrained', checkpoint=str(imagenet_ckpt))
    torch.manual_seed(3)
    model = MODELS.build(cfg)
    model.init_weights()
    loaded = [
        (model.encoder.layers[0].self_attn.sampling_offsets.weight,
         detr.encoder.layers[0].self_attn.sampling_offsets.weight),
        (model.decoder.layers[0].cross_attn.value_proj.weight, detr.decoder.layers[0].cross_attn.value_proj.weight),
        (model.level_embed, detr.level_embed),
        (model.reference_points_fc.weight, detr.reference_points_fc.weight),
        (model.bbox_head.cls_branches[0].weight, detr.bbox_head.cls_branches[0].weight),
        (model.bbox_head.cls_branches[0].bias, detr.bbox_head.cls_branches[0].bias),
    ]
    for ours, theirs in loaded:
        assert torch.equal(ours, theirs)
    not_loaded = [
        (model.backbone.conv1.weight, detr.backbone.conv1.weight),                      # ImageNet instead
        (model.backbone.layer4[0].conv2.weight, detr.backbone.layer4[0].conv2.weight),
        (model.neck.convs[1].conv.weight, detr.neck.convs[0].conv.weight),              # C3 lateral
        (model.neck.extra_convs[0].conv.weight, detr.neck.extra_convs[0].conv.weight),  # P6
        (model.query_embedding.weight, detr.query_embedding.weight),                    # random queries
    ]
    for ours, theirs in not_loaded:
        assert ours.shape == theirs.shape and not torch.equal(ours, theirs)
    assert torch.equal(model.backbone.conv1.weight, imagenet.conv1.weight)
    assert torch.equal(model.backbone.layer4[0].conv2.weight, imagenet.layer4[0].conv2.weight)
    info = model.load_detr_checkpoint(str(ckpt))
    assert all(k.startswith(model.pretrained_parts) for k in info['loaded'])
    assert any(k.startswith('backbone.') for k in info['skipped'])
    assert any(k.startswith('neck.') for k in info['skipped'])
    assert 'query_embedding.weight' in info['skipped']


# ------------------------------------------------------------------------------ Table 2: KP alone
def _kp_and_none_models():
    """Table 2's 'none' and 'KP' rows (recipe configs, 3 classes, 12 queries, 1+1 layers), 'KP' carrying every
    weight of 'none' (the kernel FFN's last Linear: its first 254 outputs)."""
    torch.manual_seed(0)
    none = MODELS.build(small_cfg('table-2', 'none', layers=1))
    none.init_weights()
    kp = MODELS.build(small_cfg('table-2', 'kp', layers=1))
    state = none.state_dict()
    own = kp.state_dict()
    for k, v in state.items():
        if own[k].shape != v.shape:   # kernel FFN's last Linear: 256 -> 254 outputs (2 entries are R)
            state[k] = v[:own[k].shape[0]]
    kp.load_state_dict(state)
    return none.eval(), kp.eval()


def test_kernel_positions_alone_change_the_model():
    """Table 2 'KP' (no MP) is another function than 'none' (the paper: -0.6 AP): with KP the reference point R
    multiplies the MFR's last two (learned) channels, so the masks depend on R and differ from 'none' with the same
    weights; before, R met two all-zero channels and 'KP' equalled 'none' (max mask difference 4.8e-7)."""
    none, kp = _kp_and_none_models()
    assert kp.bbox_head.kernel_positions and not kp.bbox_head.mask_feature_head.mfr_positions
    data = none.data_preprocessor(copy.deepcopy(synthetic_batch()), False)
    with torch.no_grad():
        _, masks_none = none._forward(data['inputs'], data['data_samples'])
        feats = kp.extract_feat(data['inputs'])
        head_in = kp.forward_transformer(feats, data['data_samples'])
        _, masks_kp = kp.bbox_head(**head_in)
        moved = dict(head_in, references=[r.flip(-1) for r in head_in['references']])
        _, masks_kp_moved = kp.bbox_head(**moved)
    assert masks_kp.shape == masks_none.shape
    diff = (masks_kp[-1] - masks_none[-1]).abs().max().item()
    assert diff > 1e-3, diff
    assert (masks_kp - masks_kp_moved).abs().max().item() > 1e-3   # R matters
    # the masks are G_raw . F[:254] + R_x F[254] + R_y F[255]
    mfr = kp.bbox_head.mask_feature_head(head_in['mlvl_feats'], head_in['valid_ratios'])
    g_raw = kp.bbox_head.kernel_branches[0](head_in['hidden_states'][-1])
    ref = head_in['references'][-1][..., :2]
    expected = (torch.einsum('bqd,bdhw->bqhw', g_raw, mfr[:, :254])
                + torch.einsum('bqd,bdhw->bqhw', ref, mfr[:, 254:]))
    assert torch.allclose(masks_kp[-1], expected, atol=1e-4)


# ------------------------------------------------------------------------------ FLOPs
def test_tensor_mode_counts_only_the_last_decoder_layer():
    """FLOPs count what inference runs: tensor mode (bench profile's FlopAnalyzer) gives class logits and masks of
    the last decoder layer only, and the head's counted FLOPs are the MFR head plus ONE layer of classifier, kernel
    FFN and dynamic convolution (not one per decoder layer)."""
    from mmengine.analysis import FlopAnalyzer
    cfg = small_cfg('table-2', 'mp-kp', layers=2)
    model = MODELS.build(cfg)
    model.init_weights()
    model.eval()
    data = model.data_preprocessor(copy.deepcopy(synthetic_batch()), False)
    inputs, samples = data['inputs'], data['data_samples']
    with torch.no_grad():
        cls, masks = model._forward(inputs, samples)
    b, q, c = len(samples), cfg.num_queries, cfg.bbox_head.num_classes
    assert cls.shape == (1, b, q, c) and masks.shape[:3] == (1, b, q)

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return model._forward(x, samples)

    analyzer = FlopAnalyzer(Wrap(model), (inputs, ))
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    by_module = analyzer.by_module()
    head = by_module['m.bbox_head'] - by_module['m.bbox_head.mask_feature_head']
    d, (h, w) = model.bbox_head.kernel_dims, masks.shape[-2:]
    ffn = 256 * 256 + 256 * 256 + 256 * (d - 2)
    one_layer = b * q * (256 * c + ffn) + b * q * d * h * w
    assert head == one_layer, (head, one_layer)
