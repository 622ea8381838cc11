"""CenterMask-Lite (bench/models/centermask.py) learns end to end: train the paper-scale model (ResNet-50-FPN 128,
FCOS 2-conv towers, SAG-Mask, MaskIoU head; one class, no pretrained weights) on one 128x128 image holding one
ellipse, SGD lr 0.002 momentum 0.9, gradient clip 35, and every 10 iterations print the losses, the top-scoring
detection's box IoU and its mask's IoU with the ground truth. A check that FCOS targets, the RoI part (level
map, SAG-Mask, MaskIoU) and mask pasting agree, not an accuracy: nothing here is comparable to the paper.

    PYTHONPATH=. .venv/bin/python benchmarks/centermask_overfit.py [--iters 60]   (output: centermask_overfit.txt)
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

CONFIG = 'bench/configs/centermask/centermask_lite_r50_fpn_ms_4x_coco.py'
BOX = (20, 38, 101, 95)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--iters', type=int, default=60)
    args = ap.parse_args()
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    torch.manual_seed(0)
    cfg = Config.fromfile(CONFIG)
    cfg.model.backbone.init_cfg = None
    for part in (cfg.model.bbox_head, cfg.model.roi_head.mask_head, cfg.model.roi_head.mask_iou_head):
        part.num_classes = 1
    cfg.model.test_cfg.fcos.score_thr = 0.0
    model = MODELS.build(cfg.model)
    model.init_weights()
    yy, xx = np.mgrid[:128, :128]
    ellipse = (((xx - 60) / 40.0) ** 2 + ((yy - 66) / 28.0) ** 2 <= 1).astype(np.uint8)
    sample = make_sample((128, 128), [BOX], [0])
    sample.gt_instances.masks.masks[:] = ellipse[None]
    img = torch.from_numpy(np.stack([ellipse * 200 + 20] * 3)).to(torch.uint8)
    train = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), True)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.002, momentum=0.9)

    def top() -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            test = model.data_preprocessor(dict(inputs=[img], data_samples=[make_sample((128, 128), [BOX], [0])]), False)
            pred = model(**test, mode='predict')[0].pred_instances
        model.train()
        i = pred.scores.argmax()
        box_iou = bbox_overlaps(pred.bboxes[i:i + 1], torch.tensor([BOX], dtype=torch.float32)).item()
        best, gt = pred.masks[i].numpy(), ellipse.astype(bool)
        return box_iou, float((best & gt).sum() / max((best | gt).sum(), 1))

    start = time.time()
    b, m = top()
    print(f'iteration 0: top box IoU {b:.3f}, its mask IoU {m:.3f}')
    for it in range(1, args.iters + 1):
        losses = model(**train, mode='loss')
        opt.zero_grad()
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35)
        opt.step()
        if it % 10 == 0:
            parts = ', '.join(f'{k} {v.item():.3f}' for k, v in losses.items())
            b, m = top()
            print(f'iteration {it}: {parts}; top box IoU {b:.3f}, its mask IoU {m:.3f} ({time.time() - start:.0f} s)')


if __name__ == '__main__':
    main()
