"""`bench report`: pages, claims, plots and exports from result files.

The result files written here are TEST FIXTURES (device 'test fixture', numbers chosen to exercise the
rules), written with the real schema (bench.results.write_result) into tmp folders, never into the
repository's results/ or reports/.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.recipes import Catalogue
from bench.report import rules
from bench.report.command import report_cmd
from bench.report.frame import build_table_view, gather
from bench.report.rules import Sample, Tolerance
from bench.vocab import Agreement, Verdict
from bench.results import Measurement, Result, result_path, write_result

REPO = Path(__file__).resolve().parents[2]
FIXTURE_DEVICE = "test fixture (not a measurement)"
TABLE = "csr-d2s/table-ii"
SCRIPT = "<script>alert(1)</script>"


# ------------------------------------------------------------------------------------ fixtures
def fixture_result(table: str, row: str, status: str = "done", measured: dict | None = None, scale: str = "smoke",
                   seed: int = 0, failure: str | None = None, log_tail: tuple[str, ...] = (),
                   work_dir: str | None = None, label: str = "fixture") -> Result:
    """A valid Result labelled as a test fixture (its numbers are invented for the test)."""
    measurement = Measurement(scale=scale, dataset="test fixture", eval_split="val", iterations=6, batch_size=2,
                              gpus=0, pretrained=False, seed=seed, device=FIXTURE_DEVICE)
    return Result(status=status, table=table, row=row, label=label, run_key=f"fixture-{row}-{seed}",
                  config_hash=f"fixture{seed}", measured=measured or {},
                  measurement=measurement if status == "done" else None, failure=failure,
                  log_tail=list(log_tail), finished_at=f"2026-01-0{seed + 1}T10:00:00+00:00",
                  git_commit="fixture", work_dir=work_dir)


def put(root: Path, res: Result, scale: str = "smoke") -> Path:
    path = result_path(root, scale, res.table, res.row)
    write_result(path, res)
    return path


def bench(*args: str, env: dict[str, str], recipes: Path | None = None, code: int = 0) -> str:
    """Run `bench [--recipes R] report ...` and return its output (``report_cmd`` alone, with R as
    $BENCH_RECIPES, while cli.py does not register it); ``code``: the exit status expected."""
    from bench.cli import main

    if "report" in main.commands:
        cmd, argv = main, (["--recipes", str(recipes)] if recipes else []) + ["report", *args]
    else:
        cmd, argv = report_cmd, list(args)
        env = env | ({"BENCH_RECIPES": str(recipes)} if recipes else {})
    res = CliRunner().invoke(cmd, argv, env=env, catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res.output


def row_statuses(page: str) -> dict[str, str]:
    return dict(re.findall(r'<tr id="row-[^"]+" data-row="([^"]+)" data-status="([^"]+)">', page))


@pytest.fixture
def mixed(tmp_path):
    """table-ii: done (with a real log file), failed, corrupt, missing; table-iii: cancelled + done."""
    results = tmp_path / "results"
    work = results / "smoke" / "runs" / "fixture-baseline"
    log = work / "train" / "20260101_100000" / "20260101_100000.log"
    log.parent.mkdir(parents=True)
    log.write_text("fixture log line 1\nfixture log line 2\n")
    put(results, fixture_result(TABLE, "baseline-fpn", measured={"mask_AP": 1.2, "mask_AP50": 3.4, "fps": 2.5},
                                log_tail=("fixture: last line of the baseline",), work_dir=str(work)))
    put(results, fixture_result(TABLE, "csr", status="failed", failure="RuntimeError: fixture failure: NaN loss",
                                log_tail=("fixture: loss nan",)))
    corrupt = result_path(results, "smoke", TABLE, "d2s")
    corrupt.write_text('{"status": "done", "table": ')  # torn JSON
    put(results, fixture_result("csr-d2s/table-iii", "csr-512", status="cancelled", failure="fixture: scancel"))
    put(results, fixture_result("csr-d2s/table-iii", "csr-256", measured={"mask_AP": 2.0, "fps": 3.0}))
    return {"BENCH_RESULTS": str(results)}, tmp_path / "reports", corrupt, log


# ------------------------------------------------------------------------------------ pages
def test_report_mixed_states(mixed):
    env, out, corrupt, log = mixed
    output = bench(TABLE, "csr-d2s/table-iii", "--out", str(out), env=env)
    assert "SMOKE SCALE" in output and "unreadable result file" in output

    page = (out / "smoke" / "csr-d2s" / "table-ii.html").read_text()
    assert row_statuses(page) == {"baseline-fpn": "done", "csr": "failed", "d2s": "failed", "csr-d2s": "not-run"}
    assert "RuntimeError: fixture failure: NaN loss" in page
    assert "corrupt result file" in page and str(corrupt) in page          # the row says why, and so do Problems
    assert re.search(r'data-row="csr-d2s" data-status="not-run">.*?<span class="badge not-run">not run</span>',
                     page, re.S)
    assert "<title>SMOKE SCALE — not comparable to the paper" in page
    assert "fixture: last line of the baseline" in page and FIXTURE_DEVICE in page
    link = re.search(r'<a href="([^"]+)">train log</a>', page).group(1)      # relative, resolvable log link
    assert not link.startswith(("/", "file:")) and (out / "smoke" / "csr-d2s" / link).resolve() == log.resolve()

    iii = (out / "smoke" / "csr-d2s" / "table-iii.html").read_text()
    assert row_statuses(iii)["csr-512"] == "failed" and "fixture: scancel" in iii
    assert '<span class="badge failed">cancelled</span>' in iii

    index = (out / "smoke" / "index.html").read_text()
    for name in ("csr-d2s Table II", "csr-d2s Table III", 'href="csr-d2s/table-ii.html"', str(corrupt)):
        assert name in index
    t2 = re.search(r'<tr data-table="csr-d2s/table-ii">(.*?)</tr>', index, re.S).group(1)
    assert [int(n) for n in re.findall(r'<td class="num">(\d+)</td>', t2)][:6] == [4, 1, 2, 0, 1, 0]


def test_index_keeps_tables_reported_earlier(mixed):
    env, out, *_ = mixed
    bench("csr-d2s/table-iii", "--html", "--out", str(out), env=env)
    bench(TABLE, "--html", "--out", str(out), env=env)
    index = (out / "smoke" / "index.html").read_text()
    assert 'data-table="csr-d2s/table-ii"' in index and 'data-table="csr-d2s/table-iii"' in index
    assert not (out / "smoke" / "csr-d2s" / "table-ii.csv").exists()       # --html alone writes no export


def test_smoke_plots_say_not_comparable(mixed):
    env, out, *_ = mixed
    bench(TABLE, "--html", "--out", str(out), env=env)
    figures = out / "smoke" / "csr-d2s" / "table-ii"
    names = {p.name for p in figures.iterdir()}
    assert {"published-vs-measured.svg", "speed-accuracy.svg"} <= names
    assert not any(n.endswith((".png", ".pdf")) for n in names)   # SVG unless asked for more
    for svg in figures.glob("*.svg"):
        assert rules.SMOKE_BANNER in svg.read_text(), svg
    page = (out / "smoke" / "csr-d2s" / "table-ii.html").read_text()
    assert '<img src="table-ii/published-vs-measured.svg"' in page and ">PNG</a>" not in page


def test_figure_formats_on_request(mixed):
    """--figure-format png --figure-format pdf: each figure in every format asked for, the page showing the
    SVG and linking each file; a later SVG-only report leaves no PNG or PDF of its own figures behind."""
    env, out, *_ = mixed
    bench(TABLE, "--html", "--figure-format", "svg", "--figure-format", "png", "--figure-format", "pdf",
          "--out", str(out), env=env)
    figures = out / "smoke" / "csr-d2s" / "table-ii"
    for name in ("published-vs-measured", "speed-accuracy"):
        assert (figures / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (figures / f"{name}.png").stat().st_size > 5000
        assert (figures / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
        assert rules.SMOKE_BANNER in (figures / f"{name}.svg").read_text()
    page = (out / "smoke" / "csr-d2s" / "table-ii.html").read_text()
    assert '<img src="table-ii/published-vs-measured.svg"' in page
    assert all(f'href="table-ii/speed-accuracy.{fmt}">{fmt.upper()}</a>' in page for fmt in ("svg", "png", "pdf"))
    bench(TABLE, "--html", "--figure-format", "png", "--out", str(out), env=env)   # PNG alone: the page shows it
    assert '<img src="table-ii/published-vs-measured.png"' in (out / "smoke" / "csr-d2s" / "table-ii.html").read_text()
    assert not (figures / "published-vs-measured.svg").exists()
    bench(TABLE, "--html", "--out", str(out), env=env)
    assert {p.suffix for p in figures.iterdir()} == {".svg"}
    assert "svg or png" in bench(TABLE, "--html", "--figure-format", "pdf", "--out", str(out), env=env, code=2)


def test_exports(mixed):
    import pandas as pd

    env, out, *_ = mixed
    bench(TABLE, "--format", "csv", "--format", "md", "--format", "latex", "--out", str(out), env=env)
    base = out / "smoke" / "csr-d2s" / "table-ii"
    df = pd.read_csv(base.with_suffix(".csv"))
    assert list(df["row"]) == ["baseline-fpn", "csr", "d2s", "csr-d2s"]
    assert df.loc[0, "mask_AP.published"] == 34.1 and df.loc[0, "mask_AP.measured"] == 1.2
    assert df.loc[0, "mask_AP.agreement"] == "not comparable" and df.loc[3, "run_status"] == "not run"
    md = base.with_suffix(".md").read_text()
    assert len(re.findall(r"\|\s+1\s+\|\s+baseline-fpn\s+\|", md)) == 1 and "mask_AP.published" in md
    # laid out as the paper's table, the best published AP in bold; the claims with their verdicts
    assert "| Baseline (FPN) | ✓ |" in md and "| **35.4** |" in md and "## Claims" in md
    assert "| inconclusive |" in md
    tex = base.with_suffix(".tex").read_text()
    for piece in (r"\toprule", r"\midrule", r"\bottomrule", r"\multicolumn{2}{c}{AP}", "paper & ours",
                  r"Baseline (FPN) & $\checkmark$", "34.1 & 1.2", "SMOKE SCALE --- not comparable",
                  r"\textbf{35.4}", r"Measured $\Delta$ [95\% interval]"):
        assert piece in tex, piece
    assert not (out / "smoke" / "index.html").exists()                     # exports alone write no page
    assert (out / "smoke" / "report.csv").exists()


# ------------------------------------------------------------------------------------ escaping
@pytest.fixture
def hostile_recipes(tmp_path):
    """csr-d2s recipes with markup in a label and a published note, and one unknown published cell."""
    root = tmp_path / "recipes"
    shutil.copytree(REPO / "recipes" / "csr-d2s", root / "csr-d2s")
    path = root / "csr-d2s" / "table-ii.yaml"
    text = path.read_text()
    text = text.replace("label: + CSR\n", f"label: '{SCRIPT} & \"double\" ''single'' | pipe_'\n")
    text = text.replace("published: {mask_AP: 34.8, mask_AP50: 56.3,",
                        "published_notes: {mask_AP50: \"not legible <b>in</b> the scan\"}\n"
                        "    published: {mask_AP: 34.8, mask_AP50: null,")
    path.write_text(text)
    return root


def test_html_escaping(tmp_path, hostile_recipes):
    results = tmp_path / "results"
    put(results, fixture_result(TABLE, "csr", measured={"mask_AP": 1.0},
                                log_tail=(f"{SCRIPT} \"quoted\" & 'single'",)))
    out = tmp_path / "reports"
    bench(TABLE, "--out", str(out), env={"BENCH_RESULTS": str(results)}, recipes=hostile_recipes)
    for page in (out / "smoke" / "csr-d2s" / "table-ii.html", out / "smoke" / "index.html"):
        html = page.read_text()
        assert "<script>alert" not in html and "<b>in</b>" not in html
    html = (out / "smoke" / "csr-d2s" / "table-ii.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#34;double&#34; &#39;single&#39;" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &#34;quoted&#34; &amp; &#39;single&#39;" in html  # log line
    tex = (out / "smoke" / "csr-d2s" / "table-ii.tex").read_text()
    assert r"\textless{}script\textgreater{}alert(1)\textless{}/script\textgreater{} \& " in tex
    assert "pipe\\_" in tex
    md = (out / "smoke" / "csr-d2s" / "table-ii.md").read_text()
    assert "\\| pipe_" in md


def test_unknown_published_cell_is_a_question_mark_with_its_note(tmp_path, hostile_recipes):
    env = {"BENCH_RECIPES": str(hostile_recipes), "BENCH_RESULTS": str(tmp_path / "results")}
    bench(TABLE, "--html", "--out", str(tmp_path / "reports"), env=env)
    html = (tmp_path / "reports" / "smoke" / "csr-d2s" / "table-ii.html").read_text()
    cell = re.search(r'<tr id="row-d2s".*?data-metric="mask_AP50".*?</td>', html, re.S).group(0)
    assert '<span class="unknown" title="not legible &lt;b&gt;in&lt;/b&gt; the scan">?</span>' in cell
    assert 'href="#note-1"' in cell and 'id="note-1"' in html


def test_a_test_dev_table_says_its_published_cells_are_test_dev(tmp_path):
    """isda Table 3 is printed on COCO test-dev (Sec. 4.2) and measured on val2017 (test-dev has no public
    annotations): the page's table caption says which split each kind of cell is on, and no row note says
    the row is evaluated on test-dev."""
    out = tmp_path / "reports"
    bench("isda/table-3", "--html", "--out", str(out), env={"BENCH_RESULTS": str(tmp_path / "results")})
    html = (out / "smoke" / "isda" / "table-3.html").read_text()
    caption = re.search(r"<caption>(.*?)</caption>", html, re.S).group(1)
    assert "Published cells: COCO test-dev2017" in caption and "measured cells: COCO val2017" in caption
    table = Catalogue().load("isda/table-3")
    assert {r.train.eval_split for r in table.rows if r.model} == {"val2017"}
    assert not [n for r in table.rows for n in r.notes if re.search(r"evaluated on test-dev", n)]


# ------------------------------------------------------------------------------------ rules
def test_claim_verdict_rule():
    """Each verdict word from an interval of the measured Δ against the paper's Δ (here +0.8)."""
    v = rules.claim_verdict
    assert v(0.8, 1.0, (0.5, 1.5), smoke=False)[0] is Verdict.HELD              # excludes 0, reaches +0.8
    assert v(0.8, 1.4, (1.0, 1.8), smoke=False)[0] is Verdict.HELD              # larger than the paper's: held
    assert v(0.8, 0.3, (0.1, 0.5), smoke=False)[0] is Verdict.HELD_SMALLER      # +1.3 claimed, +0.3 found, say
    assert v(0.8, 0.1, (-0.2, 0.4), smoke=False)[0] is Verdict.NOT_REPRODUCED   # holds 0, not +0.8
    assert v(0.8, -1.0, (-1.5, -0.5), smoke=False)[0] is Verdict.REVERSED
    verdict, why = v(0.8, 0.3, (-0.2, 0.9), smoke=False, mde=1.1)              # holds 0 and +0.8
    assert verdict is Verdict.INCONCLUSIVE and "MDE 1.1" in why
    assert v(0.8, 1.0, (0.5, 1.5), smoke=True) == (Verdict.INCONCLUSIVE, rules.claim_verdict(1, 1, (0, 2), True)[1])
    assert "never confirm or refute" in v(0.8, 1.0, (0.5, 1.5), smoke=True)[1]
    assert v(None, 1.0, (0.5, 1.5), smoke=False)[0] is Verdict.INCONCLUSIVE
    assert v(0.8, None, None, smoke=False)[0] is Verdict.INCONCLUSIVE
    assert v(0.0, 2.0, (1.5, 2.5), smoke=False)[0] is Verdict.INCONCLUSIVE      # no direction to test
    assert v(-1.2, -2.0, (-2.4, -1.6), smoke=False)[0] is Verdict.HELD          # lower FPS, as published
    assert v(-1.2, -0.5, (-0.9, -0.1), smoke=False)[0] is Verdict.HELD_SMALLER


