"""Shared fixtures. Tests use the real recipes, real mmdet models and real pycocotools; they build
models without pretrained weights and train on the synthetic dataset."""
from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent

# the session-scoped real SLURM cluster (started only by tests that ask for `slurm_cluster`)
pytest_plugins = ["tests.slurm_cluster"]


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Invoke `bench` in-process with its own results folder; returns (exit_code, output)."""
    from bench.cli import main

    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path / "results"))
    runner = CliRunner()

    def invoke(*args: str, expect: int | None = 0):
        res = runner.invoke(main, list(args), catch_exceptions=False)
        if expect is not None:
            assert res.exit_code == expect, f"exit {res.exit_code}, expected {expect}:\n{res.output}"
        return res

    return invoke


@pytest.fixture
def recipe_dir(tmp_path):
    """A scratch recipes folder holding a copy of csr-d2s's _paper.yaml, for writing bad recipes."""
    root = tmp_path / "recipes"
    (root / "csr-d2s").mkdir(parents=True)
    shutil.copy(REPO / "recipes" / "csr-d2s" / "_paper.yaml", root / "csr-d2s" / "_paper.yaml")

    def write(body: str, name: str = "table-ii") -> Path:
        path = root / "csr-d2s" / f"{name}.yaml"
        path.write_text(textwrap.dedent(body))
        return path

    write.root = root
    return write


#: what `fidelity_recipes` states for csr-d2s Table II's '+ CSR' row (and '+ D2S' is declared faithful)
DEVIATIONS = ["the CSR block is built with two branches, not three", "GroupNorm <b>in place of</b> [bold]BatchNorm[/bold]"]


@pytest.fixture
def fidelity_recipes(tmp_path) -> Path:
    """A copy of the shipped recipes where csr-d2s Table II's 'csr' row is declared approximate (with
    DEVIATIONS, one holding HTML and rich markup) and its 'd2s' row faithful: what a port's recipe row says."""
    import yaml

    root = tmp_path / "fidelity-recipes"
    shutil.copytree(REPO / "recipes", root)
    path = root / "csr-d2s" / "table-ii.yaml"
    text = path.read_text()
    for head, extra in (("  - id: csr\n    label: + CSR\n",
                         f"    fidelity: approximate\n    deviations: {yaml.safe_dump(DEVIATIONS, default_flow_style=True).strip()}\n"),
                        ("  - id: d2s\n    label: + D2S\n", "    fidelity: faithful\n")):
        assert text.count(head) == 1, head
        text = text.replace(head, head + extra)
    path.write_text(text)
    return root


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """The embedded synthetic dataset, small: 16 train and 8 val images."""
    from bench.data import synth

    out = tmp_path_factory.mktemp("data") / "synth"
    synth.generate(out, synth.SynthSpec(train_images=16, val_images=8))
    return out


TEST_RECIPES = REPO / "tests" / "data" / "recipes"
TINY_SCALE = REPO / "tests" / "data" / "smoke-tiny.yaml"


def bench_exe() -> str:
    """The installed console script, run as a user would (a separate process)."""
    import sys

    return str(Path(sys.executable).parent / "bench")


def bench_env(results: Path, data: Path, recipes: Path = TEST_RECIPES) -> dict:
    import os

    env = dict(os.environ)
    env.update(BENCH_RECIPES=str(recipes), BENCH_RESULTS=str(results), BENCH_DATA=str(data), COLUMNS="240")
    return env


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """One real `bench run` of the pipeline-test table at the tiny smoke variant, through submitit's
    local executor: a tiny Mask R-CNN that trains and evaluates, a row that diverges, a row whose
    model is missing and a reference-only row. Returns (results root, data root, completed process)."""
    import subprocess

    results = tmp_path_factory.mktemp("pipeline-results")
    data = tmp_path_factory.mktemp("pipeline-data")
    proc = subprocess.run([bench_exe(), "run", "pipeline-test/table-1", "--scale", str(TINY_SCALE)],
                          env=bench_env(results, data), capture_output=True, text=True, timeout=900)
    return results, data, proc
