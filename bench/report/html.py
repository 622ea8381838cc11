"""HTML pages of a report: jinja2 templates (``templates/*.html.j2``) with autoescaping always on.

Pages are self-contained: inline CSS, no scripts or fonts from anywhere, figures as files beside the
page linked by relative paths (so a report folder can be copied, zipped or served as it is).
"""
from __future__ import annotations

import datetime as dt
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence
from urllib.parse import quote

from bench import __version__
from bench.report import rules, text
from bench.report.audit_view import PageAudit, page_audit  # noqa: F401  (re-exported)
from bench.report.frame import TableView
from bench.report.plots import Plot
from bench.vocab import Verdict

if TYPE_CHECKING:
    import jinja2

TEMPLATES = Path(__file__).resolve().parent / "templates"


@functools.lru_cache(maxsize=1)
def environment() -> "jinja2.Environment":
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             finalize=_finalize)
    env.filters.update(published=text.published, measured=text.measured, delta=text.delta, number=text.number,
                       signed=text.signed, interval=text.interval, slug=text.slug, claim_delta=text.claim_delta,
                       when=text.when, hardware=text.hardware)
    env.globals.update(rules=rules, version=__version__)
    return env


def _finalize(value):
    """Every value a template prints: control and invisible formatting characters made visible
    (autoescaping handles markup; it lets NUL and U+202E through)."""
    import markupsafe

    if isinstance(value, markupsafe.Markup):
        return markupsafe.Markup(text.clean(str(value)))
    if isinstance(value, str):
        return text.clean(value)
    return value


def href(target: Path, page_dir: Path) -> str:
    """A relative, URL-quoted link from a page in ``page_dir`` to ``target``."""
    rel = os.path.relpath(Path(target).resolve(), Path(page_dir).resolve())
    return quote(Path(rel).as_posix())


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Summary:
    """One table's line on the index page (also stored as JSON beside its page)."""

    name: str
    paper: str
    number: str
    title: str
    rows: int
    counts: dict[str, int]
    verdicts: dict[str, int]
    problems: int
    generated_at: str
    page: str                 # path of the page relative to the index
    audit: dict[str, int] = field(default_factory=dict)         # architecture cells by agreement word
    claim_checks: dict[str, int] = field(default_factory=dict)  # stated claim figures by agreement word


def summary_of(view: TableView, page: Path, index_dir: Path, audit: Optional[PageAudit] = None) -> Summary:
    t = view.table
    cells, claims = (audit or PageAudit()).counts()
    return Summary(name=t.name, paper=t.paper.slug, number=t.number, title=t.title, rows=len(view.rows),
                   counts=view.counts(), verdicts=view.verdict_counts(), problems=len(view.problems),
                   generated_at=now(), page=href(page, index_dir), audit=cells, claim_checks=claims)


def _footnotes(view: TableView) -> dict[tuple[str, str], int]:
    """Number each published note ('?' cells and doubtful ones) in reading order."""
    notes: dict[tuple[str, str], int] = {}
    for rv in view.rows:
        for key in view.metric_keys:
            if key in rv.row.published_notes:
                notes[(rv.row.id, key)] = len(notes) + 1
    return notes


def render_table_page(view: TableView, plots: Sequence[Plot], page: Path,
                      exports: dict[str, Path], index: Optional[Path], catalogue=None,
                      audit: Optional[PageAudit] = None) -> str:
    page_dir = page.parent
    logs = {rv.row.id: href(rv.provenance.log_path, page_dir)
            for rv in view.rows if rv.provenance and rv.provenance.log_path}
    from bench.audit import CLAIM_RULE, PRECISION_RULE, ZOO_RULE

    audit = audit if audit is not None else page_audit(view.table, catalogue)  # comparable at any scale
    return environment().get_template("table.html.j2").render(
        view=view, table=view.table, audit=audit.cells, claim_checks=audit.claims, audit_rule=PRECISION_RULE,
        claim_rule=CLAIM_RULE, zoo=audit.zoo, zoo_rule=ZOO_RULE,
        plots=[(p, {fmt: href(path, page_dir) for fmt, path in p.files.items()}) for p in plots],
        exports={fmt: href(path, page_dir) for fmt, path in exports.items()},
        index=href(index, page_dir) if index else None, logs=logs, footnotes=_footnotes(view), generated_at=now())


def render_index(summaries: Sequence[Summary], scale: str, problems: Sequence[str],
                 exports: dict[str, str]) -> str:
    totals = {k: sum(s.counts.get(k, 0) for s in summaries) for k in ("done", "failed", "pending", "not-run",
                                                                      "not-runnable")}
    verdicts = {str(v): sum(s.verdicts.get(str(v), 0) for s in summaries) for v in Verdict}
    papers: dict[str, dict[str, int]] = {}
    for s in summaries:  # the audit per paper: architecture cells and stated claims, by agreement word
        counts = papers.setdefault(s.paper, {})
        for word, n in list(s.audit.items()) + [(f"claim {w}", n) for w, n in s.claim_checks.items()]:
            counts[word] = counts.get(word, 0) + n
    return environment().get_template("index.html.j2").render(
        summaries=summaries, scale=scale, smoke=scale == "smoke", totals=totals, verdicts=verdicts,
        papers=papers, audit_words=("exact", "within", "outside", "not measured"),
        claim_words=("consistent", "inconsistent", "cannot check"),
        rows=sum(s.rows for s in summaries), problems=problems, exports=exports, generated_at=now())
