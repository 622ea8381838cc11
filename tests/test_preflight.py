"""Preflight on real-format data: the COCO 2017 and converted-Cityscapes layouts (bench.data.layouts),
real mmdet datasets, models and evaluators, and fabricated checkpoint files in the real key layout
(random tensors; nothing is downloaded)."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from bench.recipes import Catalogue
from tests.conftest import REPO


@pytest.fixture(scope="session")
def coco_root(tmp_path_factory):
    from bench.data.layouts import write_coco

    root = tmp_path_factory.mktemp("real") / "coco"
    write_coco(root, train_images=4, val_images=2, test_images=2)
    return root


@pytest.fixture(scope="session")
def cityscapes_root(tmp_path_factory):
    from bench.data.layouts import write_cityscapes

    root = tmp_path_factory.mktemp("real") / "cityscapes"
    write_cityscapes(root, train_images=2, val_images=2)
    return root


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("weights")


def paper_plan(table: str, rows, roots, results: Path, weights: Path | None = None, recipes: Path | None = None):
    from bench.plan import make_plan

    cat = Catalogue(recipes)
    t = cat.load(table)
    selected = [t.row(r) for r in rows] if rows else list(t.rows)
    return make_plan([(t, selected)], "paper", results, data_root=roots, force=True,
                     weights_dirs=[weights] if weights else None)


def only_run(plan):
    assert len(plan.runs) == 1, [pr.reason for pr in plan.rows]
    return next(iter(plan.runs.values()))


def with_weights(spec, weights: Path):
    """Fabricate the checkpoints ``spec`` needs (once per file name) and point its config at them."""
    from bench.data.fake_weights import fabricate
    from bench.weights import localize

    need = {w["file_name"] for w in spec.weights if not w["found"]}
    need -= {p.name for p in weights.iterdir()}
    if need:
        fabricate(spec.config, weights, only=need)
    # the plan was made before the files existed: resolve again, as a new plan would
    refs = localize(spec.config, [weights])
    spec.weights = [w.as_dict() for w in refs]
    assert all(w["found"] for w in spec.weights), spec.weights
    return spec


# --------------------------------------------------------------------------------- data checks
def test_layout_fixtures_load_as_mmdet_datasets(coco_root, cityscapes_root):
    """The fixtures are what mmdet's own dataset classes read: COCO's 80 non-contiguous ids map to
    80 labels, crowd regions are ignored, Cityscapes' RLE masks decode."""
    from bench.resolve import register_all

    register_all()
    from mmdet.datasets import CityscapesDataset, CocoDataset

    coco = CocoDataset(data_root=str(coco_root), ann_file="annotations/instances_train2017.json",
                       data_prefix={"img": "train2017/"}, pipeline=[])
    ann = json.loads((coco_root / "annotations/instances_train2017.json").read_text())
    assert len(ann["categories"]) == 80 and max(c["id"] for c in ann["categories"]) == 90
    assert any(a["iscrowd"] and isinstance(a["segmentation"]["counts"], list) for a in ann["annotations"])
    labels = {i["bbox_label"] for k in range(len(coco)) for i in coco.get_data_info(k)["instances"]}
    assert labels and max(labels) < 80
    assert not json.loads((coco_root / "annotations/image_info_test-dev2017.json").read_text()).get("annotations")
    cs = CityscapesDataset(data_root=str(cityscapes_root), ann_file="annotations/instancesonly_filtered_gtFine_train.json",
                           data_prefix={"img": "leftImg8bit/train/"}, pipeline=[])
    assert len(cs) == 2
    first = cs.get_data_info(0)
    assert first["img_path"].endswith("_leftImg8bit.png") and Path(first["img_path"]).is_file()
    assert isinstance(first["instances"][0]["mask"]["counts"], str)   # compressed RLE, as the converter writes


def test_cityscapes_rows_train_on_their_instances_and_the_old_pipeline_is_caught(cityscapes_root, tmp_path):
    """amf-sparseinst Table 10's Cityscapes rows used LoadAnnotations(poly2mask=False): every RLE mask
    ignored, zero trainable instances. The recipe now decodes RLE; the old one fails preflight."""
    from bench.preflight import run_one

    expected = sum(not a["iscrowd"] for a in json.loads(
        (cityscapes_root / "annotations/instancesonly_filtered_gtFine_train.json").read_text())["annotations"])
    plan = paper_plan("amf-sparseinst/table-10", ["city-sparseinst-1024x512"], {"cityscapes": cityscapes_root},
                      tmp_path / "results")
    rec = run_one(only_run(plan), stop_after="data")
    assert rec.status == "ok", rec.reason
    assert rec.train_instances == rec.train_with_masks == expected > 0
    assert rec.eval_instances > 0

    # the recipe as it was: the same rows with poly2mask false
    recipes = tmp_path / "recipes"
    shutil.copytree(REPO / "recipes" / "amf-sparseinst", recipes / "amf-sparseinst")
    p = recipes / "amf-sparseinst" / "table-10.yaml"
    p.write_text(p.read_text().replace("poly2mask: true", "poly2mask: false"))
    old = paper_plan("amf-sparseinst/table-10", ["city-sparseinst-1024x512"], {"cityscapes": cityscapes_root},
                     tmp_path / "results", recipes=recipes)
    rec = run_one(only_run(old), stop_after="data")
    assert rec.status == "failed"
    assert "0 trainable ground-truth instances" in rec.reason and "poly2mask" in rec.reason
    assert rec.train_ignored == expected + sum(1 for a in json.loads(
        (cityscapes_root / "annotations/instancesonly_filtered_gtFine_train.json").read_text())["annotations"]
        if a["iscrowd"])


