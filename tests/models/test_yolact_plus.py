"""Tests of the YOLACT++ port (bench/models/yolact_plus.py): the DCN block plan, the official FPN layout, the
fast mask re-scoring net and its targets, the paper-scale build and its #params (amf-sparseinst Table 10 prints
none: the count is held against the official layout's), one training step with the re-scoring loss training,
inference with rescored scores, the recipe row, and a real smoke-tiny `bench run`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.structures import InstanceData

from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

register_all_modules()
import bench.models  # noqa: E402,F401  (registers the components)
from bench.models.yolact_plus import FastMaskIoUNet, YOLACTPlusFPN, dcn_blocks, mask_iou  # noqa: E402
from tests.models.samples import make_sample, smoke_tiny_result  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / 'bench' / 'configs' / 'yolact_plus' / 'yolact_plus_r50_fpn_800k_coco.py'
MEASURED = 33_762_876            # trainable, the config (DCN in all 13 conv3-conv5 blocks), 80 classes
MEASURED_INTERVAL3 = 33_202_788  # DCN every 3rd block (5 of 13), the official R-101 config's interval
MASKIOU_NET = 108_560            # 8-16-32-64-128 (3x3, stride 2) + 1x1 to 80, with biases
DCN_BIASES = 3_584               # the official DCNv2 layer's conv bias: 4 x 128 + 6 x 256 + 3 x 512
ON_INPUT_EXTRA = 4_128_768       # mmdet YOLACT's P6 conv from C5 (2048 -> 256) instead of from P5 (256 -> 256)
ISSUE_ABOUT_M = 33.8             # issue 28: "the official layout builds P6 from P5's output (about 33.8 M)"


def build(num_classes: int = 80, **overrides) -> torch.nn.Module:
    cfg = Config.fromfile(str(CONFIG))
    cfg.model.backbone.init_cfg = None
    for part in ('bbox_head', 'mask_head'):
        cfg.model[part].num_classes = num_classes
    for key, value in overrides.items():
        part, name = key.split('__')
        cfg.model[part][name] = value
    return MODELS.build(cfg.model)


def trainable(model) -> int:
    model.train()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------------ backbone
def test_dcn_block_plan_follows_the_official_rule():
    r50 = (3, 4, 6, 3)
    every = dcn_blocks(r50, (False, True, True, True), 1)
    assert [sum(s) for s in every] == [0, 4, 6, 3]                            # all 13 blocks of conv3-conv5
    third = dcn_blocks(r50, (False, True, True, True), 3)
    assert third == [[False] * 3, [True, False, False, True], [True, False, False, True, False, False],
                     [True, False, False]]
    # the official R-101 base config (interval 3): the paper's 11 deformable layers
    assert sum(map(sum, dcn_blocks((3, 4, 23, 3), (False, True, True, True), 3))) == 11
    with pytest.raises(ValueError, match="dcn_interval"):
        dcn_blocks(r50, (False, True, True, True), 0)


def test_backbone_puts_modulated_deformable_convs_where_planned():
    every = build().backbone
    assert len(every.deformable_blocks()) == 13 and not any(n.startswith('layer1') for n in every.deformable_blocks())
    assert type(every.layer2[0].conv2).__name__ == 'ModulatedDeformConv2dPack'
    third = build(backbone__dcn_interval=3).backbone
    assert third.deformable_blocks() == ['layer2.0', 'layer2.3', 'layer3.0', 'layer3.3', 'layer4.0']
    assert type(third.layer3[1].conv2) is torch.nn.Conv2d and third.layer3[1].conv2.stride == (1, 1)
    # stride-2 blocks keep their stride whether deformable or not
    assert third.layer3[0].conv2.stride in (2, (2, 2))
    x = torch.randn(1, 3, 64, 64)
    assert [tuple(f.shape) for f in third(x)] == [(1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 4, 4), (1, 2048, 2, 2)]


# ------------------------------------------------------------------------------------------------ neck
def test_fpn_builds_p6_from_p5_output_with_relu_on_p3_to_p5_only():
    torch.manual_seed(0)
    fpn = YOLACTPlusFPN(in_channels=[256, 512, 1024, 2048], out_channels=16, start_level=1, num_outs=5)
    fpn.init_weights()
    feats = [torch.randn(1, c, s, s) for c, s in ((256, 40), (512, 20), (1024, 10), (2048, 5))]
    outs = fpn(feats)
    assert [tuple(o.shape[-2:]) for o in outs] == [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2)]
    assert all((o >= 0).all() for o in outs[:3])                             # ReLU after the output convs
    assert torch.allclose(outs[3], fpn.fpn_convs[3](outs[2]))                 # P6 = conv(rectified P5)
    assert torch.allclose(outs[4], fpn.fpn_convs[4](outs[3]))                 # P7 = conv(P6), no ReLU between
    assert (outs[3] < 0).any()
    assert fpn.fpn_convs[3].conv.in_channels == 16                           # from P5 (256 at paper scale), not C5
    with pytest.raises(ValueError, match="on_output"):
        YOLACTPlusFPN(in_channels=[256, 512], out_channels=8, num_outs=3, add_extra_convs='on_input')


# -------------------------------------------------------------------------------- re-scoring network
def test_fast_mask_iou_net_shape_and_size():
    net = FastMaskIoUNet(80)
    assert sum(p.numel() for p in net.parameters()) == MASKIOU_NET
    convs = [m for m in net.convs if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64, 128, 80]
    assert [c.stride for c in convs] == [(2, 2)] * 5 + [(1, 1)] and all(c.padding == (0, 0) for c in convs)
    assert sum(isinstance(m, torch.nn.ReLU) for m in net.convs) == 6         # a ReLU after every conv
    out = net(torch.rand(7, 1, 138, 138))                                    # 550 input: 138x138 prototypes
    assert out.shape == (7, 80) and (out >= 0).all()
    # smaller than the 63 px the five unpadded stride-2 convs need: padded with background, same as padding by hand
    assert net.min_size == 63
    small = torch.rand(2, 1, 32, 40)
    assert torch.allclose(net(small), net(torch.nn.functional.pad(small, (0, 23, 0, 31))))


def test_mask_iou():
    a = torch.zeros(3, 10, 10)
    b = torch.zeros(3, 10, 10)
    a[0, :5], b[0, :, :5] = 1, 1          # 25 / 75
    a[1], b[1] = 1, 1                     # 1
    got = mask_iou(a, b)
    assert torch.allclose(got, torch.tensor([25 / 75, 1.0, 0.0]))          # empty union -> 0


def test_maskiou_targets_are_the_iou_of_the_binarised_crop_with_the_gt():
    """A predicted mask covering the ground-truth box's left 3/4 (value 0.8) and a stray blob outside the box
    (cropped away): the target is 0.75, the input the cropped, unthresholded mask; a ground truth of <= 25
    prototype pixels is left out."""
    head = build(num_classes=3).mask_head
    h = w = 32
    pred = torch.zeros(h, w, 2)
    pred[8:24, 8:20, 0] = 0.8                 # inside the gt box 8..24 x 8..24: 16 x 12 of its 16 x 16
    pred[0:4, 28:32, 0] = 0.9                 # outside the box: cropped
    pred[2:6, 2:6, 1] = 0.9
    sample = make_sample((64, 64), [(16, 16, 48, 48), (4, 4, 12, 12)], [2, 1])   # the second: 4x4 at 32x32
    info = InstanceData(pos_assigned_gt_inds=torch.tensor([0, 1]), pos_inds=torch.tensor([5, 9]),
                        coeffs=torch.zeros(2, 32), bboxes=sample.gt_instances.bboxes.clone())
    inputs, targets, labels = head.maskiou_targets([pred], [sample.gt_instances], [sample.metainfo], [info])
    assert inputs.shape == (1, 1, h, w) and labels.tolist() == [2]
    assert torch.allclose(targets, torch.tensor([0.75]))
    assert inputs[0, 0, 0:4, 28:32].abs().sum() == 0 and torch.isclose(inputs[0, 0, 10, 10], torch.tensor(0.8))


# ------------------------------------------------------------------------------------- build, params
def test_paper_scale_parameter_count():
    """Table 10 prints no #params (its columns: size, FPS, AP...). The count is the official layout's:
    33,762,876 trainable = 33.76 M, issue 28's "about 33.8 M"; the official DCNv2 layer's biases would add
    3,584 (33,766,460); DCN every 3rd block gives 33,202,788; mmdet YOLACT's P6-from-C5 neck +4,128,768."""
    from bench.recipes import Catalogue

    table = Catalogue().load('amf-sparseinst/table-10')
    assert 'params_M' not in {c.key for c in table.columns}
    assert 'params_M' not in table.row('yolact-pp-r50-dcn-550').published
    model = build()
    n = trainable(model)
    print(f'YOLACT++ R-50-DCN: {n} trainable (official layout with DCN biases {n + DCN_BIASES})')
    assert n == MEASURED and round(n / 1e6, 1) == ISSUE_ABOUT_M
    assert sum(p.numel() for p in model.mask_head.maskiou_net.parameters()) == MASKIOU_NET
    assert trainable(build(backbone__dcn_interval=3)) == MEASURED_INTERVAL3
    assert trainable(build(neck__type='FPN', neck__add_extra_convs='on_input')) == MEASURED + ON_INPUT_EXTRA


