"""The report's render cache (bench/report/cache.py): a render redraws only what its inputs changed, and
what it writes is byte for byte what a render without the cache writes.

The result files are TEST FIXTURES (device 'test fixture', invented numbers), written with the real schema
into tmp folders; the recipes, pages, figures (matplotlib) and exports are the real ones.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from bench.recipes import Catalogue
from bench.report import export
from bench.report.build import write_report
from tests.cli.test_report import fixture_result, put

TABLES = ("csr-d2s/table-ii", "csr-d2s/table-iii")
AP = {"csr-d2s/table-ii": {"baseline-fpn": 34.3, "csr": 35.3, "d2s": 33.5, "csr-d2s": 34.5},
      "csr-d2s/table-iii": {"csr-128": 34.0, "csr-256": 34.6, "csr-512": 34.9}}
OLD = 1_000_000_000  # an mtime long past: a file this render rewrites gets a new one


@pytest.fixture
def setup(tmp_path, monkeypatch):
    import bench.report.html as pages

    monkeypatch.setattr(pages, "now", lambda: "2026-01-01T00:00:00+00:00")  # pages print when they were written
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))               # no profile cache: audits say so
    results = tmp_path / "results"
    for table, rows in AP.items():
        for row, ap in rows.items():
            put(results, fixture_result(table, row, scale="paper", measured={"mask_AP": ap, "fps": 19.0}),
                scale="paper")
    cat = Catalogue()
    tables = [cat.load(n) for n in TABLES]

    def render(out: Path, cache: bool = True):   # PNG too: the raster bytes must be as stable as the SVG's
        return write_report(tables, "paper", results, out, catalogue=cat, cache=cache, figure_formats=("svg", "png"))

    return render, results, tmp_path


def _files(root: Path) -> dict[str, bytes]:
    """The report's output files (not the cache's own records)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".render-cache" not in p.parts and not p.name.endswith(".render.json")}


def _age(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, ns=(OLD, OLD))


def _touched(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and p.stat().st_mtime_ns != OLD and ".render-cache" not in p.parts
            and not p.name.endswith(".render.json")}


def test_second_render_rewrites_nothing_and_a_change_redraws_only_its_table(setup):
    render, results, tmp = setup
    out = tmp / "reports"
    first = render(out)
    root = out / "paper"
    figures = {p.relative_to(root).as_posix() for p in first.figures}
    assert 2 * first.drawn == len(figures) > 0 and len(first.pages) == 2  # PNG and SVG per figure
    assert any(f.startswith("csr-d2s/table-iii/") for f in figures)

    _age(root)
    again = render(out)
    assert again.written == [] and again.drawn == 0
    assert _touched(root) == set()
    assert [p.name for p in again.pages] == [p.name for p in first.pages] and again.figures == first.figures

    # one result of table-ii changes: its page, its figures and its exports (and the combined ones), no more
    put(results, fixture_result(TABLES[0], "csr", scale="paper", measured={"mask_AP": 36.1, "fps": 19.0}),
        scale="paper")
    changed = render(out)
    ii_figures = {f for f in figures if f.startswith("csr-d2s/table-ii/")}
    assert {p.relative_to(root).as_posix() for p in changed.written if p.suffix == ".html"} == {"csr-d2s/table-ii.html"}
    assert 2 * changed.drawn == len(ii_figures)
    touched = _touched(root)
    assert {t for t in touched if t.endswith((".png", ".svg"))} == ii_figures
    assert not any(t.startswith("csr-d2s/table-iii") for t in touched)
    assert {"csr-d2s/table-ii.html", "csr-d2s/table-ii.csv", "csr-d2s/table-ii.md", "csr-d2s/table-ii.tex",
            "report.csv", "report.md"} <= touched

    # the cached output equals a render without the cache, byte for byte
    fresh = tmp / "fresh"
    render(fresh, cache=False)
    assert _files(root) == _files(fresh / "paper")

    # back to the first numbers: the page is written again, its figures come from the figure store
    put(results, fixture_result(TABLES[0], "csr", scale="paper", measured={"mask_AP": 35.3, "fps": 19.0}),
        scale="paper")
    back = render(out)
    assert back.drawn == 0 and any(p.name == "table-ii.html" for p in back.written)
    fresh2 = tmp / "fresh2"
    render(fresh2, cache=False)
    assert _files(root) == _files(fresh2 / "paper")


