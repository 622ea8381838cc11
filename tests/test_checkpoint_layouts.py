"""Checkpoint key layouts (bench/data/checkpoint_layouts/), fabricated files that follow them, and the
preflight's judge of a load (bench.loadcheck): a real checkpoint whose keys do not fit its module fails."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.data.checkpoints import LAYOUTS_DIR, compare, describe, load_layout, shipped_layouts, tensors_of
from bench.recipes import Catalogue
from tests.conftest import REPO
from tests.test_preflight import coco_root, only_run, paper_plan, with_weights  # noqa: F401 (fixture)

MMCLS = "resnetv1d50_b32x8_imagenet_20210531-db14775a.pth"


def _all_weights():
    from bench.zoo import table_weights

    cat = Catalogue()
    return table_weights([cat.load(n) for n in cat.names()])


def test_every_checkpoint_of_every_table_has_a_layout_with_provenance():
    entries = _all_weights()
    names = {e["file_name"] for e in entries}
    assert len(names) >= 18 and MMCLS in names and "resnet50-0676ba61.pth" in names
    for name in sorted(names):
        lay = load_layout(name)
        assert lay is not None, f"no layout shipped for {name}"
        prov = lay["provenance"]
        assert prov["source"] in ("class", "file"), name
        if prov["source"] == "class":
            assert prov["library"] in ("torchvision", "mmpretrain", "mmdet") and prov["version"] and prov["evidence"]
        assert lay["file_name"] == name
    assert set(shipped_layouts()) >= names


def test_the_mmcls_layout_is_not_mmdets_model():
    """The circularity the layouts remove: the mmcls file's deep stem is three ConvModules, mmdet's
    ResNetV1d a Sequential, and layer1.0's shortcut has no pooling slot in mmcls."""
    from bench.resolve import register_all

    register_all()
    from mmdet.registry import MODELS

    keys = {k for k, _, _ in load_layout(MMCLS)["tensors"]}
    assert "backbone.stem.0.conv.weight" in keys and "backbone.stem.2.bn.running_var" in keys
    assert "backbone.layer1.0.downsample.0.weight" in keys and "backbone.layer2.0.downsample.1.weight" in keys
    model = MODELS.build({"type": "ResNetV1d", "depth": 50})
    own = {"backbone." + k for k in model.state_dict()}
    assert "backbone.stem.0.weight" in own and "backbone.stem.0.conv.weight" not in own
    only_file = keys - own
    assert {k for k in only_file if k.startswith("backbone.stem.")} == {
        f"backbone.stem.{i}.{p}" for i in range(3) for p in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean",
                                                               "bn.running_var", "bn.num_batches_tracked")}
    assert {k for k in only_file if not k.startswith("backbone.stem.")} == {
        "head.fc.weight", "head.fc.bias", "backbone.layer1.0.downsample.0.weight",
        *(f"backbone.layer1.0.downsample.1.{p}" for p in ("bias", "running_mean", "running_var", "num_batches_tracked"))}


def test_fabricated_file_follows_the_layout_not_the_model(tmp_path):
    import torch

    from bench.data.fake_weights import fabricate_file

    for name in (MMCLS, "resnet50-0676ba61.pth"):
        path = fabricate_file(name, tmp_path)
        obj = torch.load(path, map_location="cpu", weights_only=True)
        container, sd = describe(obj)
        lay = load_layout(name)
        assert container == lay["container"]
        assert compare(lay, container, tensors_of(sd)) == []
        assert [k for k, _, _ in lay["tensors"]] == list(sd)


def test_compare_names_every_kind_of_difference():
    lay = {"container": ["meta", "state_dict"], "tensors": [["a.weight", [2, 3], "float32"], ["a.bias", [2], "float32"],
                                                           ["bn.num_batches_tracked", [], "int64"]]}
    assert compare(lay, ["meta", "state_dict"], [["a.weight", [2, 3], "float32"], ["a.bias", [2], "float32"]]) == []
    d = compare(lay, None, [["a.weight", [3, 3], "float32"], ["b.bias", [2], "float32"]])
    text = " | ".join(d)
    assert "container" in text and "a.bias" in text and "b.bias" in text and "a.weight [2, 3]/float32 vs [3, 3]" in text


def _mmcls_rows_recipes(tmp_path: Path, unconverted: bool) -> Path:
    recipes = tmp_path / "recipes"
    shutil.copytree(REPO / "recipes" / "amf-sparseinst", recipes / "amf-sparseinst")
    if unconverted:   # the recipes as they were: mmengine's Pretrained, no key conversion
        for p in (recipes / "amf-sparseinst").glob("*.yaml"):
            p.write_text(p.read_text().replace("type: ConvertedPretrained, convert: mmcls-resnet-v1cd, ", "type: Pretrained, "))
    return recipes