def test_noise_band_uses_seeds_when_both_rows_have_them():
    tol = Tolerance(0.5, relative=False, source="default")
    noise, how = rules.noise_band(Sample((35.0, 35.2, 35.4)), Sample((34.0, 34.2, 34.4)), tol, 35.0)
    assert noise == pytest.approx(2 * (0.04 / 3 + 0.04 / 3) ** 0.5) and "seeds" in how
    assert rules.noise_band(Sample((35.0, 35.0)), Sample((34.0, 34.0)), tol, 35.0, decimals=1)[0] == 0.05
    noise, how = rules.noise_band(Sample((35.0,)), Sample((34.0, 34.2)), tol, 35.0)
    assert noise == 0.5 and "tolerance" in how
    rel = Tolerance(0.02, relative=True, source="default")
    assert rules.noise_band(Sample((19.0,)), Sample((18.0,)), rel, 19.5)[0] == pytest.approx(0.39)


def test_tolerance_precedence():
    cat = Catalogue()
    table = cat.load("sbr-cnn/table-2")                                       # table tolerance params_M 0.001
    row = table.rows[0]
    assert rules.tolerance_for("params_M", row, table) == Tolerance(0.001, False, "table")
    assert rules.tolerance_for("mask_AP", row, table) == rules.DEFAULT_TOLERANCES["ap"]
    assert rules.tolerance_for("fps", row, table).relative
    own = row.model_copy(update={"tolerance": {"params_M": 0.2}})
    assert rules.tolerance_for("params_M", own, table) == Tolerance(0.2, False, "row")
    assert rules.agreement(34.1, Sample((34.5,)), rules.DEFAULT_TOLERANCES["ap"], True) is Agreement.WITHIN
    assert rules.agreement(34.1, Sample((34.7,)), rules.DEFAULT_TOLERANCES["ap"], True) is Agreement.OUTSIDE
    assert rules.agreement(34.1, Sample((34.7,)), rules.DEFAULT_TOLERANCES["ap"], False) is Agreement.NOT_COMPARABLE


