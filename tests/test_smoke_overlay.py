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


def test_evaluator_metrics_follow_what_the_model_predicts(tmp_path):
    """The COCO evaluator is asked for what a row's model predicts and its table reports."""
    from bench.plan import Scale, build_run_config
    from bench.recipes import Catalogue

    cat, scale = Catalogue(), Scale.load("smoke")

    def metric(table: str, row: str):
        t = cat.load(table)
        cfg, _, _ = build_run_config(t, next(r for r in t.rows if r.id == row), scale, tmp_path)
        return cfg["test_evaluator"]["metric"]

    assert metric("sbr-cnn/table-8", "baseline") == ["bbox"]            # Faster R-CNN: boxes only
    assert metric("sbr-cnn/table-2", "mask-1x") == ["bbox", "segm"]     # Mask R-CNN: both
    assert metric("isda/table-1", next(r.id for r in cat.load("isda/table-1").rows)) == ["bbox", "segm"]
    # SOLO's boxes are zeros: a box AP of it would be a meaningless 0, so only masks are evaluated
    solo = next(r.id for r in cat.load("amf-sparseinst/table-10").rows
                if r.model and r.model.config and "solo" in r.model.config.lower())
    assert metric("amf-sparseinst/table-10", solo) == ["segm"]
    # a box-only row in a table of mask columns, its mask cells printed '-'
    assert metric("sa-fpn/table-1", "faster-rcnn-roialign") == ["bbox"]


def test_fixed_size_resize_stays_fixed_size():
    # YOLACT: random crops, then Resize to 550x550 ignoring the ratio; keeping the ratio at smoke scale
    # gave each image of a batch its own size and its loss failed ("stack expects each tensor to be equal size")
    pipe = [{"type": "MinIoURandomCrop"}, {"type": "Resize", "scale": (550, 550), "keep_ratio": False}]
    _resize_pipeline(pipe, [160, 160])
    assert pipe[1] == {"type": "Resize", "scale": (160, 160), "keep_ratio": False}
