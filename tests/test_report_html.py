"""The report page in a real browser (headless Chromium), after a real smoke run of csr-d2s Table II.

The results come from the suite's session fixture `tiny_table_ii_results` when conftest.py defines it,
else from `bench run csr-d2s/table-ii --scale tests/data/smoke-tiny.yaml --cluster inline` run here
(real training, a few minutes on 2 cores). The screenshot is kept in tests/artifacts/ (gitignored).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import warnings
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "tests" / "artifacts"
TABLE = "csr-d2s/table-ii"
ROWS = ["baseline-fpn", "csr", "d2s", "csr-d2s"]
PUBLISHED = ["34.1", "55.5", "35.7", "18.3", "34.9", "56.4", "36.7", "19.5", "34.8", "56.3", "36.4", "35.4", "56.8",
             "36.9"]
PNG = b"\x89PNG\r\n\x1a\n"


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("headless Chromium is not installed (apt-get install chromium; .ci/run does)")


def browse(url: str, tmp: Path, *extra: str) -> str:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'chromium-profile'}", *extra, url]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def _run_smoke(results: Path) -> None:
    """A real tiny smoke run of the table (rows whose model is missing are simply not runnable)."""
    cmd = [sys.executable, "-c", "from bench.cli import main; main()", "--recipes", str(REPO / "recipes"),
           "--results", str(results), "run", TABLE, "--scale", str(REPO / "tests" / "data" / "smoke-tiny.yaml"),
           "--cluster", "inline"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=REPO)
    if not list((results / "smoke").glob("*/*/*.json")):
        pytest.fail(f"bench run wrote no result file (exit {res.returncode}):\n"
                    f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    if res.returncode != 0:  # a failed row is a real result: the page shows it with its reason
        warnings.warn(f"bench run exited {res.returncode}; the report shows its failed rows", stacklevel=2)


@pytest.fixture(scope="module")
def report(request, tmp_path_factory) -> tuple[Path, Path]:
    """(results folder of a real smoke run, its HTML report folder at smoke scale)."""
    try:
        results = Path(request.getfixturevalue("tiny_table_ii_results"))
    except pytest.FixtureLookupError:
        results = tmp_path_factory.mktemp("smoke") / "results"
        _run_smoke(results)
    from bench.report.command import report_cmd

    out = tmp_path_factory.mktemp("reports")
    env = {"BENCH_RESULTS": str(results), "BENCH_RECIPES": str(REPO / "recipes")}
    res = CliRunner().invoke(report_cmd, [TABLE, "--out", str(out)], env=env, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return results, out / "smoke"


def _measured(results: Path) -> dict[str, dict[str, float]]:
    """row -> {metric: value} of table-ii's metric columns in each done result file of the run."""
    from bench.results import read_result, result_path

    columns = ("mask_AP", "mask_AP50", "mask_AP75", "fps")
    out = {}
    for row in ROWS:
        path = result_path(results, "smoke", TABLE, row)
        if path.exists() and (res := read_result(path)).status == "done":
            out[row] = {k: v for k, v in res.measured.items() if k in columns and v is not None}
    return out


def images(dom: str) -> list[dict[str, str]]:
    """The attributes of every <img> in a dumped DOM."""
    found: list[dict[str, str]] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "img":
                found.append({k: v or "" for k, v in attrs})

    Parser().feed(dom)
    return found


