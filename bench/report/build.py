"""Write a report: pages, figures and exports for some tables, and the index of every table reported.

Layout under the reports folder (``reports/`` at the repository root, ``$BENCH_REPORTS``, or ``--out``)::

    <scale>/index.html                      every table reported at this scale, with its status
    <scale>/report.{csv,md}                 the frame of the tables of the latest report
    <scale>/<paper>/<table>.html            the table page
    <scale>/<paper>/<table>/*.{png,svg}     its figures
    <scale>/<paper>/<table>.{csv,md,tex}    its exports
    <scale>/<paper>/<table>.summary.json    its line on the index (so reporting one table keeps the others)

    <scale>/<paper>/<table>.render.json     its content hashes (page, exports, figures: bench.report.cache)
    <scale>/.render-cache/                  figures by content hash, audits by input key, the index's hash

Smoke and paper reports live apart, so a smoke report never overwrites a paper one. A page whose content
hash is unchanged is not written again, nor are its figures and exports (``bench.report.cache``).
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
    written: list[Path] = field(default_factory=list)   # pages, figures and exports this render (re)wrote
    drawn: int = 0                                       # figures drawn (not copied from the figure store)


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


def _record_path(root: Path, table: Table) -> Path:
    return root / table.paper.slug / f"{table.table}.render.json"


def write_exports(view: TableView, base: Path, formats: Sequence[str], records: Optional[list] = None,
                  keys: Optional[dict[str, str]] = None, done: Optional[dict] = None,
                  written: Optional[list] = None) -> dict[str, Path]:
    """The table's exports. ``keys``/``done``: each format's content hash and the one its file was last
    written with (an export whose hash is unchanged and whose file exists is not rewritten)."""
    from bench.report import export

    out: dict[str, Path] = {}
    frame = None
    title = f"{view.table.name} ({view.scale} scale)"
    for fmt in formats:
        path = base.with_suffix("." + EXPORT_SUFFIXES[fmt])
        out[fmt] = path
        if keys is not None and done is not None and done.get(fmt) == keys[fmt] and path.exists():
            continue
        if frame is None and fmt in ("csv", "md"):
            frame = export.report_frame([view], records)
        if fmt == "csv":
            _write(path, export.to_csv(frame))
        elif fmt == "md":
            _write(path, f"# {export.markdown_cell(title)}\n\n" + export.table_markdown(view)
                   + "\n## All fields\n\n" + export.to_markdown(frame))
        else:
            _write(path, export.to_latex(view))
        if written is not None:
            written.append(path)
    return out


def _write_page(view: TableView, plots: list, exports: dict[str, Path], index: Path, result: ReportOutput,
                catalogue: Optional[Catalogue] = None, audit=None) -> None:
    from bench.report import html as pages

    page, _ = _table_paths(index.parent, view.table)
    audit = audit if audit is not None else pages.page_audit(view.table, catalogue)
    result.pages.append(_write(page, pages.render_table_page(view, plots, page, exports, index, catalogue, audit)))
    result.written.append(page)
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
                 extra_roots: Sequence[Path] = (), workers: int = 1, cache: bool = True) -> ReportOutput:
    """Report ``tables`` at ``scale`` from ``results_root`` (plus other seeds' folders ``extra_roots``).

    ``workers`` > 1 draws the figures of several tables in that many processes (this one and workers - 1 spawned); a script calling
    this with workers > 1 needs the usual ``if __name__ == "__main__":`` guard (multiprocessing's rule).
    ``cache`` False renders and writes everything (what a cached render's output always equals)."""
    from bench.report import cache as rc
    from bench.report import export

    root = Path(out or default_reports_dir()) / scale
    gathered = gather(list(tables) + baseline_tables(tables, catalogue), scale, results_root, extra_roots)
    result = ReportOutput(root=root, problems=list(gathered.problems))
    index = root / "index.html"
    result.views = views = [build_table_view(t, gathered, catalogue) for t in tables]
    code = rc.render_code_key() if cache else ""
    view_keys = [rc.digest("view", code, v) if cache else None for v in views]
    old = [rc.read_record(_record_path(root, v.table)) if cache else {} for v in views]
    new = [{"view": k} for k in view_keys]
    records = [[export.row_record(v, rv) for rv in v.rows] for v in views]   # one frame line per row, once
    exports = []
    for v, vk, rec, was, now in zip(views, view_keys, records, old, new, strict=True):
        keys = {fmt: rc.digest("export", fmt, vk) for fmt in formats} if cache else None
        exports.append(write_exports(v, _table_paths(root, v.table)[0].with_suffix(""), formats, rec, keys,
                                     was.get("exports") or {}, result.written))
        now["exports"] = keys or {}
    result.exports += [path for e in exports for path in e.values()]
    if html:
        _pages(views, view_keys, exports, old, new, index, result, catalogue, workers, cache)
    for v, was, now in zip(views, old, new, strict=True):
        if cache and now != {k: was.get(k) for k in now}:   # what this render did not redo keeps its hash
            rc.write_record(_record_path(root, v.table), {k: w for k, w in was.items() if k != "version"} | now)
    combined = {}
    if {"csv", "md"} & set(formats):
        state = rc.read_record(rc.cache_dir(root) / "combined.json") if cache else {}
        keys = {fmt: rc.digest("combined", fmt, scale, view_keys) for fmt in ("csv", "md")}
        frame = None
        for fmt, path in (("csv", root / "report.csv"), ("md", root / "report.md")):
            if fmt not in formats:
                continue
            combined[fmt] = path
            if cache and state.get(fmt) == keys[fmt] and path.exists():
                continue
            if frame is None:
                frame = export.report_frame(views, [r for rec in records for r in rec])
            _write(path, export.to_csv(frame) if fmt == "csv"
                   else export.to_markdown(frame, f"bench report ({scale} scale)"))
            result.written.append(path)
            state[fmt] = keys[fmt]
        if cache:
            state.pop("version", None)
            rc.write_record(rc.cache_dir(root) / "combined.json", state)
        result.exports += combined.values()
    if html:
        from bench.report import html as pages

        own = [p for p in result.problems if any(f"/{t.name}/" in p for t in tables)]
        links = {fmt: pages.href(path, root) for fmt, path in combined.items()}
        summaries = _summaries(root, catalogue)
        key = rc.digest("index", code, scale, summaries, own, links) if cache else None
        state = rc.read_record(rc.cache_dir(root) / "index.json") if cache else {}
        if cache and state.get("key") == key and index.exists():
            result.index = index
        else:
            result.index = _write(index, pages.render_index(summaries, scale, own, links))
            result.written.append(index)
            if cache:
                rc.write_record(rc.cache_dir(root) / "index.json", {"key": key})
    return result


def _pages(views: list[TableView], view_keys: list, exports: list[dict[str, Path]], old: list[dict],
           new: list[dict], index: Path, result: ReportOutput, catalogue: Optional[Catalogue], workers: int,
           cache: bool) -> None:
    """Each table's page and figures: only those whose content hash changed are drawn and written.

    Figures depend on the views alone, pages on the audits too: the figures that must be drawn are handed
    to the worker processes first, and the audits are computed (or read from the cache) while they draw."""
    from bench.report import cache as rc
    from bench.report import html as pages
    from bench.report.plots import FIGURES, Plot, figure_key, plot_data, write_plots

    root = index.parent
    store = rc.cache_dir(root) / "figures" if cache else None
    datas = [plot_data(v) for v in views]
    fig_keys = [{name: figure_key(name, d) for name in FIGURES} if cache else {} for d in datas]
    plots: dict[int, list] = {}
    for i, (v, was) in enumerate(zip(views, old, strict=True)):
        files = {name: {fmt: root / f for fmt, f in was["plots"][name].items()} for name in was.get("plots") or {}}
        if cache and was.get("figures") == fig_keys[i] and isinstance(was.get("plots"), dict) \
                and all(p.exists() for f in files.values() for p in f.values()):
            plots[i] = [Plot(name, FIGURES[name][0], FIGURES[name][1], files[name], drawn=False) for name in files]
    jobs = [i for i in range(len(views)) if i not in plots]
    args = [(datas[i], _table_paths(root, views[i].table)[1], store) for i in jobs]
    pool = None
    if min(workers, len(jobs)) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # workers - 1 processes, this one being the last: it computes the audits, then draws the tables
        # no worker has started (a worker's start-up, ~1 CPU-s of imports, is saved once)
        pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)) - 1,
                                   mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = [pool.submit(write_plots, *a) for a in args] if pool else []
        akey = rc.audit_key(catalogue) if cache else None
        audits = [rc.cached_page_audit(v.table, catalogue, root, akey) if cache
                  else pages.page_audit(v.table, catalogue) for v in views]
        if pool:
            local = {k: write_plots(*args[k]) for k in reversed(range(len(futures))) if futures[k].cancel()}
            drawn = [local[k] if k in local else f.result() for k, f in enumerate(futures)]
        else:
            drawn = [write_plots(*a) for a in args]
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    for i, got in zip(jobs, drawn, strict=True):
        plots[i] = got
        result.drawn += sum(plot.drawn for plot in got)
        result.written += [p for plot in got if plot.drawn for p in plot.files.values()]
    for i, (v, vk, ex, was, now) in enumerate(zip(views, view_keys, exports, old, new, strict=True)):
        page, _ = _table_paths(root, v.table)
        result.figures += [p for plot in plots[i] for p in plot.files.values()]
        if cache:
            links = {fmt: pages.href(p, page.parent) for fmt, p in ex.items()}
            now["page"] = rc.digest("page", vk, audits[i], links, pages.href(index, page.parent),
                                    str(page.resolve()), fig_keys[i], [plot.name for plot in plots[i]])
            shown = {plot.name for plot in plots[i]}
            failed = [n for n in FIGURES if n not in shown and not (store / f"{fig_keys[i][n]}.none").exists()]
            # a figure that failed is tried again next time: its table keeps no hashes
            now["figures"] = None if failed else fig_keys[i]
            now["plots"] = {plot.name: {fmt: p.relative_to(root).as_posix() for fmt, p in plot.files.items()}
                            for plot in plots[i]}
            if failed:
                now["page"] = None
            elif was.get("page") == now["page"] and page.exists() and page.with_suffix(".summary.json").exists():
                result.pages.append(page)
                continue
        _write_page(v, plots[i], ex, index, result, catalogue, audits[i])
