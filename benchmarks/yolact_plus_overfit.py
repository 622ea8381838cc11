"""YOLACT++ (bench/models/yolact_plus.py) learns end to end, re-scoring included: train the paper-scale model
(ResNet-50 with DCNv2 in conv3-conv5, the official FPN, 9 anchors a location, one class, no pretrained weights)
on one 128x128 image holding one ellipse, SGD lr 0.002 momentum 0.9, gradient clip 35, and every 10 iterations
print the losses, the IoU of the top-scoring predicted mask with the ground truth, and the mask IoU the
re-scoring net predicts for that mask (its score / its class score). A check that the mask branch, the
re-scoring targets and the rescoring agree, not an accuracy: nothing here is comparable to the paper.

    PYTHONPATH=. .venv/bin/python benchmarks/yolact_plus_overfit.py [--iters 60]   (output: yolact_plus_overfit.txt)
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
from mmdet.utils import register_all_modules

register_all_modules()
import bench.models  # noqa: E402,F401
from tests.models.samples import make_sample  # noqa: E402

CONFIG = 'bench/configs/yolact_plus/yolact_plus_r50_fpn_800k_coco.py'
BOX = (20, 38, 101, 95)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--iters', type=int, default=60)
    args = ap.parse_args()
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    torch.manual_seed(0)
    cfg = Config.fromfile(CONFIG)
    cfg.model.backbone.init_cfg = None
    cfg.model.bbox_head.num_classes = 1
    cfg.model.mask_head.num_classes = 1
    model = MODELS.build(cfg.model)
    model.init_weights()
    yy, xx = np.mgrid[:128, :128]
    ellipse = (((xx - 60) / 40.0) ** 2 + ((yy - 66) / 28.0) ** 2 <= 1).astype(np.uint8)
    sample = make_sample((128, 128), [BOX], [0])
    sample.gt_instances.masks.masks[:] = ellipse[None]
    img = torch.from_numpy(np.stack([ellipse * 200 + 20] * 3)).to(torch.uint8)
    train = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), True)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.002, momentum=0.9)

    def top() -> str:
        model.eval()
        with torch.no_grad():
            test = model.data_preprocessor(dict(inputs=[img], data_samples=[make_sample((128, 128), [BOX], [0])]), False)
            pred = model(**test, mode='predict')[0].pred_instances
        model.train()
        if len(pred) == 0:
            return 'no detection'
        i = int(pred.scores.argmax())
        best, gt = pred.masks[i].numpy(), ellipse.astype(bool)
        iou = float((best & gt).sum() / max((best | gt).sum(), 1))
        predicted = float(pred.scores[i] / pred.box_scores[i].clamp(min=1e-12))
        return f'top mask IoU {iou:.3f}, predicted IoU {predicted:.3f}'

    def value(v) -> torch.Tensor:
        return v if isinstance(v, torch.Tensor) else sum(v)

    start = time.time()
    print(f'iteration 0: {top()}')
    for it in range(1, args.iters + 1):
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
