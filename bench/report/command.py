"""`bench report`: the click command. Cheap to import: the work happens in ``bench.report.build``."""
from __future__ import annotations

import os
from pathlib import Path

import click

FORMATS = ("md", "csv", "latex")
FIGURE_FORMATS = ("svg", "png", "pdf")   # = bench.report.plots.FORMATS (a test holds them equal; this module stays light)


class ReportError(click.ClickException):
    """An error the user can fix (unknown table, bad recipe), printed like the other bench commands'."""

    def show(self, file=None) -> None:
        click.echo(f"bench: error: {self.format_message()}", err=True)


def _tables(ctx: click.Context, names: tuple[str, ...], all_tables: bool):
    from bench.recipes import Catalogue, RecipeError

    obj = ctx.find_root().obj or {}
    try:
        cat = Catalogue(obj.get("recipes"))
        return cat, ([cat.load(n) for n in names] if names and not all_tables else cat.tables())
    except RecipeError as e:
        raise ReportError(str(e)) from None


@click.command("report")
@click.argument("tables", nargs=-1)
@click.option("--all", "all_tables", is_flag=True, help="Every table of the catalogue (the default without TABLE).")
@click.option("--html", "html", is_flag=True, help="Write the HTML pages, figures and index.")
@click.option("--format", "formats", type=click.Choice(FORMATS + ("model-index",)), multiple=True,
              help="Write this export (repeatable): md, csv, latex (booktabs); model-index: OpenMMLab's model-index.yml "
                   "and one metafile per paper (measured values with their provenance; --smoke for a smoke scale).")
@click.option("--smoke", "smoke_index", is_flag=True,
              help="With --format model-index at smoke scale: write it anyway (every model says it is not comparable).")
@click.option("--scale", type=click.Choice(["smoke", "paper"]), default="smoke", show_default=True,
              help="Which results to report: results/<scale>/.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Reports folder (default: $BENCH_REPORTS or the repository's reports/); pages go to OUT/<scale>/.")
@click.option("--extra-results", type=click.Path(file_okay=False, path_type=Path), multiple=True,
              help="Further results folders holding other seeds' runs of the same rows (repeatable): "
                   "cells show mean ± sd and claims use the spread as noise. The seeds of "
                   "`bench run --seeds N` (results/seeds/<k>/) are always included.")
@click.option("--figure-format", "figure_formats", type=click.Choice(FIGURE_FORMATS), multiple=True,
              help="Figure files beside each page (repeatable; default svg, which the page shows): png for slides "
                   "and tools without SVG (the page shows it when no svg is asked for), pdf for LaTeX. Each "
                   "format is drawn anew: two double the figures' time.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Processes drawing figures when reporting several tables (default: one per CPU).")
@click.option("--no-cache", "no_cache", is_flag=True,
              help="Render and write every page, figure and export (by default only those whose content hash "
                   "changed: OUT/<scale>/.render-cache and <table>.render.json).")
@click.pass_context
def report_cmd(ctx: click.Context, tables: tuple[str, ...], all_tables: bool, html: bool,
               formats: tuple[str, ...], scale: str, out: Path | None, extra_results: tuple[Path, ...],
               jobs: int | None, smoke_index: bool = False, no_cache: bool = False,
               figure_formats: tuple[str, ...] = ()) -> None:
    """Put published and measured numbers side by side, per paper table.

    One HTML page per table (the paper's layout; each cell published / measured / Δ coloured by its
    tolerance; claims with their verdict; figures; provenance) and an index of all tables with their
    reproduction status. Without --html or --format, writes the pages and every export."""
    if tables and all_tables:
        raise click.UsageError("name TABLEs or pass --all, not both")
    from bench.report.build import default_reports_dir, write_report
    from bench.results import default_results_dir

    obj = ctx.find_root().obj or {}
    cat, selected = _tables(ctx, tables, all_tables)
    results_root = obj.get("results") or default_results_dir()
    if "model-index" in formats:
        from bench.report.modelindex import ModelIndexError, write_model_index

        try:
            files = write_model_index(selected, scale, results_root, out or default_reports_dir(), smoke=smoke_index)
        except ModelIndexError as e:
            raise ReportError(str(e)) from None
        click.echo(f"model index: {files[0]} ({sum(p.name == 'metafile.yml' for p in files)} metafile(s))")
        formats = tuple(f for f in formats if f != "model-index")
        if not html and not formats:
            return
    if not html and not formats:
        html, formats = True, FORMATS
    from bench.report.plots import DEFAULT_FORMATS, check_formats

    try:
        figure_formats = check_formats(figure_formats or DEFAULT_FORMATS, pages=html)
    except ValueError as e:
        raise click.UsageError(f"--figure-format: {e}") from None
    # the extra seeds of `bench run --seeds N` live in results/seeds/<k>/: always pooled with seed 0
    seed_roots = tuple(sorted(p for p in (Path(results_root) / "seeds").glob("*") if p.is_dir()))
    report = write_report(selected, scale, results_root, out or default_reports_dir(), catalogue=cat, html=html,
                          formats=tuple(dict.fromkeys(formats)), extra_roots=tuple(extra_results) + seed_roots,
                          workers=jobs or os.cpu_count() or 1, cache=not no_cache, figure_formats=figure_formats)
    _echo_summary(report, scale, results_root)


def _echo_summary(report, scale: str, results_root: Path) -> None:
    from bench.report.rules import SMOKE_BANNER

    done = sum(v.counts()["done"] for v in report.views)
    rows = sum(len(v.rows) for v in report.views)
    click.echo(f"bench report: {len(report.views)} table(s), {done}/{rows} rows with results "
               f"({scale} scale, results in {results_root})")
    if scale == "smoke":
        click.echo(f"  {SMOKE_BANNER}")
    if report.index:
        click.echo(f"  index: {report.index}")
    for page in report.pages:
        click.echo(f"  page: {page}")
    for path in report.exports:
        click.echo(f"  export: {path}")
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
