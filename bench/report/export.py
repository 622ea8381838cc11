"""Exports of a report: one frame (a line per table row) as CSV and Markdown, and a booktabs LaTeX table.

The frame holds exactly what the HTML page shows: published, measured (mean and spread over seeds),
Δ and agreement per metric column, each claim's paper Δ, measured Δ with its interval and verdict,
the row's status and the provenance of its numbers. The Markdown and LaTeX tables are laid out as the
paper's (paper / ours per metric), the best value of each column in bold as papers mark it (highest,
or lowest for #params, GFLOPs, memory and times), and the claims with their intervals
(``+0.8 [+0.3, +1.2]``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from bench.report import text
from bench.report.frame import ClaimMetric, RowView, TableView, factor_text
from bench.report.rules import SMOKE_BANNER
from bench.vocab import METRICS

if TYPE_CHECKING:
    import pandas as pd


def row_record(view: TableView, rv: RowView) -> dict[str, Any]:
    rec: dict[str, Any] = {"table": view.table.name, "position": rv.row.position, "row": rv.row.id,
                           "label": rv.row.label}
    for col in view.table.factor_columns:
        rec[col.key] = rv.row.factors.get(col.key)
    rec.update(row_status=rv.row_status, run_status=rv.run_status, detail=rv.detail or None,
               fidelity=rv.row.fidelity, deviations="; ".join(rv.row.deviations) or None)
    for key, cell in rv.cells.items():
        rec[f"{key}.published"] = cell.published
        rec[f"{key}.measured"] = cell.measured.mean if cell.measured else None
        rec[f"{key}.sd"] = cell.measured.sd if cell.measured else None
        rec[f"{key}.delta"] = cell.delta
        rec[f"{key}.tolerance"] = cell.tolerance.describe()
        rec[f"{key}.agreement"] = str(cell.agreement)
        if rv.released is not None:   # `bench eval` of a given checkpoint: its own column
            rec[f"{key}.checkpoint"] = rv.released_value(key)
    claim = next((c for c in view.claims if c.row.row.id == rv.row.id), None)
    rec["claim.vs"] = claim.baseline_ref if claim else None
    rec["claim.verdict"] = str(claim.verdict) if claim else None
    for m in claim.metrics if claim else []:
        rec[f"{m.metric}.claim_paper_delta"] = m.published_delta
        rec[f"{m.metric}.claim_measured_delta"] = m.measured_delta
        rec[f"{m.metric}.claim_lo"], rec[f"{m.metric}.claim_hi"] = m.lo, m.hi
        rec[f"{m.metric}.claim_mde"] = m.mde
        rec[f"{m.metric}.claim_verdict"] = str(m.verdict)
    prov = rv.provenance
    rec.update(seeds=len(rv.results), scale=view.scale,
               dataset=prov.dataset if prov else None, iterations=prov.iterations if prov else None,
               device=prov.device if prov else None, finished_at=prov.finished_at if prov else None,
               git_commit=prov.git_commit if prov else None, config_hash=prov.config_hash if prov else None)
    if rv.released is not None:
        rec.update(checkpoint=rv.released_label, checkpoint_sha256=(rv.released.checkpoint or {}).get("sha256"))
    return rec


def report_frame(views: Sequence[TableView], records: Sequence[dict] | None = None) -> "pd.DataFrame":
    """One line per row of every table, in catalogue and paper order (``records``: their
    :func:`row_record` lines, when the caller already has them)."""
    import pandas as pd

    return pd.DataFrame.from_records(list(records) if records is not None
                                     else [row_record(v, rv) for v in views for rv in v.rows])


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: controls made visible, and a leading = + - @ (a formula
    to Excel / LibreOffice: "=HYPERLINK(...)") defused with a quote, as OWASP advises."""
    if not isinstance(value, str):
        return value
    value = text.clean(value).replace("\n", " ").replace("\t", " ")
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value


def to_csv(df: "pd.DataFrame") -> str:
    return df.map(csv_cell).to_csv(index=False)


_MD_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "\\|", "\n": " ", "\t": " ", "`": "\\`",
               "[": "\\[", "]": "\\]", "\\": "\\\\"}


#: markdown_cell's character mapping as one translation table: text.clean, then the escapes (per character)
_MD_TABLE = {c: "".join(_MD_ESCAPES.get(ch, ch) for ch in text.clean(chr(c)))
             for c in set(text._VISIBLE) | {ord(ch) for ch in _MD_ESCAPES}}