def test_mmcls_resnetv1d_stem_unloaded_fails_and_the_conversion_loads_it(coco_root, tmp_path):  # noqa: F811
    """26 amf-sparseinst rows load mmcls's ResNetV1d file into mmdet's ResNetV1d. With mmengine's plain
    Pretrained init the deep stem and layer1.0's shortcut stay random: the old preflight (a file fabricated
    from the model itself) passed it; now the row fails naming the stem keys. With the recipe's
    ConvertedPretrained every stem tensor is the file's."""
    import torch

    from bench.preflight import run_one

    weights = tmp_path / "weights"
    weights.mkdir()
    old = with_weights(only_run(paper_plan("amf-sparseinst/table-4", ["sparseinst"], {"coco": coco_root},
                                           tmp_path / "r1", weights, recipes=_mmcls_rows_recipes(tmp_path / "a", True))),
                       weights)
    rec = run_one(old, stop_after="weights")
    assert rec.status == "failed"
    assert "backbone.stem.0.weight" in rec.reason and "19 not loaded" in rec.reason, rec.reason
    (w,) = [w for w in rec.weights if w["file_name"] == MMCLS]
    assert {f"backbone.stem.{i}.weight" for i in (0, 1, 3, 4, 6, 7)} | {"backbone.stem.7.running_var"} <= set(w["missing"])
    assert "backbone.stem.0.conv.weight" in w["unexpected"] and "backbone.layer1.0.downsample.2.weight" in w["missing"]
    assert any(k.startswith("backbone.layer1.0.downsample.1.weight") for k in w["mismatched"])
    assert 0.9 < w["loaded_fraction"] < 1.0 and not w["ok"]

    spec = with_weights(only_run(paper_plan("amf-sparseinst/table-4", ["sparseinst"], {"coco": coco_root},
                                            tmp_path / "r2", weights)), weights)
    keep: dict = {}
    rec = run_one(spec, stop_after="weights", keep=keep)
    assert rec.status == "ok", rec.reason
    (w,) = [w for w in rec.weights if w["file_name"] == MMCLS]
    assert w["ok"] and w["missing"] == [] and w["mismatched"] == [] and w["unexpected"] == []
    assert [d["count"] for d in w["declared_new"]] == [18]     # DCNv2 offsets of stages 3-4 (6 + 3 blocks x 2)
    assert "conv_offset" in w["declared_new"][0]["keys"][0]
    sd = torch.load(weights / MMCLS, map_location="cpu", weights_only=True)["state_dict"]
    bb = keep["model"].backbone
    assert torch.equal(bb.stem[0].weight, sd["backbone.stem.0.conv.weight"])
    assert torch.equal(bb.stem[7].running_var, sd["backbone.stem.2.bn.running_var"])
    assert torch.equal(bb.layer1[0].downsample[1].weight, sd["backbone.layer1.0.downsample.0.weight"])
    assert torch.equal(bb.layer1[0].downsample[2].bias, sd["backbone.layer1.0.downsample.1.bias"])
    assert torch.equal(bb.layer2[0].downsample[2].weight, sd["backbone.layer2.0.downsample.2.weight"])


def test_preflight_json_gives_the_load_verdict_per_checkpoint(coco_root, tmp_path):  # noqa: F811
    from click.testing import CliRunner

    from bench.cli import main
    from bench.data.fake_weights import fabricate_file

    weights = tmp_path / "weights"
    fabricate_file("resnet50-0676ba61.pth", weights)
    res = CliRunner().invoke(main, ["--results", str(tmp_path / "results"), "preflight", "csr-d2s/table-ii",
                                    "--row", "baseline-fpn", "--data-root", f"coco={coco_root}",
                                    "--weights-dir", str(weights), "--iters", "1", "--json"])
    assert res.exit_code == 0, res.output
    (rec,) = json.loads(res.stdout)
    (w,) = rec["weights"]
    assert w["loaded_fraction"] == 1.0 and w["missing"] == [] and w["unexpected"] == [] and w["mismatched"] == []
    assert w["declared_new"] == [] and w["unexpected_head"] == ["backbone.fc.weight", "backbone.fc.bias"]


