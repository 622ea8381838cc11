"""Recipes are data: a recipe cannot make bench execute a file outside the two config roots, nor build
a ``type`` that is an import path or an unregistered name (mmengine's registries import and call
dotted names). Each hostile recipe plants a marker file if its code ever runs."""
from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from tests.conftest import TEST_RECIPES, TINY_SCALE


def hostile_recipes(tmp_path: Path, row_model: str) -> Path:
    """A copy of the pipeline-test recipes with one extra table whose single row uses ``row_model``."""
    root = tmp_path / "recipes"
    shutil.copytree(TEST_RECIPES / "pipeline-test", root / "pipeline-test")
    (root / "pipeline-test" / "table-9.yaml").write_text(textwrap.dedent("""\
        include: _paper.yaml
        table: table-9
        number: "9"
        title: hostile
        columns:
          - {key: mask_AP, label: AP}
        rows:
          - id: evil
            label: evil
            position: 1
        """) + textwrap.indent(row_model, "    ") + "    published: {mask_AP: 1.0}\n")
    return root


@pytest.fixture
def evil_py(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "elsewhere" / "evil.py"
    path.parent.mkdir()
    path.write_text(f"open({str(marker)!r}, 'w').write('ran')\nmodel = dict(type='MaskRCNN')\n")
    return path, marker


@pytest.mark.parametrize("scope", ["bench", "mmdet"])
def test_config_path_leaving_the_roots_is_refused_unread(scope, evil_py, tmp_path, cli, monkeypatch):
    path, marker = evil_py
    rel = "../" * 30 + str(path).lstrip("/")
    recipes = hostile_recipes(tmp_path, f"model: {{config: '{scope}::{rel}'}}\n")
    monkeypatch.setenv("BENCH_RECIPES", str(recipes))
    out = cli("show", "pipeline-test/table-9").output
    assert "refused" in out and "leaves" in out
    res = cli("validate", expect=1)
    assert "table-9.yaml: row 1 (id 'evil'), field model" in res.output and "leaves" in res.output
    assert not marker.exists()


def test_absolute_config_path_is_refused(evil_py, tmp_path, cli, monkeypatch):
    path, marker = evil_py
    recipes = hostile_recipes(tmp_path, f"model: {{config: 'bench::{path}'}}\n")
    monkeypatch.setenv("BENCH_RECIPES", str(recipes))
    res = cli("validate", expect=1)
    assert "absolute path" in res.output
    assert not marker.exists()


HOSTILE_TYPES = {
    "custom_hooks": "custom_hooks: [{type: os.system, command: 'touch {marker}'}]",
    "default_hooks": "default_hooks: {logger: {type: subprocess.run, args: ['touch', '{marker}']}}",
    "pipeline": "train_dataloader: {dataset: {pipeline: [{type: builtins.exec, source: 'open(\"{marker}\", \"w\")'}]}}",
    "visualizer": "visualizer: {type: mymodule.fn}",
    "evaluator": "val_evaluator: {type: NoSuchMetric}",
    "custom_imports": "custom_imports: {imports: [antigravity]}",
}


@pytest.mark.parametrize("where", list(HOSTILE_TYPES))
def test_unregistered_or_dotted_types_anywhere_are_refused(where, tmp_path, cli, monkeypatch):
    marker = tmp_path / "PWNED"
    override = HOSTILE_TYPES[where].replace("{marker}", str(marker))
    recipes = hostile_recipes(tmp_path, f"model:\n  overrides:\n    {override}\n")
    monkeypatch.setenv("BENCH_RECIPES", str(recipes))
    from bench.recipes import Catalogue
    from bench.resolve import row_status

    status, reason = row_status(Catalogue(recipes).load("pipeline-test/table-9").row("evil"))
    assert str(status) == "refused", reason
    field = {"custom_hooks": "custom_hooks[0].type", "default_hooks": "default_hooks.logger.type",
             "pipeline": "train_dataloader.dataset.pipeline[0].type", "visualizer": "visualizer.type",
             "evaluator": "val_evaluator.type", "custom_imports": "custom_imports"}[where]
    assert f"field {field}" in reason
    res = cli("validate", expect=1)
    assert f"table-9.yaml: row 1 (id 'evil'): refused: " in res.output and field in res.output
    res = cli("run", "pipeline-test/table-9", "--scale", str(TINY_SCALE), "--cluster", "inline")
    assert "cannot run" in res.output and "0 cannot run" not in res.output
    assert not marker.exists()


def test_registered_types_with_a_library_scope_stay_runnable(tmp_path, monkeypatch):
    recipes = hostile_recipes(tmp_path, "model:\n  overrides:\n    custom_hooks: [{type: mmengine.EMAHook}]\n")
    from bench.recipes import Catalogue
    from bench.resolve import row_status

    status, reason = row_status(Catalogue(recipes).load("pipeline-test/table-9").row("evil"))
    assert str(status) == "runnable", reason


def test_include_leaving_the_recipes_folder_is_refused(tmp_path, cli, monkeypatch):
    secret = tmp_path / "outside.yaml"
    secret.write_text("title: read from outside\n")
    recipes = hostile_recipes(tmp_path, "model: {config: 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'}\n")
    p = recipes / "pipeline-test" / "table-9.yaml"
    p.write_text(p.read_text().replace("include: _paper.yaml", f"include: [_paper.yaml, ../../outside.yaml]"))
    monkeypatch.setenv("BENCH_RECIPES", str(recipes))
    res = cli("validate", expect=1)
    assert "field include: '../../outside.yaml' leaves the recipes folder" in res.output