def markdown_cell(value: Any) -> Any:
    """A Markdown table cell that renders as the text it holds: HTML tags and entities escaped (a label
    cannot inject markup), '|' and newlines cannot break the table, link syntax and backticks escaped."""
    if not isinstance(value, str):
        return value
    return value.translate(_MD_TABLE)  # = the escapes of text.clean(value), character by character, in C


def _md_value(value: Any) -> tuple[str, bool]:
    """(the cell's text, whether it is a number) of a present value: a number as Python writes it (every
    digit kept), anything else as escaped text (:func:`markdown_cell`)."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)), False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return repr(value.item() if isinstance(value, np.generic) else value), True
    return markdown_cell(str(value)), False


def to_markdown(df: "pd.DataFrame", title: str = "") -> str:
    """GitHub Markdown, every text cell escaped (:func:`markdown_cell`): a column of numbers (and blanks)
    right-aligned, any other left-aligned, cells padded to the column's width so the source reads too."""
    head = f"# {markdown_cell(title)}\n\n" if title else ""
    names = [markdown_cell(str(c)) for c in df.columns]
    missing = df.isna().to_numpy()
    columns = []
    for j in range(df.shape[1]):
        cells = [("", True) if gone else _md_value(v) for v, gone in zip(df.iloc[:, j].tolist(), missing[:, j])]
        number = all(is_num for _, is_num in cells)
        texts = [t for t, _ in cells]
        width = max([len(names[j]), 3] + [len(t) for t in texts])
        pad = str.rjust if number else str.ljust
        columns.append([pad(names[j], width), ("-" * (width - 1) + ":") if number else (":" + "-" * (width - 1))]
                       + [pad(t, width) for t in texts])
    lines = ["| " + " | ".join(row) + " |" for row in zip(*columns)] if columns else []
    return head + "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ LaTeX
_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                   "<": r"\textless{}", ">": r"\textgreater{}", "—": "---", "–": "--", "−": "$-$",
                   "±": r"$\pm$", "✓": r"$\checkmark$", "Δ": r"$\Delta$"}


def latex_escape(value: object) -> str:
    """TeX text: its special characters escaped, controls and invisible formatting characters (NUL,
    U+202E) shown as <U+XXXX>, newlines as spaces (a blank line would end the table row)."""
    cleaned = text.clean(str(value)).replace("\n", " ").replace("\t", " ")
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in cleaned)


def _factor_latex(value: object) -> str:
    if isinstance(value, bool):
        return r"$\checkmark$" if value else ""
    return latex_escape(factor_text(value)) if value is not None else ""


# ------------------------------------------------------------------------------------ best per column
def best_rows(view: TableView, key: str, which: str) -> set[str]:
    """Row ids holding the best value of a column (``which``: 'published' or 'measured'): the highest,
    or the lowest for metrics where lower is better. Ties are all best; a column with one value has none."""
    values = {}
    for rv in view.rows:
        cell = rv.cells[key]
        v = cell.published if which == "published" else (cell.measured.mean if cell.measured else None)
        if v is not None:
            values[rv.row.id] = round(v, cell.decimals)
    if len(values) < 2:
        return set()
    best = (max if METRICS[key].higher_is_better else min)(values.values())
    return {rid for rid, v in values.items() if v == best}


def _bests(view: TableView) -> dict[tuple[str, str], set[str]]:
    return {(c.key, w): best_rows(view, c.key, w) for c in view.table.metric_columns for w in ("published", "measured")}


def claim_text(m: ClaimMetric) -> str:
    """'+0.8 [+0.3, +1.2]': the measured Δ and its interval (or '—')."""
    if m.measured_delta is None:
        return text.NOTHING
    out = text.signed(m.measured_delta, m.decimals)
    if m.lo is not None and m.hi is not None:
        out += f" [{text.signed(m.lo, m.decimals)}, {text.signed(m.hi, m.decimals)}]"
    return out


def _metric_cells(rv: RowView, key: str, bests: dict | None = None) -> list[str]:
    cell = rv.cells[key]
    pub = latex_escape(text.published(cell)) if cell.in_paper else ""
    meas = latex_escape(text.measured(cell.measured, cell.decimals)) if cell.measured else "--"
    if bests:
        if rv.row.id in bests[(key, "published")]:
            pub = rf"\textbf{{{pub}}}"
        if rv.row.id in bests[(key, "measured")]:
            meas = rf"\textbf{{{meas}}}"
    return [pub, meas]


