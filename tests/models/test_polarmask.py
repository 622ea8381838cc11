"""Tests of the PolarMask port (bench/models/polarmask.py): the geometry (rays, centerness, polygons), the
Polar IoU loss, the target assignment, the paper-scale build against csr-d2s Table I's #params cell, one
training step and inference on CPU, and a real smoke-tiny `bench run` of the recipe row."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

register_all_modules()
import bench.models  # noqa: E402,F401  (registers the components)
from bench.models.polarmask import (MIN_RAY, PolarIoULoss, largest_contour, mass_center,  # noqa: E402
                                    polar_centerness, polar_ray_targets, polygons_to_masks, ray_angles,
                                    rays_to_polygons)
from tests.models.samples import make_sample, smoke_tiny_result  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / 'bench' / 'configs' / 'polarmask' / 'polarmask_r50_fpn_1x_coco.py'
MEASURED_TWO_TOWERS = 32_093_562     # trainable, ResNet-50 frozen_stages=1 and frozen BN, after model.train()
MEASURED_THREE_TOWERS = 34_464_131   # + the official code's box tower (4 convs + GN, 4-channel output)
PUBLISHED_M = 32.09                  # csr-d2s Table I, PolarMask row (printed to 0.01M)


def build(num_classes: int = 80, **head) -> torch.nn.Module:
    cfg = Config.fromfile(str(CONFIG))
    cfg.model.backbone.init_cfg = None
    cfg.model.bbox_head.num_classes = num_classes
    cfg.model.bbox_head.update(head)
    return MODELS.build(cfg.model)


def trainable(model) -> int:
    model.train()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------------ geometry
def _square(x1, y1, x2, y2) -> torch.Tensor:
    return torch.tensor([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=torch.float32)


def test_rays_from_the_centre_of_a_square_meet_its_sides():
    angles = ray_angles(36)
    assert torch.allclose(angles[9], torch.tensor(math.pi / 2))          # ray 9 points down (+y)
    d = polar_ray_targets(torch.tensor([[10.0, 10.0]]), _square(0, 0, 20, 20), angles)[0]
    expected = 10 / torch.maximum(angles.cos().abs(), angles.sin().abs())  # the distance to a square's side
    assert torch.allclose(d, expected, atol=1e-4)
    assert torch.isclose(d[0], torch.tensor(10.0)) and torch.isclose(d[9], torch.tensor(10.0), atol=1e-4)
    assert torch.isclose(d[4], torch.tensor(10 / math.cos(math.radians(40))), atol=1e-4)


def test_the_farthest_intersection_is_taken_and_a_ray_that_misses_gets_the_minimum():
    # a U: the ray from inside the left arm to the right crosses the gap and ends at the right arm's far side
    u = torch.tensor([[0, 0], [30, 0], [30, 30], [20, 30], [20, 10], [10, 10], [10, 30], [0, 30]], dtype=torch.float32)
    d = polar_ray_targets(torch.tensor([[5.0, 20.0]]), u, ray_angles(36))[0]
    assert torch.isclose(d[0], torch.tensor(25.0))                          # x = 5 -> 30, not 5 -> 10
    # from outside the square, the rays pointing away meet nothing
    d = polar_ray_targets(torch.tensor([[-10.0, 10.0]]), _square(0, 0, 20, 20), ray_angles(36))[0]
    assert torch.isclose(d[0], torch.tensor(30.0)) and d[18] == MIN_RAY and (d == MIN_RAY).sum() >= 17


def test_polar_centerness_is_one_for_a_circle_and_small_off_centre():
    yy, xx = np.mgrid[:101, :101]
    disk = ((xx - 50) ** 2 + (yy - 50) ** 2 <= 40 ** 2).astype(np.uint8)
    c = torch.from_numpy(largest_contour(disk))
    cx, cy = mass_center(largest_contour(disk))
    assert abs(cx - 50.5) < 0.5 and abs(cy - 50.5) < 0.5                      # pixel centres are at +0.5
    angles = ray_angles(36)
    rays = polar_ray_targets(torch.tensor([[cx, cy], [cx + 30, cy]]), c, angles)
    ctr = polar_centerness(rays)
    assert ctr[0] > 0.97 and ctr[1] < 0.5
    assert torch.allclose(ctr, (rays.min(1).values / rays.max(1).values).sqrt())


def test_rays_to_polygon_to_mask_recovers_a_convex_mask():
    """The target rays of a disk, assembled into a 36-gon and filled, cover the disk (IoU > 0.97): the
    encoding and the decoding agree on the angles and on the pixel convention."""
    yy, xx = np.mgrid[:120, :160]
    disk = ((xx - 70) ** 2 + (yy - 60) ** 2 <= 45 ** 2)
    contour = torch.from_numpy(largest_contour(disk.astype(np.uint8)))
    centre = torch.tensor([mass_center(contour.numpy())])
    angles = ray_angles(36)
    polys = rays_to_polygons(centre, polar_ray_targets(centre, contour, angles), angles, (120, 160))
    got = polygons_to_masks(polys, (120, 160))[0].numpy()
    iou = (got & disk).sum() / (got | disk).sum()
    assert iou > 0.97, iou


def test_largest_contour_keeps_the_biggest_part_and_none_for_empty():
    m = np.zeros((50, 50), np.uint8)
    m[2:6, 2:6] = 1
    m[20:40, 10:45] = 1
    c = largest_contour(m)
    assert c[:, 0].min() == 10.5 and c[:, 0].max() == 44.5 and c[:, 1].min() == 20.5
    assert largest_contour(np.zeros((5, 5), np.uint8)) is None


# ------------------------------------------------------------------------------------------------ loss
def test_polar_iou_loss():
    t = torch.tensor([[10.0] * 36, [5.0] * 36])
    loss = PolarIoULoss()
    assert loss(t, t) == 0
    assert torch.isclose(loss(2 * t, t), torch.tensor(math.log(2)))          # sum max / sum min = 2
    assert torch.isclose(loss(t / 4, t), torch.tensor(math.log(4)))
    w = torch.tensor([1.0, 0.0])
    p = torch.stack([t[0] * 2, t[1] * 8])
    assert torch.isclose(loss(p, t, weight=w, avg_factor=1.0), torch.tensor(math.log(2)))
    assert torch.isclose(PolarIoULoss(loss_weight=3.0)(p, t, weight=w, avg_factor=2.0), torch.tensor(1.5 * math.log(2)))


# --------------------------------------------------------------------------------------------- targets
def test_targets_are_centre_samples_on_the_level_of_the_object_size():
    """One 60x40 box in a 128x128 image: positives only on stride 8 (its largest side distance is 30-60),
    within 1.5 strides (12 px) of its mass centre; each positive's rays are its own distances to the
    contour; the other locations are background (label = num_classes)."""
    head = build(num_classes=3).bbox_head
    sample = make_sample((128, 128), [(30, 40, 90, 80)], [2])
    points = head.prior_generator.grid_priors([(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)], device='cpu')
    labels, rays, boxes = head.get_targets(points, [sample.gt_instances])
    pos = labels < 3
    flat = torch.cat(points)
    assert labels[pos].unique().tolist() == [2]
    assert pos[:256].sum() == pos.sum() > 0                                    # level 0 (stride 8) only
    cx, cy = 60.0, 60.0                                                       # the box mask's mass centre
    assert ((flat[pos] - torch.tensor([cx, cy])).abs() < 12).all()
    assert ((flat[:256] - torch.tensor([cx, cy])).abs() < 12).all(1).sum() == pos.sum()
    contour = torch.from_numpy(largest_contour(sample.gt_instances.masks.masks[0]))
    assert torch.allclose(rays[pos], polar_ray_targets(flat[pos], contour, ray_angles(36)))
    assert (rays[~pos] == 0).all() and (boxes[pos] > 0).all()


def test_mass_and_box_centre_sampling_differ_for_an_l_shape():
    h = w = 128
    mask = np.zeros((1, h, w), np.uint8)
    mask[0, 8:120, 8:40] = 1
    mask[0, 88:120, 8:120] = 1                                               # an L: mass centre low-left
    sample = make_sample((h, w), [(8, 8, 120, 120)], [0])
    sample.gt_instances.masks.masks[:] = mask
    got = {}
    for mode in ('mass', 'box'):
        head = build(num_classes=1, center_sampling=mode).bbox_head
        points = head.prior_generator.grid_priors([(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)], device='cpu')
        labels, _, _ = head.get_targets(points, [sample.gt_instances])
        got[mode] = torch.cat(points)[labels == 0].mean(0)
    assert got['mass'][0] < got['box'][0] - 8 and got['mass'][1] > got['box'][1] + 8, got  # left and lower
    assert torch.allclose(got['box'], torch.tensor([64.0, 64.0]), atol=8)


def test_bad_center_sampling_is_refused():
    with pytest.raises(ValueError, match="center_sampling"):
        build(center_sampling='centroid')


# ------------------------------------------------------------------------------------- build, params
def test_paper_scale_parameter_count_matches_table_i():
    """The paper's two-tower head: 32,093,562 trainable = 32.09M printed; the official code's three
    towers would print 34.46M (polarmask.md)."""
    n = trainable(build())
    print(f'PolarMask two towers: {n} trainable, Table I {PUBLISHED_M}M')
    assert n == MEASURED_TWO_TOWERS and round(n / 1e6, 2) == PUBLISHED_M
    assert trainable(build(bbox_branch=True)) == MEASURED_THREE_TOWERS


def test_backbone_init_is_torchvision_resnet50():
    cfg = Config.fromfile(str(CONFIG))
    assert cfg.model.backbone.init_cfg == dict(type='Pretrained', checkpoint='torchvision://resnet50')
    assert cfg.model.bbox_head.num_rays == 36 and cfg.model.bbox_head.bbox_branch is False


# ------------------------------------------------------------------------------------ train, predict
def _batch():
    g = torch.Generator().manual_seed(0)
    return dict(
        inputs=[torch.randint(0, 256, (3, 128, 160), generator=g, dtype=torch.uint8),
                torch.randint(0, 256, (3, 128, 128), generator=g, dtype=torch.uint8)],
        data_samples=[make_sample((128, 160), [(4, 4, 60, 50), (70, 20, 150, 110)], [0, 1]),
                      make_sample((128, 128), [(10, 12, 100, 90)], [2], ori_hw=(256, 256))])


@pytest.mark.parametrize('bbox_branch', [False, True], ids=['two-towers', 'three-towers'])
def test_trains_and_the_loss_falls(bbox_branch):
    torch.manual_seed(0)
    model = build(num_classes=3, bbox_branch=bbox_branch)
    model.init_weights()
    bias = model.bbox_head.conv_cls.bias
    assert torch.allclose(bias, torch.full_like(bias, -math.log(99)), atol=1e-4)   # focal prior 0.01
    model.train()
    data = model.data_preprocessor(_batch(), True)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.002, momentum=0.9)
    history = []
    for step in range(4 if not bbox_branch else 1):   # the loss's fall is checked on the paper's head
        losses = model(**data, mode='loss')
        want = {'loss_cls', 'loss_mask', 'loss_centerness'} | ({'loss_bbox'} if bbox_branch else set())
        assert set(losses) == want and all(torch.isfinite(v) for v in losses.values())
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        if step == 0:
            # every head weight gets a gradient, but a level's ray scale only where the level has positives
            # (these objects are 40-90 px: strides 8 and 16)
            none = [n for n, p in model.bbox_head.named_parameters() if p.grad is None or not p.grad.abs().sum()]
            assert none == [f'{b}_scales.{i}.scale' for b in ('mask', 'bbox')[:1 + bbox_branch] for i in (2, 3, 4)], none
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35)
        opt.step()
        history.append(losses['loss_mask'].item())
    assert bbox_branch or history[-1] < history[0], history


def test_no_object_gives_finite_losses_and_zero_mask_loss():
    model = build(num_classes=3)
    model.train()
    empty = make_sample((64, 64), [], [])
    data = model.data_preprocessor(dict(inputs=[torch.zeros(3, 64, 64, dtype=torch.uint8)], data_samples=[empty]), True)
    losses = model(**data, mode='loss')
    assert losses['loss_mask'] == 0 and losses['loss_centerness'] == 0 and torch.isfinite(losses['loss_cls'])
    sum(losses.values()).backward()


def test_predicts_polygon_masks_at_the_original_size():
    torch.manual_seed(0)
    model = build(num_classes=3)
    model.init_weights()
    model.bbox_head.test_cfg = dict(nms_pre=50, score_thr=0.0, nms=dict(type='nms', iou_threshold=0.5), max_per_img=7)
    model.eval()
    with torch.no_grad():
        out = model(**model.data_preprocessor(_batch(), False), mode='predict')
    for sample, ori in zip(out, [(128, 160), (256, 256)]):
        p = sample.pred_instances
        assert len(p) == 7 and p.masks.shape == (7, *ori) and p.masks.dtype == torch.bool
        assert (p.scores[:-1] >= p.scores[1:]).all() and (p.labels < 3).all()
        # no box branch: each box is its mask polygon's bounding box (the mask fills inside it)
        for box, mask in zip(p.bboxes, p.masks):
            if mask.any():
                ys, xs = mask.nonzero(as_tuple=True)
                assert xs.min() >= box[0] - 1 and xs.max() <= box[2] and ys.min() >= box[1] - 1 and ys.max() <= box[3]


def test_perfect_rays_decode_to_the_ground_truth_mask_at_the_original_scale():
    """Predictions equal to the targets (class logit high at the positives, rays = their ray targets)
    decode, after NMS and the rescale to the original image (2x here), to a mask whose IoU with the
    ground truth is above 0.9, and to its box: the head's encoding and decoding agree end to end."""
    head = build(num_classes=2).bbox_head
    yy, xx = np.mgrid[:128, :128]
    disk = (((xx - 60) / 40.0) ** 2 + ((yy - 70) / 28.0) ** 2 <= 1).astype(np.uint8)   # an ellipse
    sample = make_sample((128, 128), [(20, 42, 101, 99)], [1], ori_hw=(256, 256))
    sample.gt_instances.masks.masks[:] = disk[None]
    sizes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    points = head.prior_generator.grid_priors(sizes, device='cpu')
    labels, rays, _ = head.get_targets(points, [sample.gt_instances])
    assert (labels == 1).sum() > 0
    cls, ray, ctr, start = [], [], [], 0
    for h, w in sizes:
        n = h * w
        logit = torch.full((n, 2), -10.0)
        logit[labels[start:start + n] == 1, 1] = 10.0
        r = rays[start:start + n].clamp(min=1e-3)
        cls.append(logit.T.reshape(1, 2, h, w))
        ray.append(r.T.reshape(1, 36, h, w))
        ctr.append(torch.zeros(1, 1, h, w))
        start += n
    meta = dict(img_shape=(128, 128), ori_shape=(256, 256), scale_factor=(0.5, 0.5))
    cfg = dict(nms_pre=1000, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)
    out = head.predict_by_feat(cls, ray, ctr, [None] * 5, batch_img_metas=[meta], cfg=cfg, rescale=True)[0]
    assert len(out) >= 1 and (out.labels == 1).all() and out.masks.shape[1:] == (256, 256)
    gt = torch.from_numpy(np.kron(disk, np.ones((2, 2), np.uint8))).bool()
    best = out.masks[out.scores.argmax()]
    iou = (best & gt).sum() / (best | gt).sum()
    assert iou > 0.9, iou
    box = out.bboxes[out.scores.argmax()]
    assert torch.allclose(box, torch.tensor([40.0, 84.0, 202.0, 198.0]), atol=6), box


# ----------------------------------------------------------------------------------- the recipe row
def test_recipe_row_is_runnable_approximate_and_uses_this_config():
    from bench.recipes import Catalogue
    from bench.resolve import row_status
    from bench.vocab import RowStatus

    row = Catalogue().load('csr-d2s/table-i').row('polarmask')
    assert row_status(row)[0] is RowStatus.RUNNABLE
    assert row.model.config == 'bench::polarmask/polarmask_r50_fpn_1x_coco.py'
    assert row.fidelity == 'approximate' and len(row.deviations) >= 3
    assert row.train.optimizer == 'SGD' and row.train.lr == 0.01 and row.train.batch_size == 16


@pytest.mark.slow
def test_smoke_tiny_run_trains_and_evaluates(tmp_path):
    """`bench run csr-d2s/table-i polarmask` at the tiny smoke scale, in this process's environment: a real
    train -> evaluate -> result cycle whose result file says done, with mask AP measured."""
    smoke_tiny_result('csr-d2s/table-i', 'polarmask', tmp_path)
