"""Write a report: pages, figures and exports for some tables, and the index of every table reported.

Layout under the reports folder (``reports/`` at the repository root, ``$BENCH_REPORTS``, or ``--out``)::

    <scale>/index.html                      every table reported at this scale, with its status
    <scale>/report.{csv,md}                 the frame of the tables of the latest report
    <scale>/<paper>/<table>.html            the table page
    <scale>/<paper>/<table>/*.{png,svg}     its figures
    <scale>/<paper>/<table>.{csv,md,tex}    its exports
    <scale>/<paper>/<table>.summary.json    its line on the index (so reporting one table keeps the others)

Smoke and paper reports live apart, so a smoke report never overwrites a paper one.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from bench.recipes import Catalogue, Table
from bench.report.frame import TableView, baseline_tables, build_table_view, gather

#: export formats: CLI name -> file suffix
EXPORT_SUFFIXES = {"csv": "csv", "md": "md", "latex": "tex"}


def default_reports_dir() -> Path:
    env = os.environ.get("BENCH_REPORTS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "reports"


@dataclass
class ReportOutput:
    """What a report wrote, and what it found wrong on the way."""

    root: Path
    index: Optional[Path] = None
    pages: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    exports: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    views: list[TableView] = field(default_factory=list)


def _table_paths(root: Path, table: Table) -> tuple[Path, Path]:
    """(page, figure folder) of a table."""
    base = root / table.paper.slug / table.table
    return base.with_suffix(".html"), base


def _write(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_exports(view: TableView, base: Path, formats: Sequence[str]) -> dict[str, Path]:
    from bench.report import export

    out: dict[str, Path] = {}
    frame = export.report_frame([view]) if {"csv", "md"} & set(formats) else None
    title = f"{view.table.name} ({view.scale} scale)"
    for fmt in formats:
        path = base.with_suffix("." + EXPORT_SUFFIXES[fmt])
        if fmt == "csv":
            out[fmt] = _write(path, export.to_csv(frame))
        elif fmt == "md":
            out[fmt] = _write(path, f"# {export.markdown_cell(title)}\n\n" + export.table_markdown(view)
                              + "\n## All fields\n\n" + export.to_markdown(frame))
        else:
            out[fmt] = _write(path, export.to_latex(view))
    return out


def draw_figures(jobs: Sequence[tuple[TableView, Path]], workers: int) -> list[list]:
    """Each table's figures (``plots.write_plots``), in worker processes when there are several tables.

    Drawing dominates a report's time (matplotlib is single-threaded); tables are independent."""
    from bench.report.plots import write_plots

    workers = min(workers, len(jobs))
    if workers <= 1:
        return [write_plots(view, folder) for view, folder in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(write_plots, [v for v, _ in jobs], [f for _, f in jobs]))


def _write_page(view: TableView, plots: list, exports: dict[str, Path], index: Path, result: ReportOutput,
                catalogue: Optional[Catalogue] = None) -> None:
    from bench.report import html as pages

    page, _ = _table_paths(index.parent, view.table)
    result.figures += [p for plot in plots for p in plot.files.values()]
    audit = pages.page_audit(view.table, catalogue)
    result.pages.append(_write(page, pages.render_table_page(view, plots, page, exports, index, catalogue, audit)))
    summary = pages.summary_of(view, page, index.parent, audit)
    _write(page.with_suffix(".summary.json"), json.dumps(asdict(summary), indent=1))


def _summaries(root: Path, catalogue: Catalogue) -> list:
    """Every table page's summary at this scale, in catalogue order (unknown tables last)."""
    from bench.report.html import Summary

    found = {}
    for path in root.glob("*/*.summary.json"):
        try:
            s = Summary(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # a torn or foreign file: its table is simply not listed until reported again
        if (root / s.page).exists():
            found[s.name] = s
    order = {name: i for i, name in enumerate(catalogue.names())}
    return sorted(found.values(), key=lambda s: (order.get(s.name, len(order)), s.name))


def write_report(tables: Sequence[Table], scale: str, results_root: Path, out: Optional[Path] = None, *,
                 catalogue: Catalogue, html: bool = True, formats: Sequence[str] = ("csv", "md", "latex"),
                 extra_roots: Sequence[Path] = (), workers: int = 1) -> ReportOutput:
    """Report ``tables`` at ``scale`` from ``results_root`` (plus other seeds' folders ``extra_roots``).

    ``workers`` > 1 draws the figures of several tables in that many spawned processes; a script calling
    this with workers > 1 needs the usual ``if __name__ == "__main__":`` guard (multiprocessing's rule)."""
    from bench.report import export

    root = Path(out or default_reports_dir()) / scale
    gathered = gather(list(tables) + baseline_tables(tables, catalogue), scale, results_root, extra_roots)
    result = ReportOutput(root=root, problems=list(gathered.problems))
    index = root / "index.html"
    result.views = [build_table_view(t, gathered, catalogue) for t in tables]
    exports = [write_exports(v, _table_paths(root, v.table)[0].with_suffix(""), formats) for v in result.views]
    result.exports += [path for e in exports for path in e.values()]
    if html:
        figures = draw_figures([(v, _table_paths(root, v.table)[1]) for v in result.views], workers)
        for view, plots, table_exports in zip(result.views, figures, exports, strict=True):
            _write_page(view, plots, table_exports, index, result, catalogue)
    combined = {}
    if {"csv", "md"} & set(formats):
        frame = export.report_frame(result.views)
        if "csv" in formats:
            combined["csv"] = _write(root / "report.csv", export.to_csv(frame))
        if "md" in formats:
            combined["md"] = _write(root / "report.md", export.to_markdown(frame, f"bench report ({scale} scale)"))
        result.exports += combined.values()
    if html:
        from bench.report import html as pages

        own = [p for p in result.problems if any(f"/{t.name}/" in p for t in tables)]
        links = {fmt: pages.href(path, root) for fmt, path in combined.items()}
        result.index = _write(index, pages.render_index(_summaries(root, catalogue), scale, own, links))
    return result