def test_anchors_three_scales_per_octave_and_three_ratios():
    head = build().bbox_head
    assert head.num_base_priors == 9
    base = head.prior_generator.base_anchors[0]                              # P3
    w, h = base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]
    square = torch.isclose(w, h)
    assert sorted(w[square].tolist()) == pytest.approx([24, 24 * 2 ** (1 / 3), 24 * 2 ** (2 / 3)], rel=1e-4)
    ratios = sorted(set(round((h / w).item(), 3) for h, w in zip(h, w)))
    assert ratios == [0.5, 1.0, 2.0]
    biggest = head.prior_generator.base_anchors[4]
    assert (biggest[:, 2] - biggest[:, 0]).max() > 384                       # P7: 384 x 2^(2/3) x sqrt(2)
    assert head.conv_cls.out_channels == 9 * 81 and head.conv_coeff.out_channels == 9 * 32


def test_backbone_init_and_training_setup_are_the_official_ones():
    cfg = Config.fromfile(str(CONFIG))
    assert cfg.model.backbone.init_cfg == dict(type='Pretrained', checkpoint='torchvision://resnet50')
    assert cfg.model.backbone.frozen_stages == -1 and cfg.model.backbone.norm_cfg.requires_grad
    assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.max_iters == 800_000
    steps = next(s for s in cfg.param_scheduler if s.type == 'MultiStepLR')
    assert steps.milestones == [280_000, 600_000, 700_000, 750_000] and steps.by_epoch is False
    assert cfg.optim_wrapper.optimizer == dict(type='SGD', lr=1e-3, momentum=0.9, weight_decay=5e-4)
    assert cfg.train_dataloader.batch_size == 8
    assert cfg.model.mask_head.loss_maskiou_weight == 25 and cfg.model.mask_head.discard_mask_area == 25