def test_lost_or_edited_output_is_rewritten(setup):
    render, _, tmp = setup
    out = tmp / "reports"
    first = render(out)
    root = out / "paper"
    page = root / "csr-d2s" / "table-iii.html"
    figure = next(p for p in first.figures if "table-iii" in p.as_posix() and p.suffix == ".png")
    page.unlink()
    figure.unlink()
    (root / ".render-cache" / "audit" / "csr-d2s" / "table-ii.json").write_text("{torn")
    again = render(out)
    assert page in again.written and page.exists() and figure.exists() and again.drawn == 0
    fresh = tmp / "fresh"
    render(fresh, cache=False)
    assert _files(root) == _files(fresh / "paper")


def test_markdown_cell_translation_table_equals_clean_then_escape():
    """markdown_cell is one str.translate; it must give what cleaning, then escaping each character, gives."""
    from bench.report import text

    hostile = ["=HYPERLINK(1)", "a|b\nc\td", "\x00\u202eexe\x1b\x7f\x85\ufeff", "<b>[x](y)</b> `c` \\ &amp;",
               "", "ok", "\u200b\u2066|<U+0000>", "".join(map(chr, range(0, 0x250)))]
    for value in hostile:
        assert export.markdown_cell(value) == "".join(export._MD_ESCAPES.get(ch, ch) for ch in text.clean(value))
    df = pd.DataFrame({"text": hostile, "mixed": [None, True, 1.5, "=1", "x\x1b", 3, False, "|"],
                       "num": [float(i) for i in range(8)]})
    assert "&lt;U+001B&gt;" in export.to_markdown(df) and "\\|" in export.to_markdown(df)


def test_cli_no_cache_rewrites_everything(setup):
    from tests.cli.test_report import bench

    _, results, tmp = setup
    out = tmp / "cli"
    env = {"BENCH_RESULTS": str(results), "BENCH_CACHE": str(tmp / "cache")}
    bench(TABLES[0], "--scale", "paper", "--html", "--out", str(out), env=env)
    root = out / "paper"
    _age(root)
    bench(TABLES[0], "--scale", "paper", "--html", "--out", str(out), env=env)
    assert _touched(root) == set()
    bench(TABLES[0], "--scale", "paper", "--html", "--no-cache", "--out", str(out), env=env)
    assert {"csr-d2s/table-ii.html", "csr-d2s/table-ii/published-vs-measured.svg", "index.html"} <= _touched(root)


def _fixed_tables(tmp_path: Path, monkeypatch, *names: str):
    """The tables, and a results folder whose every row with a published mask AP measured it + 0.3 (paper
    scale); pages dated and the profile cache empty, so two renders can be compared byte for byte."""
    import bench.report.html as pages

    monkeypatch.setattr(pages, "now", lambda: "2026-01-01T00:00:00+00:00")
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    cat = Catalogue()
    tables = [cat.load(n) for n in names]
    results = tmp_path / "results"
    for t in tables:
        for row in t.rows:
            if row.published.get("mask_AP") is not None:
                put(results, fixture_result(t.name, row.id, scale="paper",
                                            measured={"mask_AP": row.published["mask_AP"] + 0.3}), scale="paper")
    return cat, tables, results


def test_figures_drawn_by_worker_processes_equal_one_process_drawing(tmp_path, monkeypatch):
    """workers > 1: spawned processes draw some tables' figures and this process the others (after the audits);
    every file equals a one-process render, byte for byte, and each figure is drawn once."""
    cat, tables, results = _fixed_tables(tmp_path, monkeypatch, "csr-d2s/table-i", "csr-d2s/table-ii",
                                         "csr-d2s/table-iii", "amf-sparseinst/table-4", "amf-sparseinst/table-5",
                                         "isda/table-1")
    one = write_report(tables, "paper", results, tmp_path / "one", catalogue=cat, workers=1)
    two = write_report(tables, "paper", results, tmp_path / "two", catalogue=cat, workers=2)
    assert one.drawn == two.drawn >= len(tables)
    assert _files(tmp_path / "one" / "paper") == _files(tmp_path / "two" / "paper")