def test_table_page_in_chromium(report, tmp_path):
    results, reports = report
    page = reports / "csr-d2s" / "table-ii.html"
    dom = browse(page.as_uri(), tmp_path, "--dump-dom", "--virtual-time-budget=5000")

    rows = re.findall(r'<tr id="row-([^"]+)" data-row="[^"]+" data-status="([^"]+)"', dom)
    assert [r for r, _ in rows] == ROWS
    pubs = re.findall(r'<div class="pub">([^<]*)', dom)
    for cell in PUBLISHED:
        assert cell in pubs, cell

    # every done row's measured numbers, as its result file holds them, are in its cells
    measured = _measured(results)
    assert [r for r, status in rows if status == "done"] == list(measured)
    assert any(measured.values()), "the smoke run measured nothing at all"
    for row in measured:
        tr = re.search(rf'<tr id="row-{row}".*?</tr>', dom, re.S).group(0)
        for metric, value in measured[row].items():
            cell = re.search(rf'data-metric="{metric}".*?<div class="meas">([^<]*)</div>', tr, re.S).group(1)
            assert cell == f"{value:.1f}", (row, metric, cell, value)
    for row, status in rows:
        if status != "done":
            assert re.search(rf'<tr id="row-{row}".*?class="why"', dom, re.S), f"{row} ({status}) shows no reason"

    assert 'id="claims-table"' in dom
    claims = re.findall(r'data-claim="([^"]+)" data-metric="mask_AP" data-verdict="([^"]+)"', dom)
    assert claims == [("csr", "inconclusive"), ("d2s", "inconclusive"), ("csr-d2s", "inconclusive")]
    assert "smoke numbers never confirm or refute a paper claim" in dom
    assert "SMOKE SCALE — not comparable to the paper" in dom

    # figures: relative files beside the page, real SVGs, and loaded by the browser (naturalWidth > 0)
    imgs = images(dom)
    assert len(imgs) == 3 and re.search(r'data-images-loaded="3/3"', dom)  # set by the page's load handler
    for img in imgs:
        src = img["src"]
        assert img.get("data-loaded") == "yes" and not src.startswith(("/", "file:", "http", "data:")), img
        path = page.parent / src
        assert path.suffix == ".svg" and path.stat().st_size > 5000
        assert path.read_text().startswith("<?xml") and "<svg" in path.read_text()[:500]

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-table-ii.png"
    shot.unlink(missing_ok=True)
    browse(page.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1400,2000", "--hide-scrollbars")
    assert shot.read_bytes()[:8] == PNG and shot.stat().st_size > 20000


def test_index_page_in_chromium(report, tmp_path):
    dom = browse((report[1] / "index.html").as_uri(), tmp_path, "--dump-dom")
    line = re.search(r'<tr data-table="csr-d2s/table-ii">(.*?)</tr>', dom, re.S).group(1)
    assert 'href="csr-d2s/table-ii.html"' in line
    counts = [int(n) for n in re.findall(r'<td class="num">(\d+)</td>', line)]
    assert counts[0] == 4 and sum(counts[1:6]) == 4                      # every row counted once by status
    assert "SMOKE SCALE — not comparable to the paper" in dom


def test_smoke_page_shows_the_architecture_audit_coloured(report, tmp_path, monkeypatch):
    """At smoke scale the AP cells stay 'not comparable', while the audit's #params verdict (comparable at
    any scale: the paper's configuration built on the CPU) is shown and coloured."""
    from bench.report.command import report_cmd

    results, _ = report
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    env = {"BENCH_RESULTS": str(results), "BENCH_RECIPES": str(REPO / "recipes"), "BENCH_CACHE": str(tmp_path / "cache")}
    from bench.cli import main

    res = CliRunner().invoke(main, ["audit", TABLE], env=env, catch_exceptions=False)
    assert res.exit_code == 0 and "published in csr-d2s/table-i/ours" in res.output, res.output
    out = tmp_path / "reports"
    res = CliRunner().invoke(report_cmd, [TABLE, "--out", str(out), "--html"], env=env, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    page = out / "smoke" / "csr-d2s" / "table-ii.html"
    dom = browse(page.as_uri(), tmp_path, "--dump-dom")
    audit = re.search(r'<table class="data" id="audit-table">(.*?)</table>', dom, re.S).group(1)
    row = re.search(r'<tr class="audit-row">.*?csr-d2s.*?</tr>|<tr class="audit-row">(?:(?!</tr>).)*params_M(?:(?!</tr>).)*</tr>',
                    audit, re.S).group(0)
    assert re.search(r'class="metric num within"', row) and re.search(r'class="agreement within">(exact|within)<', row)
    assert "SMOKE SCALE — not comparable to the paper" in dom
    assert 'class="metric within' not in dom.split('id="audit"')[0]   # the AP cells above are not coloured
    # the text's stated figures (Sec. IV-B2: +0.8, about +0.7, +1.3 AP) against the table's own cells
    checks = re.findall(r'<tr class="claim-check" data-row="([^"]+)" data-agreement="([^"]+)"', dom)
    assert checks == [("csr", "consistent"), ("d2s", "consistent"), ("csr-d2s", "consistent")]
    # the index summarises the audit per paper: the #params cell measured exact or within
    index = browse((out / "smoke" / "index.html").as_uri(), tmp_path, "--dump-dom")
    line = re.search(r'<tr data-paper="csr-d2s">(.*?)</tr>', index, re.S).group(1)
    exact, within, outside, unmeasured, consistent, inconsistent, cannot = map(int, re.findall(r'>(\d+)</td>', line))
    assert exact + within == 1 and outside == 0 and consistent == 3 and inconsistent == 0
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-table-ii-audit.png"
    shot.unlink(missing_ok=True)
    browse(page.as_uri() + "#audit", tmp_path, f"--screenshot={shot}", "--window-size=1400,2400", "--hide-scrollbars")
    assert shot.read_bytes()[:8] == PNG


def test_table_page_shows_each_rows_fidelity_beside_it(fidelity_recipes, tmp_path):
    """An approximate port is never read as the original: on the page (no results needed) its fidelity
    badge sits beside the row's label in the table, the claims and the provenance, each deviation is a note (its
    markup shown as text), a faithful row says so, and a row that states nothing carries no badge."""
    from bench.report.command import report_cmd
    from tests.conftest import DEVIATIONS

    out = tmp_path / "reports"
    env = {"BENCH_RESULTS": str(tmp_path / "results"), "BENCH_RECIPES": str(fidelity_recipes),
           "BENCH_CACHE": str(tmp_path / "cache")}
    res = CliRunner().invoke(report_cmd, [TABLE, "--out", str(out), "--html"], env=env, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    dom = browse((out / "smoke" / "csr-d2s" / "table-ii.html").as_uri(), tmp_path, "--dump-dom")
    main = re.search(r'<table class="paper-table" id="results">(.*?)</table>', dom, re.S).group(1)
    labels = dict(re.findall(r'<tr id="row-([^"]+)".*?<td class="label">(.*?)</td>', main, re.S))
    assert set(labels) == set(ROWS)
    badge = r'<span class="badge fidelity {0}" data-fidelity="{0}" title="([^"]*)">{0}</span>'
    title = re.search(badge.format("approximate"), labels["csr"]).group(1)
    assert title == "approximate port: " + "; ".join(DEVIATIONS).replace("<", "&lt;").replace(">", "&gt;")
    assert re.search(badge.format("faithful"), labels["d2s"])
    assert "fidelity" not in labels["baseline-fpn"] and "fidelity" not in labels["csr-d2s"]
    notes = re.findall(r'<li class="deviation" data-row="([^"]+)">(.*?)</li>', dom, re.S)
    assert notes == [("csr", f"Row 2 (+ CSR), approximate port: {d}".replace("<", "&lt;").replace(">", "&gt;"))
                     for d in DEVIATIONS]
    prov = re.search(r'<table class="data" id="provenance-table">(.*?)</table>', dom, re.S).group(1)
    assert re.findall(r'data-fidelity="([^"]+)"', prov) == ["approximate", "faithful"]
    claims = re.search(r'<table class="data" id="claims-table">(.*?)</table>', dom, re.S).group(1)
    assert re.findall(r'data-fidelity="([^"]+)"', claims) == ["approximate", "faithful"]
    assert "a port that differs from the original system" in dom   # the legend says what the badges mean
