"""The smoke overlay's resize rule: every resize of a pipeline becomes the scale's one input size,
nested ones included (a multi-scale RandomChoice left alone trains DETR-style rows at ~800 px)."""
from __future__ import annotations

from bench.plan import _resize_pipeline

DETR_TRAIN = [  # the shape of mmdet's Deformable DETR train pipeline
    {"type": "LoadImageFromFile"},
    {"type": "LoadAnnotations", "with_bbox": True, "with_mask": True},
    {"type": "RandomFlip", "prob": 0.5},
    {"type": "RandomChoice", "transforms": [
        [{"type": "RandomChoiceResize", "scales": [[480, 1333], [800, 1333]], "keep_ratio": True}],
        [{"type": "RandomChoiceResize", "scales": [[400, 4200], [600, 4200]], "keep_ratio": True},
         {"type": "RandomCrop", "crop_type": "absolute_range", "crop_size": [384, 600]},
         {"type": "RandomChoiceResize", "scales": [[480, 1333], [800, 1333]], "keep_ratio": True}]]},
    {"type": "PackDetInputs"},
]


def test_multi_scale_choice_becomes_one_resize():
    pipe = [dict(t) for t in DETR_TRAIN]
    _resize_pipeline(pipe, [160, 192])
    assert [t["type"] for t in pipe] == ["LoadImageFromFile", "LoadAnnotations", "RandomFlip", "Resize", "PackDetInputs"]
    assert pipe[3] == {"type": "Resize", "scale": (192, 160), "keep_ratio": True}


def test_resizes_inside_other_wrappers_are_rewritten_in_place():
    pipe = [{"type": "RandomApply", "prob": 0.5, "transforms": [{"type": "RandomResize", "scale": [1333, 800]},
                                                               {"type": "PhotoMetricDistortion"}]},
            {"type": "RandomChoice", "transforms": [[{"type": "PhotoMetricDistortion"}], [{"type": "RandomFlip"}]]}]
    _resize_pipeline(pipe, [128, 128])
    assert pipe[0]["transforms"][0] == {"type": "Resize", "scale": (128, 128), "keep_ratio": True}
    assert pipe[0]["transforms"][1] == {"type": "PhotoMetricDistortion"}
    assert pipe[1]["type"] == "RandomChoice"  # no resize inside: untouched