def test_judge_declarations_heads_and_mismatches():
    from bench.loadcheck import failure, judge, summarise

    own = {"conv.weight": ((4, 3, 1, 1), 12, True), "bn.weight": ((4,), 4, True), "bn.running_var": ((4,), 4, False),
           "bn.num_batches_tracked": ((), 1, False), "new.weight": ((4, 4), 16, True)}
    v = judge("neck", own, {"conv.weight": (4, 3, 1, 1), "bn.weight": (5,), "fc.weight": (10, 4), "odd.x": (1,)},
              [("neck.new.*", "the paper's new layer")])
    s = summarise([v])
    assert s["missing"] == ["neck.bn.running_var"] and s["mismatched"] == ["neck.bn.weight: file [5], module [4]"]
    assert s["unexpected_head"] == ["neck.fc.weight"] and s["unexpected"] == ["neck.odd.x"]
    assert s["declared_new"][0]["why"] == "the paper's new layer" and s["declared_new"][0]["count"] == 1
    assert s["loaded_fraction"] == round(12 / 32, 6) and not s["ok"]
    reason = failure("x.pth", s)
    assert "neck.bn.running_var" in reason and "shape mismatch" in reason and "odd.x" in reason


def test_recipe_declared_new_is_validated_and_reaches_the_judge(tmp_path):
    from bench.recipes import ModelSpec

    spec = ModelSpec(config="mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py",
                     declared_new=[{"keys": "neck.*", "why": "a new neck"}])
    assert spec.declared_new[0].keys == "neck.*"
    with pytest.raises(ValueError, match="why"):
        ModelSpec(config="mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py", declared_new=[{"keys": "neck.*"}])


def test_converted_pretrained_refuses_an_unknown_conversion():
    from bench.models.pretrained import ConvertedPretrained

    with pytest.raises(ValueError, match="did you mean 'mmcls-resnet-v1cd'"):
        ConvertedPretrained(checkpoint="x.pth", convert="mmcls-resnet-v1d")


def test_record_layout_and_check_against_a_real_file(tmp_path):
    """`bench weights --record-layout` reads a file bench did not make (here a torch.save of a plain ResNet-18
    state dict, torchvision's container), `--check` agrees with it, and a renamed key is a difference."""
    import torch
    from click.testing import CliRunner

    from bench.cli import main

    torch.manual_seed(0)
    sd = {"conv1.weight": torch.randn(8, 3, 7, 7), "bn1.weight": torch.ones(8), "fc.weight": torch.zeros(10, 8)}
    real = tmp_path / "w" / "tiny-1234.pth"
    real.parent.mkdir()
    torch.save(sd, real)
    lays = tmp_path / "layouts"
    r = CliRunner().invoke(main, ["weights", "--record-layout", str(real), "--layout-dir", str(lays), "--json"])
    assert r.exit_code == 0, r.output
    lay = json.loads((lays / "tiny-1234.pth.json").read_text())
    assert lay["container"] is None and lay["provenance"]["source"] == "file" and len(lay["provenance"]["sha256"]) == 64
    assert [t[0] for t in lay["tensors"]] == list(sd)
    ok = CliRunner().invoke(main, ["weights", "--check", "--weights-dir", str(real.parent), "--layout-dir", str(lays)])
    assert ok.exit_code == 0 and "agrees" in ok.output, ok.output
    torch.save({"meta": {}, "state_dict": {("stem." + k if k == "conv1.weight" else k): v for k, v in sd.items()}}, real)
    bad = CliRunner().invoke(main, ["weights", "--check", "--weights-dir", str(real.parent), "--layout-dir", str(lays)])
    assert bad.exit_code == 1 and "differs" in bad.output and "stem.conv1.weight" in bad.output and "container" in bad.output
    again = CliRunner().invoke(main, ["weights", "--record-layout", str(real), "--layout-dir", str(lays)])
    assert again.exit_code == 0 and "the shipped layout differed" in again.output


def test_mmdet_produced_layouts_still_match_mmdet():
    """A layout produced from mmdet's class is held against the installed mmdet: a library upgrade that
    renames keys shows here (the Deformable DETR file loaded into ISDA, and a Mask R-CNN zoo file)."""
    from mmengine.config import Config

    from bench.resolve import mmdet_configs_dir, register_all

    register_all()
    from mmdet.registry import MODELS

    for name in ("deformable-detr_r50_16xb2-50e_coco_20221029_210934-6bc7d21b.pth",
                 "mask_rcnn_r50_fpn_1x_coco_20200205-d4b0c5d6.pth"):
        lay = load_layout(name)
        assert lay["provenance"]["library"] == "mmdet"
        config = lay["provenance"]["built"].removeprefix("mmdet's ").removesuffix(" model")
        sd = MODELS.build(Config.fromfile(str(mmdet_configs_dir().parent / config)).model).state_dict()
        assert compare(lay, ["meta", "state_dict"], tensors_of(sd)) == [], name
