"""A compared-system port learns end to end: train its paper-scale model (one class, no pretrained weights) on
one 128x128 image holding one ellipse, SGD lr 0.002 momentum 0.9, gradient clip 35, and every 10 iterations print
the losses and how well the top-scoring detection fits the ellipse. A check that targets, losses, decoding and
mask assembly agree, not an accuracy: nothing here is comparable to the paper.

    PYTHONPATH=. .venv/bin/python benchmarks/overfit.py SYSTEM [--iters N]   (output: SYSTEM_overfit.txt)

SYSTEM: polarmask (two-tower head; top mask IoU), yolact_plus (with the fast mask re-scoring net: top mask IoU
and the IoU it predicts), centermask (FCOS towers, SAG-Mask, MaskIoU head: top box IoU and its mask IoU).
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox_overlaps
from mmdet.utils import register_all_modules

register_all_modules()
import bench.models  # noqa: E402,F401
from tests.models.samples import make_sample  # noqa: E402

BOX = (20, 38, 101, 95)
yy, xx = np.mgrid[:128, :128]
ELLIPSE = (((xx - 60) / 40.0) ** 2 + ((yy - 66) / 28.0) ** 2 <= 1).astype(np.uint8)


def mask_iou(mask) -> float:
    best, gt = mask.numpy(), ELLIPSE.astype(bool)
    return float((best & gt).sum() / max((best | gt).sum(), 1))


def _polarmask(cfg):
    cfg.model.bbox_head.num_classes = 1
    cfg.model.test_cfg.score_thr = 0.0


def _yolact_plus(cfg):
    cfg.model.bbox_head.num_classes = 1
    cfg.model.mask_head.num_classes = 1


def _centermask(cfg):
    for part in (cfg.model.bbox_head, cfg.model.roi_head.mask_head, cfg.model.roi_head.mask_iou_head):
        part.num_classes = 1
    cfg.model.test_cfg.fcos.score_thr = 0.0


def _fit_mask(pred) -> str:
    return f'top mask IoU {mask_iou(pred.masks[pred.scores.argmax()]):.3f}'


def _fit_rescored(pred) -> str:
    i = int(pred.scores.argmax())
    predicted = float(pred.scores[i] / pred.box_scores[i].clamp(min=1e-12))
    return f'top mask IoU {mask_iou(pred.masks[i]):.3f}, predicted IoU {predicted:.3f}'


def _fit_box(pred) -> str:
    i = pred.scores.argmax()
    box_iou = bbox_overlaps(pred.bboxes[i:i + 1], torch.tensor([BOX], dtype=torch.float32)).item()
    return f'top box IoU {box_iou:.3f}, its mask IoU {mask_iou(pred.masks[i]):.3f}'


SYSTEMS = {  # name: (config, one-class tweak, what the top detection is judged by, default iterations)
    'polarmask': ('bench/configs/polarmask/polarmask_r50_fpn_1x_coco.py', _polarmask, _fit_mask, 40),
    'yolact_plus': ('bench/configs/yolact_plus/yolact_plus_r50_fpn_800k_coco.py', _yolact_plus, _fit_rescored, 60),
    'centermask': ('bench/configs/centermask/centermask_lite_r50_fpn_ms_4x_coco.py', _centermask, _fit_box, 60),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('system', choices=sorted(SYSTEMS))
    ap.add_argument('--iters', type=int, default=None)
    args = ap.parse_args()
    config, tweak, fit, default_iters = SYSTEMS[args.system]
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    torch.manual_seed(0)
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    tweak(cfg)
    model = MODELS.build(cfg.model)
    model.init_weights()
    sample = make_sample((128, 128), [BOX], [0])
    sample.gt_instances.masks.masks[:] = ELLIPSE[None]
    img = torch.from_numpy(np.stack([ELLIPSE * 200 + 20] * 3)).to(torch.uint8)
    train = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), True)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.002, momentum=0.9)

    def top() -> str:
        model.eval()
        with torch.no_grad():
            test = model.data_preprocessor(dict(inputs=[img], data_samples=[make_sample((128, 128), [BOX], [0])]), False)
            pred = model(**test, mode='predict')[0].pred_instances
        model.train()
        return fit(pred) if len(pred) else 'no detection'

    def value(v) -> torch.Tensor:   # a loss may come as a list (one per level or image)
        return v if isinstance(v, torch.Tensor) else sum(v)

    start = time.time()
    print(f'iteration 0: {top()}')
    for it in range(1, (args.iters or default_iters) + 1):
        losses = model(**train, mode='loss')
        opt.zero_grad()
        sum(value(v) for v in losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35)
        opt.step()
        if it % 10 == 0:
            parts = ', '.join(f'{k} {value(v).item():.3f}' for k, v in losses.items())
            print(f'iteration {it}: {parts}; {top()} ({time.time() - start:.0f} s)')


if __name__ == '__main__':
    main()