# ------------------------------------------------------------------------------------ train, predict
def _batch(h: int = 128, w: int = 128):
    g = torch.Generator().manual_seed(0)
    return dict(
        inputs=[torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for _ in range(2)],
        data_samples=[make_sample((h, w), [(4, 4, 60, 50), (70, 20, 124, 110)], [0, 1]),
                      make_sample((h, w), [(10, 12, 100, 90)], [2], ori_hw=(256, 256))])


def test_loss_has_the_rescoring_term_and_it_reaches_the_mask_branch():
    torch.manual_seed(0)
    model = build(num_classes=3)
    model.init_weights()
    model.train()
    data = model.data_preprocessor(_batch(), True)
    losses = model(**data, mode='loss')
    assert {'loss_cls', 'loss_bbox', 'loss_mask', 'loss_segm', 'loss_maskiou'} <= set(losses)
    total = sum(v if isinstance(v, torch.Tensor) else sum(v) for v in losses.values())
    assert torch.isfinite(total)
    assert losses['loss_maskiou'] > 0
    model.zero_grad()
    losses['loss_maskiou'].backward()
    net = model.mask_head.maskiou_net
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    # not detached (the official code): the re-scoring loss reaches the prototypes and the coefficients
    assert model.mask_head.protonet[0].weight.grad.abs().sum() > 0
    assert model.bbox_head.conv_coeff.weight.grad.abs().sum() > 0

    detached = build(num_classes=3, mask_head__detach_maskiou_input=True)
    detached.load_state_dict(model.state_dict())
    detached.train()
    torch.manual_seed(0)
    loss = detached(**data, mode='loss')['loss_maskiou']
    loss.backward()
    assert detached.mask_head.protonet[0].weight.grad is None or detached.mask_head.protonet[0].weight.grad.abs().sum() == 0
    assert all(p.grad.abs().sum() > 0 for p in detached.mask_head.maskiou_net.parameters())


def test_the_rescoring_net_learns_the_mask_iou():
    """The mask head's own loss (``loss_by_feat``) on one batch's features, computed once, with only the
    re-scoring net in the optimizer (so its inputs and IoU targets stay fixed): 40 SGD steps bring the
    re-scoring loss (smooth L1 x 25 / positives) down by more than half, and its predictions for the
    ground-truth classes close to the IoU targets."""
    torch.manual_seed(0)
    model = build(num_classes=3)
    model.init_weights()
    model.train()
    head = model.mask_head
    data = model.data_preprocessor(_batch(), True)
    gts = [s.gt_instances for s in data['data_samples']]
    metas = [s.metainfo for s in data['data_samples']]
    with torch.no_grad():
        x = model.extract_feat(data['inputs'])
        model.bbox_head.loss(x, data['data_samples'])
        infos = model.bbox_head.get_positive_infos()
        masks, segm = head(x, infos)
    assert all(len(i) <= head.max_masks_to_train for i in infos)       # no random subset: fixed samples
    opt = torch.optim.SGD(head.maskiou_net.parameters(), lr=0.01, momentum=0.9)
    history = []
    for _ in range(40):
        loss = head.loss_by_feat(masks, segm, gts, metas, infos)['loss_maskiou']
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    print('loss_maskiou', [round(v, 4) for v in history[::5]], round(history[-1], 4))
    assert all(np.isfinite(history)) and history[-1] < 0.5 * history[0], history
    with torch.no_grad():
        inputs, targets, labels = head.maskiou_targets(masks, gts, metas, infos)
        pred = head.maskiou_net(inputs).gather(1, labels[:, None]).squeeze(1)
    assert len(targets) > 5 and (targets > 0).any()
    print('mean |pred - target|', (pred - targets).abs().mean().item(), 'mean target', targets.mean().item())
    assert (pred - targets).abs().mean() < 0.5 * targets.abs().mean(), (pred, targets)