def _paper_fixtures(root: Path, seeds: tuple[int, ...] = (0,), spread: float = 0.0) -> None:
    """Paper-scale fixtures for table-ii: + CSR holds, + D2S reverses, + CSR + D2S is within noise."""
    ap = {"baseline-fpn": 34.3, "csr": 35.3, "d2s": 33.5, "csr-d2s": 34.5}
    for i, seed in enumerate(seeds):
        sub = root if i == 0 else root.with_name(f"{root.name}-seed{seed}")
        for row, value in ap.items():
            jitter = spread * (i - (len(seeds) - 1) / 2)
            put(sub, fixture_result(TABLE, row, scale="paper", seed=seed,
                                    measured={"mask_AP": value + jitter, "fps": 19.0}), scale="paper")


def test_paper_scale_cells_and_verdicts(tmp_path):
    cat = Catalogue()
    table = cat.load(TABLE)
    _paper_fixtures(tmp_path / "results")
    view = build_table_view(table, gather([table], "paper", tmp_path / "results"), cat)
    cells = {rv.row.id: rv.cells for rv in view.rows}
    assert cells["baseline-fpn"]["mask_AP"].agreement is Agreement.WITHIN      # 34.3 vs 34.1
    assert cells["csr"]["mask_AP"].agreement is Agreement.WITHIN               # 35.3 vs 34.9
    assert cells["d2s"]["mask_AP"].agreement is Agreement.OUTSIDE              # 33.5 vs 34.8
    assert cells["baseline-fpn"]["fps"].agreement is Agreement.OUTSIDE         # 19.0 vs 18.3 (> 2%)
    assert cells["csr"]["mask_AP50"].agreement is Agreement.NOT_MEASURED
    verdicts = {c.row.row.id: c.verdict for c in view.claims}
    # + CSR +1.0 vs +0.8 held; + D2S −0.8 vs +0.7 reversed; + CSR + D2S +0.2 ± 0.5 holds 0 but not +1.3
    assert verdicts == {"csr": Verdict.HELD, "d2s": Verdict.REVERSED, "csr-d2s": Verdict.NOT_REPRODUCED}
    claim = next(c for c in view.claims if c.row.row.id == "csr")
    ap = next(m for m in claim.metrics if m.metric == "mask_AP")
    assert ap.published_delta == pytest.approx(0.8) and ap.measured_delta == pytest.approx(1.0)
    assert (ap.lo, ap.hi) == (pytest.approx(0.5), pytest.approx(1.5)) and "no per-image matches" in ap.noise_source
    assert claim.claim.startswith("Adding CSR") and claim.primary == "mask_AP"