def test_eval_split_without_annotations_fails(coco_root, tmp_path):
    """isda Table 3 was evaluated on test-dev (no annotations): the recipe now says val2017; the old
    recipe fails preflight with the reason."""
    from bench.preflight import run_one

    plan = paper_plan("isda/table-3", ["mask-rcnn"], {"coco": coco_root}, tmp_path / "results")
    spec = only_run(plan)
    assert spec.eval_split == "val2017"
    assert run_one(spec, stop_after="data").status == "ok"

    recipes = tmp_path / "recipes"
    shutil.copytree(REPO / "recipes" / "isda", recipes / "isda")
    p = recipes / "isda" / "table-3.yaml"
    text = p.read_text()
    assert "eval_split: val2017" in text
    p.write_text(text.replace("eval_split: val2017", "eval_split: test-dev", 1))
    old = only_run(paper_plan("isda/table-3", ["mask-rcnn"], {"coco": coco_root}, tmp_path / "results",
                              recipes=recipes))
    rec = run_one(old, stop_after="data")
    assert rec.status == "failed" and rec.eval_instances == 0
    assert "has no annotations" in rec.reason and "image_info_test-dev2017.json" in rec.reason


# ------------------------------------------------------------------------------------- weights
def test_missing_weights_are_listed_with_url_and_place(coco_root, tmp_path, monkeypatch, cli):
    from bench.preflight import run_one

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))   # an empty hub cache
    monkeypatch.delenv("BENCH_WEIGHTS", raising=False)
    spec = only_run(paper_plan("sbr-cnn/table-2", ["mask-1x"], {"coco": coco_root}, tmp_path / "results"))
    assert spec.config["model"]["backbone"]["init_cfg"]["checkpoint"] == "torchvision://resnet50"  # unresolved
    rec = run_one(spec, stop_after="weights")
    assert rec.status == "failed"
    assert "weights not on this machine: torchvision://resnet50" in rec.reason
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in rec.reason
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in rec.reason
    out = cli("weights", "sbr-cnn/table-2", "--missing").output
    assert "resnet50-0676ba61.pth" in out and "MISSING: put it at" in out


def test_weights_file_that_loads_sets_the_parameters(coco_root, tmp_path, weights_dir):
    import torch

    from bench.preflight import run_one

    spec = with_weights(only_run(paper_plan("sbr-cnn/table-2", ["mask-1x"], {"coco": coco_root}, tmp_path / "r",
                                            weights=weights_dir)), weights_dir)
    keep: dict = {}
    rec = run_one(spec, stop_after="weights", keep=keep)
    assert rec.status == "ok", rec.reason
    (w,) = rec.weights
    (load,) = w["loads"]
    # every tensor of the backbone but its 53 num_batches_tracked counters (never judged), fc left over
    assert load["loaded"] == load["own"] - 53 == 265 and load["missing"] == [] and load["unexpected"] == []
    assert load["unexpected_head"] == ["backbone.fc.weight", "backbone.fc.bias"] and w["loaded_fraction"] == 1.0
    sd = torch.load(w["found"], map_location="cpu", weights_only=True)
    assert torch.equal(keep["model"].backbone.layer3[2].conv2.weight.detach(), sd["layer3.2.conv2.weight"])


def test_weights_file_whose_keys_do_not_match_is_refused(coco_root, tmp_path, weights_dir):
    import torch

    from bench.preflight import run_one

    spec = with_weights(only_run(paper_plan("sbr-cnn/table-2", ["mask-1x"], {"coco": coco_root}, tmp_path / "r",
                                            weights=weights_dir)), weights_dir)
    good = torch.load(spec.weights[0]["found"], map_location="cpu", weights_only=True)
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    # a checkpoint of the right file name saved with a wrapper prefix nobody strips
    torch.save({f"encoder.{k}": v for k, v in good.items()}, bad_dir / "resnet50-0676ba61.pth")
    spec = only_run(paper_plan("sbr-cnn/table-2", ["mask-1x"], {"coco": coco_root}, tmp_path / "r", weights=bad_dir))
    rec = run_one(spec, stop_after="weights")
    assert rec.status == "failed"
    assert "resnet50-0676ba61.pth into backbone loaded nothing" in rec.reason
    assert "in the file but used nowhere: backbone.encoder.conv1.weight, backbone.encoder.bn1.weight" in rec.reason
    assert "not loaded: backbone.conv1.weight, backbone.bn1.weight, backbone.bn1.bias" in rec.reason


