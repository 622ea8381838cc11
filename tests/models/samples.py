"""Synthetic DetDataSamples shared by the model tests."""
from __future__ import annotations

import numpy as np
import torch
from mmdet.structures import DetDataSample
from mmdet.structures.mask import BitmapMasks
from mmengine.structures import InstanceData


def make_sample(img_hw: tuple[int, int], boxes: list[tuple[int, int, int, int]],
                labels: list[int], ori_hw: tuple[int, int] | None = None) -> DetDataSample:
    """A DetDataSample with rectangle masks at image size ``img_hw``."""
    h, w = img_hw
    masks = np.zeros((len(boxes), h, w), dtype=np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, y1:y2, x1:x2] = 1
    gt = InstanceData()
    gt.bboxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    gt.labels = torch.tensor(labels, dtype=torch.long)
    gt.masks = BitmapMasks(masks, h, w)
    sample = DetDataSample()
    sample.gt_instances = gt
    ori = ori_hw or img_hw
    sample.set_metainfo(dict(img_shape=img_hw, ori_shape=ori, pad_shape=img_hw,
                             scale_factor=(w / ori[1], h / ori[0])))
    return sample
