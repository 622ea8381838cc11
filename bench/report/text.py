"""Numbers as a report prints them; shared by the HTML pages, the plots and the exports."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # annotations only: the figure workers import this module without pandas
    from bench.report.frame import CellView, ClaimMetric
    from bench.report.rules import Sample

UNKNOWN = "?"    # a published cell the paper text does not show
NOTHING = "–"    # no measured value
MINUS = "−"

# Characters no report format should carry from a recipe or a result file: C0/C1 controls (NUL ends
# a C string in TeX tools, ESC drives terminals), and the invisible bidirectional and zero-width
# formatting characters (U+202E shows "gpj.exe" as "exe.jpg"). Each is shown as a visible <U+XXXX>.
_INVISIBLE = {*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x061C, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F,
              *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0xFEFF}
_KEEP = {0x09, 0x0A}  # tab and newline: layout, not hidden content (each format deals with them)
_VISIBLE = {c: f"<U+{c:04X}>" for c in _INVISIBLE - _KEEP}


def clean(value: str) -> str:
    """``value`` with control and invisible formatting characters made visible (``<U+202E>``)."""
    return value.translate(_VISIBLE)


def number(value: Optional[float], decimals: int) -> str:
    if value is None or math.isnan(value):
        return NOTHING
    text = f"{value:.{decimals}f}"
    return text.replace("-", MINUS) if text.startswith("-") else text


def signed(value: Optional[float], decimals: int) -> str:
    if value is None or math.isnan(value):
        return NOTHING
    text = f"{abs(value):.{decimals}f}"
    if float(text) == 0:
        return "±" + text
    return ("+" if value > 0 else MINUS) + text


def published(cell: CellView) -> str:
    """As the paper prints it (the recipe's number), '?' when unknown, '' when not in the table."""
    if not cell.in_paper:
        return ""
    if cell.published is None:
        return UNKNOWN
    return f"{cell.published:g}".replace("-", MINUS)


def measured(sample: Optional[Sample], decimals: int) -> str:
    """'35.2', or '35.2 ± 0.3' (mean ± sd) over several seeds."""
    if sample is None:
        return NOTHING
    text = number(sample.mean, decimals)
    if sample.sd is not None:
        text += f" ± {sample.sd:.{decimals}f}"
    return text


def delta(cell: CellView) -> str:
    """'+0.4' in metric units; relative metrics add the percentage: '−0.36 (−1.9%)'."""
    if cell.delta is None:
        return ""
    text = signed(cell.delta, cell.decimals)
    if cell.relative and cell.delta_pct is not None:
        text += f" ({signed(cell.delta_pct, 1)}%)"
    return text


def claim_delta(value: Optional[float], metric: ClaimMetric) -> str:
    return signed(value, metric.decimals)


def interval(metric: ClaimMetric) -> str:
    """'[+0.3, +1.2]': the measured Δ's interval; ' MDE 0.4' when a paired bootstrap gave it."""
    if metric.lo is None or metric.hi is None:
        return NOTHING
    text = f"[{signed(metric.lo, metric.decimals)}, {signed(metric.hi, metric.decimals)}]"
    if metric.mde is not None:
        text += f" MDE {number(metric.mde, metric.decimals)}"
    return text


def slug(word: object) -> str:
    """A verdict or status as a CSS class: 'held, smaller' -> 'held-smaller'."""
    return "-".join(str(word).replace(",", " ").split())


def when(iso: Optional[str]) -> str:
    """'2026-11-21 18:10 UTC' from an ISO timestamp (as result files store it)."""
    if not iso:
        return NOTHING
    import datetime as dt

    try:
        stamp = dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(dt.timezone.utc)
        return stamp.strftime("%Y-%m-%d %H:%M UTC")
    return stamp.strftime("%Y-%m-%d %H:%M")


def hardware(batch_size: int, gpus: int) -> str:
    return f"{batch_size} × {gpus} GPU" if gpus else f"{batch_size}, CPU"
