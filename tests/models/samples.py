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


def smoke_tiny_result(table: str, row: str, tmp_path) -> dict:
    """`bench run TABLE ROW` at the tiny smoke scale in a child of this process's environment (the shipped
    recipes, --cluster inline): the result file it wrote, asserted done with mask AP and params measured."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    results = tmp_path / 'results'
    cmd = [sys.executable, '-c', 'from bench.cli import main; main()', '--recipes', str(repo / 'recipes'),
           '--results', str(results), 'run', table, row,
           '--scale', str(repo / 'tests' / 'data' / 'smoke-tiny.yaml'), '--cluster', 'inline']
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=repo)
    path = results / 'smoke' / table / f'{row}.json'
    assert path.exists(), f'exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}'
    rec = json.loads(path.read_text())
    assert rec['status'] == 'done', rec.get('failure')
    assert rec['measured'].get('mask_AP') is not None and rec['measured'].get('params_M') is not None
    return rec
