"""Exports of a report: one frame (a line per table row) as CSV and Markdown, and a booktabs LaTeX table.

The frame holds exactly what the HTML page shows: published, measured (mean and spread over seeds),
Δ and agreement per metric column, the row's status and the provenance of its numbers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from bench.report import text
from bench.report.frame import RowView, TableView, factor_text
from bench.report.rules import SMOKE_BANNER

if TYPE_CHECKING:
    import pandas as pd


def row_record(view: TableView, rv: RowView) -> dict[str, Any]:
    rec: dict[str, Any] = {"table": view.table.name, "position": rv.row.position, "row": rv.row.id,
                           "label": rv.row.label}
    for col in view.table.factor_columns:
        rec[col.key] = rv.row.factors.get(col.key)
    rec.update(row_status=rv.row_status, run_status=rv.run_status, detail=rv.detail or None)
    for key, cell in rv.cells.items():
        rec[f"{key}.published"] = cell.published
        rec[f"{key}.measured"] = cell.measured.mean if cell.measured else None
        rec[f"{key}.sd"] = cell.measured.sd if cell.measured else None
        rec[f"{key}.delta"] = cell.delta
        rec[f"{key}.tolerance"] = cell.tolerance.describe()
        rec[f"{key}.agreement"] = str(cell.agreement)
        if rv.released is not None:   # `bench eval` of a given checkpoint: its own column
            rec[f"{key}.checkpoint"] = rv.released_value(key)
    prov = rv.provenance
    rec.update(seeds=len(rv.results), scale=view.scale,
               dataset=prov.dataset if prov else None, iterations=prov.iterations if prov else None,
               device=prov.device if prov else None, finished_at=prov.finished_at if prov else None,
               git_commit=prov.git_commit if prov else None, config_hash=prov.config_hash if prov else None)
    if rv.released is not None:
        rec.update(checkpoint=rv.released_label, checkpoint_sha256=(rv.released.checkpoint or {}).get("sha256"))
    return rec


def report_frame(views: Sequence[TableView]) -> "pd.DataFrame":
    """One line per row of every table, in catalogue and paper order."""
    import pandas as pd

    return pd.DataFrame.from_records([row_record(v, rv) for v in views for rv in v.rows])


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


def markdown_cell(value: Any) -> Any:
    """A Markdown table cell that renders as the text it holds: HTML tags and entities escaped (a label
    cannot inject markup), '|' and newlines cannot break the table, link syntax and backticks escaped."""
    if not isinstance(value, str):
        return value
    return "".join(_MD_ESCAPES.get(ch, ch) for ch in text.clean(value))


def to_markdown(df: "pd.DataFrame", title: str = "") -> str:
    """GitHub Markdown, every text cell escaped (:func:`markdown_cell`)."""
    shown = df.astype(object).where(df.notna(), "")
    shown = shown.map(markdown_cell)
    shown.columns = [markdown_cell(str(c)) for c in shown.columns]
    head = f"# {markdown_cell(title)}\n\n" if title else ""
    return head + shown.to_markdown(index=False) + "\n"


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


def _metric_cells(rv: RowView, key: str) -> list[str]:
    cell = rv.cells[key]
    pub = latex_escape(text.published(cell)) if cell.in_paper else ""
    meas = latex_escape(text.measured(cell.measured, cell.decimals)) if cell.measured else "--"
    return [pub, meas]


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
    for rv in view.rows:
        cells = [latex_escape(rv.row.label)] + [_factor_latex(rv.row.factors.get(c.key)) for c in factors]
        for c in metrics:
            cells += _metric_cells(rv, c.key)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