# ------------------------------------------------------------------------------------ training
def test_nan_loss_fails_the_run(coco_root, tmp_path, weights_dir):
    """A checkpoint with NaNs in it (a corrupted download) trains to a NaN loss at iteration 1."""
    import torch

    from bench.preflight import run_one

    spec = with_weights(only_run(paper_plan("amf-sparseinst/table-10", ["yolact-r50-550"], {"coco": coco_root},
                                            tmp_path / "r", weights=weights_dir)), weights_dir)
    src = Path(spec.weights[0]["found"])
    sd = torch.load(src, map_location="cpu", weights_only=True)
    sd["conv1.weight"] = torch.full_like(sd["conv1.weight"], float("nan"))
    nan_dir = tmp_path / "nan"
    nan_dir.mkdir()
    torch.save(sd, nan_dir / src.name)
    spec = only_run(paper_plan("amf-sparseinst/table-10", ["yolact-r50-550"], {"coco": coco_root}, tmp_path / "r",
                               weights=nan_dir))
    rec = run_one(spec, iters=1, stop_after="train")
    assert rec.status == "failed"
    assert rec.reason.startswith("training iteration 1 (NaN/inf loss)"), rec.reason


# One preflight per model family: the cheapest paper row of each, its exact paper config on the
# real-format fixture, 1 training iteration and 1 evaluation image.
FAMILIES = [
    ("mask-rcnn", "sbr-cnn/table-2", "mask-1x"),
    ("htc", "sbr-cnn/table-2", "htc"),
    ("solo", "amf-sparseinst/table-10", "solo-r50-512"),
    ("yolact", "amf-sparseinst/table-10", "yolact-r50-550"),
    ("condinst", "amf-sparseinst/table-10", "condinst-r50-800"),
    ("sparseinst-amf", "amf-sparseinst/table-10", "amf-sparseinst-r50d-dcn-608"),
    ("cityscapes-sparseinst", "amf-sparseinst/table-10", "city-sparseinst-1024x512"),
    ("faster-rcnn", "sbr-cnn/table-8", None),
    ("r3-cnn", "sbr-cnn/table-2", "r3-naive"),
    ("knet", "csr-d2s/table-i", None),
    ("polarmask", "csr-d2s/table-i", "polarmask"),
    ("yolact-plus", "amf-sparseinst/table-10", "yolact-pp-r50-dcn-550"),
    ("centermask", "amf-sparseinst/table-10", "centermask-r50-600"),
    ("csr-d2s", "csr-d2s/table-ii", None),
    ("isda", "isda/table-1", None),
    ("sa-fpn", "sa-fpn/table-2", None),
    ("solov2", "csr-d2s/table-i", None),
]


def _family_row(table: str, row: str | None, family: str) -> str:
    """The named row, or the first runnable row of the table whose model matches the family."""
    if row:
        return row
    from bench.resolve import row_config, row_status
    from bench.vocab import RowStatus

    want = {"faster-rcnn": "FasterRCNN", "knet": "KNet", "csr-d2s": "CSR", "isda": "ISDA", "sa-fpn": "SAFPN",
            "solov2": "SOLOv2"}[family]
    t = Catalogue().load(table)
    for r in t.rows:
        if row_status(r)[0] is RowStatus.RUNNABLE and r.model.config and want in json.dumps(row_config(r.model).to_dict()["model"]):
            return r.id
    pytest.fail(f"no runnable {family} row in {table}: the family has no preflight")


@pytest.mark.slow
@pytest.mark.parametrize("family,table,row", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_preflight_per_model_family(family, table, row, coco_root, cityscapes_root, weights_dir, tmp_path):
    from bench.preflight import run_one

    row = _family_row(table, row, family)
    spec = only_run(paper_plan(table, [row], {"coco": coco_root, "cityscapes": cityscapes_root}, tmp_path / "r",
                               weights=weights_dir))
    spec = with_weights(spec, weights_dir)
    from bench import evaluators as E

    chosen = E.resolve("auto")
    spec.evaluator = chosen.name      # as `bench run` plans it: the jobs' evaluator is preflighted too
    rec = run_one(spec, iters=1, eval_images=1)
    assert rec.status == "ok", rec.reason
    assert rec.evaluator.startswith(chosen.label), rec.evaluator
    assert rec.train_instances > 0 and rec.eval_instances > 0
    assert rec.s_per_iter > 0 and rec.peak_mem_mb > 0
    assert all(k != "loss" or v == v for k, v in rec.losses.items()) and "loss" in rec.losses
    assert rec.grad_params and not rec.grad_params.startswith("0 of")
    assert all(w["loads"] and w["loads"][0]["loaded"] > 0 for w in rec.weights)