def test_seeds_give_mean_spread_and_noise(tmp_path):
    cat = Catalogue()
    table = cat.load(TABLE)
    root = tmp_path / "results"
    _paper_fixtures(root, seeds=(0, 1, 2), spread=0.2)
    extra = [tmp_path / "results-seed1", tmp_path / "results-seed2"]
    view = build_table_view(table, gather([table], "paper", root, extra), cat)
    cell = view.rows[1].cells["mask_AP"]
    assert cell.measured.n == 3 and cell.measured.mean == pytest.approx(35.3) and cell.measured.sd == pytest.approx(0.2)
    claim = next(c for c in view.claims if c.row.row.id == "csr-d2s")
    ap = next(m for m in claim.metrics if m.metric == "mask_AP")
    assert "3+3 seeds" in ap.noise_source and ap.noise == pytest.approx(2 * (2 * 0.04 / 3) ** 0.5)
    out = tmp_path / "reports"
    extra_args = [a for p in extra for a in ("--extra-results", str(p))]
    bench(TABLE, "--scale", "paper", "--html", "--out", str(out), *extra_args, env={"BENCH_RESULTS": str(root)})
    html = (out / "paper" / "csr-d2s" / "table-ii.html").read_text()
    assert "35.3 ± 0.2" in html and "mean ± sd over seeds" in html and "SMOKE" not in html
    assert 'data-verdict="held"' in html and 'data-verdict="reversed"' in html


