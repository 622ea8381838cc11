"""The smoke overlay's resize rule: every resize of a pipeline becomes the scale's one input size,
nested ones included (a multi-scale RandomChoice left alone trains DETR-style rows at ~800 px)."""
from __future__ import annotations

import pytest

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


def _smoke_run(tmp_path, table: str, row: str, scale):
    from bench.plan import make_plan
    from bench.recipes import Catalogue

    t = Catalogue().load(table)
    plan = make_plan([(t, [next(r for r in t.rows if r.id == row)])], scale, tmp_path / "results")
    pr = plan.rows[0]
    return pr.run_key, plan.runs[pr.run_key]


def _sampler_nums(cfg: dict) -> list[int]:
    from bench.cost import sampled_rois

    return sampled_rois(cfg["model"])


def test_heavy_roi_heads_sample_fewer_rois_and_others_keep_their_keys(tmp_path):
    """Issue 14 item 6: sbr-cnn's FCC / GRoIE / 7x7 non-local heads cost ~30 s per smoke iteration at 128
    sampled RoIs per image; the smoke scale's type_caps lower their samplers to 32 and say so in the run's
    overlay record, while rows without those modules keep the caps (and run keys) they had."""
    import yaml

    from bench.plan import SCALES_DIR

    _, sbr = _smoke_run(tmp_path, "sbr-cnn/table-11", "sbr-cnn", "smoke")
    assert _sampler_nums(sbr.config) == [32]                       # every R3 stage's sampler
    assert {"FCCBBoxHead", "GenericRoIExtractor"} <= set(sbr.overlay["type_caps"]["types"])
    assert sbr.overlay["type_caps"]["caps"] == {"rcnn.num": 32}
    assert not any(".rpn." in c and c.endswith("-> 32") for c in sbr.overlay["caps"])   # the RPN keeps 128
    assert any(c.endswith("512 -> 32") for c in sbr.overlay["caps"])
    _, faster = _smoke_run(tmp_path, "sbr-cnn/table-8", "nonlocal7x7", "smoke")   # GRoIE + 7x7 non-local
    assert _sampler_nums(faster.config) == [32]

    # a plain Mask R-CNN row: the scale's base cap, no type_caps record, and the same run key as under a
    # scale file without type_caps at all (the rule does not reach into rows it does not touch)
    key, mrcnn = _smoke_run(tmp_path, "sbr-cnn/table-2", "mask-1x", "smoke")
    assert _sampler_nums(mrcnn.config) == [128] and "type_caps" not in mrcnn.overlay
    plain = yaml.safe_load((SCALES_DIR / "smoke.yaml").read_text())
    plain.pop("type_caps")
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(plain))
    assert _smoke_run(tmp_path, "sbr-cnn/table-2", "mask-1x", str(tmp_path / "plain.yaml"))[0] == key
    _, sbr_plain = _smoke_run(tmp_path, "sbr-cnn/table-11", "sbr-cnn", str(tmp_path / "plain.yaml"))
    assert _sampler_nums(sbr_plain.config) == [128]   # what it was before the rule


def test_type_caps_name_registered_types_and_bad_rules_name_the_field(tmp_path):
    import yaml

    from bench.plan import SCALES_DIR, PlanError, Scale
    from bench.resolve import known_types

    scale = Scale.load("smoke")
    named = {t for rule in scale.type_caps for t in rule["types"]}
    assert named and not named - known_types(), named - known_types()   # a typo would silently match nothing

    doc = yaml.safe_load((SCALES_DIR / "smoke.yaml").read_text())
    for bad, field in (({"types": "FCCBBoxHead", "caps": {"num": 32}, "why": "x"}, "type_caps[0].types"),
                       ({"types": ["FCCBBoxHead"], "caps": {"num": 0}, "why": "x"}, "type_caps[0].caps"),
                       ({"types": ["FCCBBoxHead"], "caps": {"num": 32}}, "type_caps[0].why")):
        doc["type_caps"] = [bad]
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(doc))
        with pytest.raises(PlanError) as e:
            Scale.load(str(path))
        assert str(path) in str(e.value) and field in str(e.value)