def test_a_figure_worker_that_dies_leaves_its_tables_to_this_process(tmp_path, monkeypatch, capfd):
    """A worker killed (SIGKILL: what the OOM killer sends) while it holds tables: the render still writes
    every figure, byte for byte what a one-process render writes, and says on stderr what happened."""
    import signal

    import bench.report.build as build

    cat, tables, results = _fixed_tables(tmp_path, monkeypatch, "csr-d2s/table-i", "csr-d2s/table-ii",
                                         "csr-d2s/table-iii")
    started = build._start_pool

    def doomed(workers, n):   # the real pool, its one worker killed as soon as it runs
        pool = started(workers, n)
        for proc in pool._processes.values():
            os.kill(proc.pid, signal.SIGKILL)
        return pool

    monkeypatch.setattr(build, "_start_pool", doomed)
    two = write_report(tables, "paper", results, tmp_path / "two", catalogue=cat, workers=2)
    assert "a figure worker process died" in capfd.readouterr().err
    monkeypatch.setattr(build, "_start_pool", started)
    one = write_report(tables, "paper", results, tmp_path / "one", catalogue=cat, workers=1)
    assert one.drawn == two.drawn >= len(tables)
    assert _files(tmp_path / "one" / "paper") == _files(tmp_path / "two" / "paper")


def test_a_worker_holds_two_tables_at_most_and_this_process_draws_the_rest(tmp_path, monkeypatch):
    """The tables are handed to a worker two at a time (one drawing, one next), costliest first: none waits
    in the pool's own queue, where this process could not take it back, so this process draws tables too,
    and the cheapest are drawn last. Six tables, one worker."""
    import bench.report.build as build
    from bench.report.plots import figure_cost, write_plots

    cat, tables, results = _fixed_tables(tmp_path, monkeypatch, "csr-d2s/table-i", "csr-d2s/table-ii",
                                         "csr-d2s/table-iii", "amf-sparseinst/table-4", "amf-sparseinst/table-5",
                                         "isda/table-1")
    started, held, submitted = build._start_pool, [], []

    def counted(workers, n):   # the real pool; each table handed over is counted with those it still holds
        pool = started(workers, n)
        submit = pool.submit

        def submit_counted(fn, *args, **kw):
            future = submit(fn, *args, **kw)
            if fn is write_plots:
                submitted.append((figure_cost(args[0]), future))
                held.append(sum(not f.done() for _, f in submitted))
            return future

        pool.submit = submit_counted
        return pool

    monkeypatch.setattr(build, "_start_pool", counted)
    two = write_report(tables, "paper", results, tmp_path / "two", catalogue=cat, workers=2)
    assert held and max(held) <= 2
    assert len(submitted) < len(tables)            # this process drew some tables itself
    costs = [c for c, _ in submitted]
    assert costs == sorted(costs, reverse=True)    # costliest first
    monkeypatch.setattr(build, "_start_pool", started)
    one = write_report(tables, "paper", results, tmp_path / "one", catalogue=cat, workers=1)
    assert one.drawn == two.drawn >= len(tables)
    assert _files(tmp_path / "one" / "paper") == _files(tmp_path / "two" / "paper")


def test_a_recipe_hashes_the_same_in_every_process_and_differs_with_any_field():
    """Pages are keyed by pydantic's JSON of the recipe (bench.report.cache._model_json): the key of every
    table of the catalogue is the same in a process with another hash seed, and a change of any one value of
    a row (an override, a published cell, None against NaN) changes it."""
    import math
    import subprocess
    import sys

    from bench.report.cache import digest

    cat = Catalogue()
    here = {t.name: digest("table", t) for t in cat.tables()}
    code = ("import json; from bench.recipes import Catalogue; from bench.report.cache import digest; "
            "print(json.dumps({t.name: digest('table', t) for t in Catalogue().tables()}))")
    import json

    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env=dict(os.environ, PYTHONHASHSEED=seed)).stdout
        assert json.loads(out) == here
    table = cat.load("csr-d2s/table-ii")
    row = table.rows[1]
    changed = [row.model_copy(update={"published": {**row.published, "mask_AP": row.published["mask_AP"] + 0.1}}),
               row.model_copy(update={"published": {**row.published, "mask_AP": None}}),
               row.model_copy(update={"published": {**row.published, "mask_AP": math.nan}}),
               row.model_copy(update={"model": row.model.model_copy(
                   update={"overrides": {**row.model.overrides, "model.extra": 1}})})]
    keys = {digest("row", r) for r in [row, *changed]}
    assert len(keys) == 1 + len(changed)