def table_markdown(view: TableView) -> str:
    """The table as the paper lays it out (paper / ours per metric, best in bold), then its claims."""
    t = view.table
    bests = _bests(view)
    head = ["Method"] + [c.label for c in t.factor_columns]
    for c in t.metric_columns:
        head += [f"{c.label} (paper)", f"{c.label} (ours)"]
    lines = ["| " + " | ".join(markdown_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    for rv in view.rows:
        label = rv.row.label + (f" ({rv.row.fidelity})" if rv.row.fidelity else "")
        cells = [markdown_cell(label)] + [markdown_cell(factor_text(rv.row.factors.get(c.key)))
                                                  for c in t.factor_columns]
        for c in t.metric_columns:
            cell = rv.cells[c.key]
            pub = markdown_cell(text.published(cell)) if cell.in_paper else ""
            meas = markdown_cell(text.measured(cell.measured, cell.decimals)) if cell.measured else text.NOTHING
            pub = f"**{pub}**" if rv.row.id in bests[(c.key, "published")] and pub else pub
            meas = f"**{meas}**" if rv.row.id in bests[(c.key, "measured")] else meas
            cells += [pub, meas]
        lines.append("| " + " | ".join(cells) + " |")
    out = [f"Published (paper) and measured (ours) at {view.scale} scale; best per column in bold "
           "(lowest for #params, GFLOPs, memory and times)."
           + (f" **{SMOKE_BANNER}.**" if view.smoke else ""), "", *lines, ""]
    if view.claims:
        out += ["## Claims", "", "| Row | vs | Metric | Paper Δ | Measured Δ [95% interval] | MDE | Verdict |",
                "|---|---|---|---|---|---|---|"]
        for c in view.claims:
            for m in c.metrics:
                out.append("| " + " | ".join(markdown_cell(x) for x in (
                    c.row.row.label, c.baseline_label, METRICS[m.metric].label, text.signed(m.published_delta, m.decimals),
                    claim_text(m), text.number(m.mde, m.decimals) if m.mde is not None else text.NOTHING,
                    str(m.verdict))) + " |")
        out.append("")
    return "\n".join(out)


def to_latex(view: TableView) -> str:
    """A booktabs table to paste into a paper: factor columns, then paper / ours per metric."""
    t = view.table
    factors, metrics = t.factor_columns, t.metric_columns
    n_lead = 1 + len(factors)
    spec = "l" + "c" * len(factors) + "rr" * len(metrics)
    caption = (f"{t.paper.slug} Table {t.number}: {t.title}. "
               f"Published (paper) and measured (ours) at {view.scale} scale.")
    if view.smoke:
        caption = f"{SMOKE_BANNER}. {caption}"
    lines = [
        f"% bench report: {t.name} at {view.scale} scale; needs \\usepackage{{booktabs,amssymb}}",
        r"\begin{table}[t]", r"\centering",
        rf"\caption{{{latex_escape(caption)}}}",
        rf"\label{{tab:{t.paper.slug}-{t.table}}}",  # slugs are [a-z0-9-]: nothing to escape
        rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
        " & ".join(["Method"] + [latex_escape(c.label) for c in factors]
                   + [rf"\multicolumn{{2}}{{c}}{{{latex_escape(c.label)}}}" for c in metrics]) + r" \\",
        "".join(rf"\cmidrule(lr){{{n_lead + 2 * i + 1}-{n_lead + 2 * i + 2}}}" for i in range(len(metrics))),
        " & ".join([""] * n_lead + ["paper", "ours"] * len(metrics)) + r" \\",
        r"\midrule",
    ]
    bests = _bests(view)
    for rv in view.rows:
        cells = [latex_escape(rv.row.label)] + [_factor_latex(rv.row.factors.get(c.key)) for c in factors]
        for c in metrics:
            cells += _metric_cells(rv, c.key, bests)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    claims = [(c, m) for c in view.claims for m in c.metrics]
    if claims:
        lines += ["", r"\begin{table}[t]", r"\centering",
                  rf"\caption{{{latex_escape(f'{t.paper.slug} Table {t.number}: the claims. Measured Δ with its 95% interval; verdict by bench’s rule.')}}}",
                  rf"\label{{tab:{t.paper.slug}-{t.table}-claims}}",
                  r"\begin{tabular}{lllrll}", r"\toprule",
                  r"Row & vs & Metric & Paper $\Delta$ & Measured $\Delta$ [95\% interval] & Verdict \\", r"\midrule"]
        for c, m in claims:
            lines.append(" & ".join(latex_escape(x) for x in (
                c.row.row.label, c.baseline_label, METRICS[m.metric].label, text.signed(m.published_delta, m.decimals),
                claim_text(m), str(m.verdict))) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
