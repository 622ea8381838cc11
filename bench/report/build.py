"""Write a report: pages, figures and exports for some tables, and the index of every table reported.

Layout under the reports folder (``reports/`` at the repository root, ``$BENCH_REPORTS``, or ``--out``)::

    <scale>/index.html                      every table reported at this scale, with its status
    <scale>/report.{csv,md}                 the frame of the tables of the latest report
    <scale>/<paper>/<table>.html            the table page
    <scale>/<paper>/<table>/*.svg           its figures (and .png / .pdf with --figure-format)
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
from bench.report.plots import DEFAULT_FORMATS, check_formats

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
                 extra_roots: Sequence[Path] = (), workers: int = 1, cache: bool = True,
                 figure_formats: Sequence[str] = DEFAULT_FORMATS) -> ReportOutput:
    """Report ``tables`` at ``scale`` from ``results_root`` (plus other seeds' folders ``extra_roots``).

    ``figure_formats``: the figure files beside each page (``bench.report.plots.FORMATS``); the page shows
    the SVG, or the PNG without one, so with ``html`` one of the two is needed (ValueError otherwise).

    ``workers`` > 1 draws the figures of several tables in that many processes (this one and workers - 1 spawned); a script calling
    this with workers > 1 needs the usual ``if __name__ == "__main__":`` guard (multiprocessing's rule).
    ``cache`` False renders and writes everything (what a cached render's output always equals)."""
    from bench.report import cache as rc
    from bench.report import export

    figure_formats = check_formats(figure_formats, pages=html)
    root = Path(out or default_reports_dir()) / scale
    # a folder without a table's record (a first render, --no-cache) draws figures: their worker processes
    # start now, so their imports overlap the gathering; otherwise only once the views say what changed
    pool = _start_pool(workers, len(tables)) if html and (not cache or any(
        not _record_path(root, t).exists() for t in tables)) else None
    figures = None
    try:
        gathered = gather(list(tables) + baseline_tables(tables, catalogue), scale, results_root, extra_roots)
        result = ReportOutput(root=root, problems=list(gathered.problems))
        index = root / "index.html"
        result.views = views = [build_table_view(t, gathered, catalogue) for t in tables]
        old = [rc.read_record(_record_path(root, v.table)) if cache else {} for v in views]
        # the figures to draw go to the workers first: they draw while this process does the rest
        figures = _Figures(views, old, root, workers, cache, figure_formats, pool) if html else None
        pool = None   # figures owns it now
        code = rc.render_code_key() if cache else ""
        view_keys = [rc.digest("view", code, v) if cache else None for v in views]
        new = [{"view": k} for k in view_keys]
        records = [[export.row_record(v, rv) for rv in v.rows] for v in views]   # one frame line per row, once
        exports = []
        for v, vk, rec, was, now in zip(views, view_keys, records, old, new, strict=True):
            keys = {fmt: rc.digest("export", fmt, vk) for fmt in formats} if cache else None
            exports.append(write_exports(v, _table_paths(root, v.table)[0].with_suffix(""), formats, rec, keys,
                                         was.get("exports") or {}, result.written))
            now["exports"] = keys or {}
        result.exports += [path for e in exports for path in e.values()]
        if figures is not None:
            _pages(views, view_keys, exports, old, new, index, result, catalogue, figures, cache)
    finally:
        if figures is not None:
            figures.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
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


def _start_pool(workers: int, tables: int):
    """``workers - 1`` spawned processes for figures (this one is the last worker), or None for one. A spawned
    process imports matplotlib first thing (~0.5 CPU-s), so it is ready when the first table comes."""
    n = min(workers, tables) - 1
    if n < 1:
        return None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from bench.report.plots import warm_up

    pool = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"))
    for _ in range(n):
        pool.submit(warm_up)
    return pool


def _worker_died(e: BaseException, what: str) -> None:
    import sys

    print(f"bench report: a figure worker process died ({e}): drawing {what} in this process", file=sys.stderr)


class _Figures:
    """A render's figures: a table whose figure hashes are unchanged (and whose files exist) reuses them; the
    others are drawn by the worker processes (``pool``, or a new one) and by this process once its own work
    (exports, audits) is done (:meth:`collect`).

    The tables to draw are taken costliest first (:func:`~bench.report.plots.figure_cost`) from one queue: by
    each worker, which holds two at most (one drawing, the next when a callback hands it over as one is done;
    ProcessPoolExecutor's own queue would hold more, and a table there cannot be taken back), and by this
    process. The last tables drawn are the cheapest, so at the end neither waits long for the other."""

    def __init__(self, views: list[TableView], old: list[dict], root: Path, workers: int, cache: bool,
                 formats: tuple[str, ...], pool=None):
        import threading
        from collections import deque

        from bench.report import cache as rc
        from bench.report.plots import FIGURES, Plot, figure_cost, figure_key, plot_data

        self.pool, self.futures = pool, {}
        self.lock = threading.Lock()
        try:
            self.store = rc.cache_dir(root) / "figures" if cache else None
            datas = [plot_data(v) for v in views]
            self.keys = [{name: figure_key(name, d) for name in FIGURES} if cache else {} for d in datas]
            self.plots: dict[int, list] = {}
            for i, was in enumerate(old):
                files = {name: {fmt: root / f for fmt, f in was["plots"][name].items()}
                         for name in was.get("plots") or {}}
                if cache and was.get("figures") == self.keys[i] and isinstance(was.get("plots"), dict) and all(
                        set(f) == set(formats) and all(p.exists() for p in f.values()) for f in files.values()):
                    self.plots[i] = [Plot(name, FIGURES[name][0], FIGURES[name][1], files[name], drawn=False)
                                     for name in files]
            self.jobs = [i for i in range(len(views)) if i not in self.plots]
            self.args = [(datas[i], _table_paths(root, views[i].table)[1], self.store, self.keys[i] or None,
                          formats) for i in self.jobs]
            cost = [figure_cost(datas[i]) for i in self.jobs]
            self.pending = deque(sorted(range(len(self.jobs)), key=lambda k: (-cost[k], k)))
            if self.pool is None and len(self.jobs) > 1:
                self.pool = _start_pool(workers, len(self.jobs))
            for _ in range(2 * (min(workers, len(self.jobs)) - 1) if self.pool is not None else 0):
                self._feed()   # two a worker: the next is there when one is done (a handover takes a few ms)
        except BaseException:
            self.close()
            raise

    def _take(self) -> Optional[int]:
        with self.lock:
            return self.pending.popleft() if self.pending else None

    def _feed(self, _done=None) -> None:
        """Hand the next table to a worker: at the start, two a worker, then one from each finished future's
        callback (in the pool's thread). A pool that is broken or shut down gets none: this process draws it."""
        from concurrent.futures.process import BrokenProcessPool

        from bench.report.plots import write_plots

        pool = self.pool
        k = self._take() if pool is not None else None
        if k is None:
            return
        try:
            future = pool.submit(write_plots, *self.args[k])
        except (BrokenProcessPool, RuntimeError) as e:   # a worker died (or the pool was let go): not this table
            if isinstance(e, BrokenProcessPool):
                _worker_died(e, "the tables not yet handed out")
            with self.lock:
                self.pending.appendleft(k)
            return
        with self.lock:
            self.futures[k] = future
        future.add_done_callback(self._feed)

    def collect(self, ready) -> None:
        """Call ``ready(k, plots)`` for each job ``k`` (an index into ``jobs``) as its table is drawn: those
        the workers finish, and those this process takes from the queue and draws itself. A worker that dies
        leaves its tables to this process (said on stderr), not a failed report."""
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        from bench.report.plots import write_plots

        done: set[int] = set()

        def result(k: int) -> list:
            try:
                return self.futures[k].result()
            except BrokenProcessPool as e:
                _worker_died(e, f"{self.args[k][1].name}'s figures")
                return write_plots(*self.args[k])

        while True:
            with self.lock:
                finished = [k for k, f in self.futures.items() if k not in done and f.done()]
                running = [f for k, f in self.futures.items() if k not in done and not f.done()]
            for k in finished:
                done.add(k)
                ready(k, result(k))
            k = self._take()
            if k is not None:
                done.add(k)
                ready(k, write_plots(*self.args[k]))
            elif running:
                wait(running, return_when=FIRST_COMPLETED)
            elif not finished:
                with self.lock:
                    if not self.pending:
                        return

    def close(self) -> None:
        """Let the workers go: each exits once it has its sentinel (not waited for here: every figure this
        render uses is written before its future is done; a process that is not finished is joined at exit)."""
        pool, self.pool = self.pool, None
        if pool:
            pool.shutdown(wait=False, cancel_futures=True)


def _pages(views: list[TableView], view_keys: list, exports: list[dict[str, Path]], old: list[dict],
           new: list[dict], index: Path, result: ReportOutput, catalogue: Optional[Catalogue], figures: _Figures,
           cache: bool) -> None:
    """Each table's page: only those whose content hash changed are written. Figures depend on the views
    alone, pages on the audits too: the audits are computed (or read from the cache) while the workers draw,
    then each page is finished as soon as its figures are there (what it adds to ``result`` stays in table
    order)."""
    from bench.report import cache as rc
    from bench.report import html as pages
    from bench.report.plots import FIGURES

    root = index.parent
    store, fig_keys, plots, jobs = figures.store, figures.keys, figures.plots, figures.jobs
    akey = rc.audit_key(catalogue) if cache else None
    audits = [rc.cached_page_audit(v.table, catalogue, root, akey) if cache
              else pages.page_audit(v.table, catalogue) for v in views]
    parts = [ReportOutput(root=root) for _ in views]

    def finish(i: int) -> None:
        v, vk, ex, was, now, part = views[i], view_keys[i], exports[i], old[i], new[i], parts[i]
        page, _ = _table_paths(root, v.table)
        part.figures += [p for plot in plots[i] for p in plot.files.values()]
        if cache:
            links = {fmt: pages.href(p, page.parent) for fmt, p in ex.items()}
            now["page"] = rc.digest("page", vk, audits[i], links, pages.href(index, page.parent), str(page.resolve()),
                                    fig_keys[i], [(plot.name, sorted(plot.files)) for plot in plots[i]])
            shown = {plot.name for plot in plots[i]}
            failed = [n for n in FIGURES if n not in shown and not (store / f"{fig_keys[i][n]}.none").exists()]
            # a figure that failed is tried again next time: its table keeps no hashes
            now["figures"] = None if failed else fig_keys[i]
            now["plots"] = {plot.name: {fmt: p.relative_to(root).as_posix() for fmt, p in plot.files.items()}
                            for plot in plots[i]}
            if failed:
                now["page"] = None
            elif was.get("page") == now["page"] and page.exists() and page.with_suffix(".summary.json").exists():
                part.pages.append(page)
                return
        _write_page(v, plots[i], ex, index, part, catalogue, audits[i])

    def drawn(k: int, got: list) -> None:
        i = jobs[k]
        plots[i] = got
        parts[i].drawn += sum(plot.drawn for plot in got)
        parts[i].written += [p for plot in got if plot.drawn for p in plot.files.values()]
        finish(i)

    for i in sorted(plots):   # figures unchanged: their pages first, while the workers draw
        finish(i)
    figures.collect(drawn)
    for part in parts:
        result.pages += part.pages
        result.figures += part.figures
        result.written += part.written
        result.drawn += part.drawn