def test_cross_table_baseline(tmp_path):
    cat = Catalogue()
    table = cat.load("amf-sparseinst/table-6")
    from bench.report.frame import baseline_tables

    extra = baseline_tables([table], cat)
    assert [t.name for t in extra] == ["amf-sparseinst/table-4"]
    view = build_table_view(table, gather([table] + extra, "paper", tmp_path / "none"), cat)
    assert view.claims and all(c.baseline_label.startswith("amf-sparseinst/table-4: ") for c in view.claims)
    assert all(c.verdict is Verdict.INCONCLUSIVE for c in view.claims)        # nothing measured


def test_the_command_offers_the_figure_formats_plots_draws():
    from bench.report import command, plots

    assert command.FIGURE_FORMATS == plots.FORMATS and set(plots.DEFAULT_FORMATS) <= set(plots.FORMATS)


def test_command_module_is_cheap_to_import():
    code = ("import sys, bench.report.command; "
            "heavy = [m for m in ('pandas', 'matplotlib', 'jinja2', 'torch', 'mmdet') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_unknown_table_is_an_error(tmp_path):
    res = CliRunner().invoke(report_cmd, ["tabel-ii", "--out", str(tmp_path)])
    assert res.exit_code == 1 and "did you mean" in res.output
    res = CliRunner().invoke(report_cmd, ["table-ii", "--all", "--out", str(tmp_path)])
    assert res.exit_code == 2