def test_small_masks_train_no_rescoring_and_give_a_zero_loss():
    model = build(num_classes=3)
    model.train()
    sample = make_sample((128, 128), [(10, 10, 20, 20)], [1])     # 10x10 px -> 2.5x2.5 at 32x32 prototypes
    data = model.data_preprocessor(dict(inputs=[torch.zeros(3, 128, 128, dtype=torch.uint8)], data_samples=[sample]), True)
    losses = model(**data, mode='loss')
    assert losses['loss_maskiou'] == 0
    losses['loss_maskiou'].backward()                               # still in the graph


def test_no_object_gives_finite_losses():
    model = build(num_classes=3)
    model.train()
    empty = make_sample((64, 64), [], [])
    data = model.data_preprocessor(dict(inputs=[torch.zeros(3, 64, 64, dtype=torch.uint8)], data_samples=[empty]), True)
    losses = model(**data, mode='loss')
    assert losses['loss_maskiou'] == 0
    total = sum(v if isinstance(v, torch.Tensor) else sum(v) for v in losses.values())
    assert torch.isfinite(total)
    total.backward()


def test_predicts_rescored_masks_at_the_original_size():
    """With the re-scoring net's last conv set to a constant per class (0.2, 0.5, 0.8: zero weights, those
    biases), every score is the unrescored score times its class's constant, the detections are those of the
    same model without rescoring, sorted by the new score, and the masks come at the original image size."""
    torch.manual_seed(0)
    model = build(num_classes=3)
    model.init_weights()
    last = model.mask_head.maskiou_net.convs[-2]
    iou_of_class = torch.tensor([0.2, 0.5, 0.8])
    last.weight.data.zero_()
    last.bias.data.copy_(iou_of_class)
    plain = build(num_classes=3, mask_head__rescore=False)
    plain.load_state_dict(model.state_dict())
    model.eval()
    plain.eval()
    with torch.no_grad():
        out = model(**model.data_preprocessor(_batch(), False), mode='predict')
        ref = plain(**plain.data_preprocessor(_batch(), False), mode='predict')
    for sample, base, ori in zip(out, ref, [(128, 128), (256, 256)]):
        p, q = sample.pred_instances, base.pred_instances
        assert len(p) == len(q) > 0 and p.masks.shape[1:] == ori and p.masks.dtype == torch.bool
        assert torch.allclose(p.scores, p.box_scores * iou_of_class[p.labels])
        assert (p.scores[:-1] >= p.scores[1:]).all()
        assert torch.allclose(p.box_scores.sort().values, q.scores.sort().values)
        assert sorted(p.labels.tolist()) == sorted(q.labels.tolist())
        assert not hasattr(q, 'box_scores')


def test_recipe_row_is_runnable_approximate_and_uses_this_config():
    from bench.recipes import Catalogue
    from bench.resolve import row_status
    from bench.vocab import RowStatus

    row = Catalogue().load('amf-sparseinst/table-10').row('yolact-pp-r50-dcn-550')
    assert row_status(row)[0] is RowStatus.RUNNABLE
    assert row.reference_only is None
    assert row.model.config == 'bench::yolact_plus/yolact_plus_r50_fpn_800k_coco.py'
    assert row.fidelity == 'approximate' and len(row.deviations) >= 3
    assert row.train.iters == 800_000 and row.train.batch_size == 8 and row.train.lr == 1e-3
    assert row.train.lr_steps == [280_000, 600_000, 700_000, 750_000]


@pytest.mark.slow
def test_smoke_tiny_run_trains_and_evaluates(tmp_path):
    """`bench run amf-sparseinst/table-10 yolact-pp-r50-dcn-550` at the tiny smoke scale, in this process's
    environment: a real train -> evaluate -> result cycle whose result file says done, with mask AP measured."""
    smoke_tiny_result('amf-sparseinst/table-10', 'yolact-pp-r50-dcn-550', tmp_path)
