"""The report's figures (matplotlib, no pyplot state), written beside the page as SVG (what the page shows)
and, on request (``bench report --figure-format``), as PNG and PDF.

* published vs measured, one panel per metric column, with the y = x line and the tolerance band;
* speed vs accuracy (FPS or latency against mask AP, like AMF-SparseInst's Figure 8) when the table
  has a speed column: each row's published point joined to its measured one;
* ablation deltas: per claim row, the paper's Δ against its baseline next to the measured Δ (its interval).

A smoke-scale figure carries ``SMOKE_BANNER`` in its title.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

from bench.report.rules import SMOKE_BANNER, Tolerance, primary_metric, tolerance_for
from bench.vocab import AP_METRICS, METRICS

if TYPE_CHECKING:  # a figure worker unpickles PlotData and draws: it never needs pandas (bench.report.frame)
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from bench.report.frame import TableView

#: the figure files a report can write: SVG (vector, its text selectable: what the page shows), PNG (slides,
#: tools without SVG; the page shows it when no SVG is written), PDF (LaTeX, beside the .tex export)
FORMATS = ("svg", "png", "pdf")
DEFAULT_FORMATS = ("svg",)   # each format is a second drawing: PNG would double a cold render's figure time
#: what keeps a file's bytes the same from one render to the next (no date stamped in)
_METADATA = {"svg": {"Date": None}, "pdf": {"CreationDate": None}, "png": None}
PUBLISHED_COLOUR = "#4d4d4d"
MEASURED_COLOUR = "#1f6fb4"
SMOKE_COLOUR = "#b3261e"
BAND_COLOUR = "#2e7d32"
SCATTER_EDGE = 1.5         # points: a scatter marker's edge (matplotlib's lines.linewidth), its legend sample's too
SERIES_COLOURS = ("#1f6fb4", "#d9730d", "#2e7d32", "#8e44ad", "#b3261e", "#00838f", "#6d4c41", "#c2185b",
                  "#546e7a", "#9e9d24", "#3949ab", "#ef6c00")
SERIES_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*")
MIN_WIDTH = 6.4            # inches: room for the two-line smoke title
DPI = 110
TICKS = 4                  # MaxNLocator's nbins: at most 4 intervals an axis (but 3 ticks at least)
TITLE_Y = 1.0              # panel titles at the axes' top: no x ticks there, and a fixed y skips matplotlib's
                           # search for overlapping tick labels (it measures every tick label of the panel)
TITLE_SIZE = 10            # the figure's title (points)
TICK_LENGTH = 3.5          # points: matplotlib's default major tick length, and its pad to the label
TICK_PAD = 3.5
LABEL_PAD = 4.0            # points between the tick labels and the axis label (matplotlib's labelpad)
STYLE = {"svg.fonttype": "none", "svg.hashsalt": "bench", "font.size": 8.5, "axes.titlesize": 9,
         "axes.spines.top": False, "axes.spines.right": False}


@dataclass
class Plot:
    name: str                  # file stem: 'published-vs-measured'
    title: str
    caption: str
    files: dict[str, Path]     # format -> path
    drawn: bool = True         # drawn by this render (False: copied from the figure store)


# ------------------------------------------------------------------------------------ what a figure plots
@dataclass(frozen=True)
class PlotCell:
    published: Optional[float]
    measured: Optional[float]          # the mean over seeds


@dataclass(frozen=True)
class PlotRow:
    position: int
    label: str
    cells: dict[str, PlotCell]


@dataclass(frozen=True)
class PlotClaimMetric:
    metric: str
    published_delta: Optional[float]
    measured_delta: Optional[float]
    lo: Optional[float]
    hi: Optional[float]


@dataclass(frozen=True)
class PlotClaim:
    position: int
    metrics: tuple[PlotClaimMetric, ...]


@dataclass(frozen=True)
class PlotData:
    """Everything the figures of a table read, and nothing else: its hash is the figures' content hash
    (``bench.report.cache``), so two tables or two renders with the same data share one drawing."""

    slug: str
    number: str
    smoke: bool
    metric_keys: tuple[str, ...]
    tolerances: dict[str, Tolerance]   # the table's tolerance per metric column (the band of the figures)
    rows: tuple[PlotRow, ...]
    claims: tuple[PlotClaim, ...]
    table: str = field(default="", compare=False)   # for messages only: not part of the content


def plot_data(view: "TableView") -> PlotData:
    keys = tuple(view.metric_keys)
    rows = tuple(PlotRow(rv.row.position, rv.row.label,
                         {k: PlotCell(c.published, c.measured.mean if c.measured is not None else None)
                          for k, c in rv.cells.items()}) for rv in view.rows)
    claims = tuple(PlotClaim(c.row.row.position, tuple(PlotClaimMetric(m.metric, m.published_delta, m.measured_delta,
                                                                       m.lo, m.hi) for m in c.metrics))
                   for c in view.claims)
    return PlotData(view.table.paper.slug, view.table.number, view.smoke, keys,
                    {k: tolerance_for(k, None, view.table) for k in keys}, rows, claims, view.table.name)


def figure_cost(data: PlotData) -> float:
    """About how long a table's figures take to draw: their panels, and half a panel a figure (measured: ~15 ms
    of CPU a panel with its ticks, less than a panel's worth a figure). The report hands the costliest first."""
    pairs = _pairs(data)
    panels = [len(_panels(list(pairs))) if pairs else 0, 1 if _speed_keys(data) else 0, len(_delta_keys(data)[1])]
    return sum(panels) + 0.5 * sum(1 for n in panels if n)


def figure_key(name: str, data: PlotData) -> str:
    """The content hash of one figure: its kind, what it plots, bench's code and the drawing libraries."""
    import dataclasses

    from bench.report.cache import digest, render_code_key

    return digest("figure", name, render_code_key(), {f.name: getattr(data, f.name) for f in dataclasses.fields(data)
                                                if f.name != "table"})


@dataclass(frozen=True)
class Layout:
    """A fixed grid in inches (no constrained layout: it costs more than the drawing itself)."""

    axes: tuple[float, float] = (2.6, 2.2)   # one panel's plotting area
    gap: tuple[float, float] = (0.75, 0.8)   # between panels: room for tick labels, axis label, panel title
    left: float = 0.65
    right: float = 0.2
    bottom: float = 0.5                      # x tick labels and axis label
    max_cols: int = 4


def _figure(n_panels: int, layout: Layout, view: PlotData, what: str) -> tuple["Figure", list["Axes"]]:
    """The figure, its panels and its title (``view``'s table: ``what``), wrapped to the figure's width."""
    from matplotlib.figure import Figure

    n = max(n_panels, 1)
    cols = min(layout.max_cols, n)
    rows = -(-n // cols)
    (aw, ah), (gw, gh) = layout.axes, layout.gap
    inner_w = cols * aw + (cols - 1) * gw
    width = max(layout.left + inner_w + layout.right, MIN_WIDTH)
    left = (width - inner_w) / 2 if width == MIN_WIDTH else layout.left
    weight = "bold" if view.smoke else "normal"
    title = _wrap(_heading(view, what), width, weight)
    top = 0.2 + 0.2 * (title.count("\n") + 1) + 0.3      # the title's lines and the panels' own titles
    height = top + rows * ah + (rows - 1) * gh + layout.bottom
    fig = Figure(figsize=(width, height))
    grid = fig.add_gridspec(rows, cols, left=left / width, right=(left + inner_w) / width,
                            bottom=layout.bottom / height, top=1 - top / height, wspace=gw / aw, hspace=gh / ah)
    axes = [fig.add_subplot(grid[i // cols, i % cols]) for i in range(n_panels)]
    fig.suptitle(title, y=1 - 0.12 / height, va="top", color=SMOKE_COLOUR if view.smoke else "black",
                 fontsize=TITLE_SIZE, fontweight=weight)
    return fig, axes


def _heading(view: PlotData, what: str) -> str:
    title = f"{view.slug} Table {_plain(view.number)}: {what}"
    return f"{SMOKE_BANNER}\n{title}" if view.smoke else title


def _wrap(text: str, width: float, weight: str = "normal") -> str:
    """``text`` broken at spaces into lines that fit a figure ``width`` inches wide at the title's size (a
    longer line is cut off at both sides). The widths are estimates (:func:`_text_width`)."""
    out = []
    for line in text.split("\n"):
        cur = ""
        for word in line.split(" "):
            if cur and _text_width(f"{cur} {word}", TITLE_SIZE, weight) > width - 0.3:
                out.append(cur)
                cur = word
            else:
                cur = f"{cur} {word}" if cur else word
        out.append(cur)
    return "\n".join(out)


_ADVANCES: dict[tuple[str, str], float] = {}   # (character, weight) -> its advance in em, read once a process


def _advance(c: str, weight: str = "normal") -> float:
    """The advance width, in em, of ``c`` in the font matplotlib draws with (its default family's first font,
    DejaVu Sans, or its bold); 0.6 em where the font cannot say."""
    got = _ADVANCES.get((c, weight))
    if got is None:
        try:
            from matplotlib import font_manager, ft2font

            font = font_manager.get_font(font_manager.findfont(font_manager.FontProperties(weight=weight)))
            font.set_size(100, 72)
            flags = getattr(ft2font, "LoadFlags", None)
            glyph = font.load_char(ord(c), flags=flags.NO_HINTING if flags else ft2font.LOAD_NO_HINTING)
            got = glyph.linearHoriAdvance / 65536 / 100
        except Exception:  # noqa: BLE001 - a font or a character matplotlib cannot load: an average width
            got = 0.6
        _ADVANCES[(c, weight)] = got
    return got


def _text_width(text: str, size: float, weight: str = "normal") -> float:
    """Inches ``text`` takes at ``size`` points: the sum of its characters' advance widths (no kerning), where
    bench places text without having matplotlib measure it (its measuring every text is what made matplotlib's
    ticks and legends costly)."""
    return sum(_advance(c, weight) for c in text) * size / 72


def _tick_labels(locs: list[float]) -> list[str]:
    """Tick labels as matplotlib's ScalarFormatter writes them on bench's axes: every label with the decimals
    of the step (20.0, 22.5, 25.0) and a true minus sign (bench's axes need no offset or exponent: their ranges
    are never tiny next to their values)."""
    step = min((b - a for a, b in zip(locs, locs[1:])), default=1.0)
    places = 0
    while places < 6 and abs(round(step, places) - step) > 1e-9 * max(1.0, abs(step)):
        places += 1
    out = []
    for v in locs:
        text = f"{v:.{places}f}"
        out.append(text[1:] if text.startswith("-") and float(text) == 0 else text.replace("-", "\N{MINUS SIGN}"))
    return out


def _ticks(ax: "Axes", grid: bool = False, x: Optional[tuple[list[float], list[str]]] = None) -> None:
    """The panel's ticks and tick labels, drawn by bench once its limits are final: per axis one line of tick
    marks (matplotlib's tick markers) and one text per label. matplotlib's own ticks are five artists each and
    its axes measure every label two or three times a drawing: a fifth of all the figures' cost.

    ``x``: the x axis's (positions, labels) (row #); otherwise, and on the y axis, MaxNLocator's ticks (at most
    ``TICKS`` intervals, 3 ticks at least) within the limits. ``grid``: light lines at the ticks."""
    from matplotlib.lines import Line2D
    from matplotlib.markers import TICKDOWN, TICKLEFT
    from matplotlib.ticker import MaxNLocator
    from matplotlib.transforms import offset_copy

    size = ax.xaxis.get_label().get_fontsize()   # matplotlib's tick labels are "medium": the font size
    gap = TICK_LENGTH + TICK_PAD
    ax.set_xlim(ax.get_xlim())   # the limits fixed: the tick marks added below must not widen an autoscaled axis
    ax.set_ylim(ax.get_ylim())
    for name in "xy":
        axis = ax.xaxis if name == "x" else ax.yaxis
        lo, hi = sorted(ax.get_xlim() if name == "x" else ax.get_ylim())
        if name == "x" and x is not None:
            locs, labels = [float(v) for v in x[0]], list(x[1])
        else:
            eps = (hi - lo) * 1e-9
            locs = [float(v) for v in MaxNLocator(TICKS, steps=[1, 2, 2.5, 5, 10], min_n_ticks=3).tick_values(lo, hi)
                    if lo - eps <= v <= hi + eps]
            labels = _tick_labels(locs)
        axis.set_ticks([])
        along = ax.get_xaxis_transform() if name == "x" else ax.get_yaxis_transform()   # data along, axes across
        zeros = [0.0] * len(locs)
        ax.add_line(Line2D(*((locs, zeros) if name == "x" else (zeros, locs)), transform=along, linestyle="none",
                           marker=TICKDOWN if name == "x" else TICKLEFT, markersize=TICK_LENGTH, markeredgewidth=0.8,
                           color="black", clip_on=False))
        if grid and locs:
            nan = float("nan")
            at = [v for loc in locs for v in (loc, loc, nan)]
            span = [v for _ in locs for v in (0.0, 1.0, nan)]
            ax.add_line(Line2D(*((at, span) if name == "x" else (span, at)), transform=along, color="#b0b0b0",
                               linewidth=0.8, alpha=0.25, zorder=1.5))
        if name == "x":
            shifted = offset_copy(along, fig=ax.figure, y=-gap, units="points")
            for v, text in zip(locs, labels):
                ax.text(v, 0, text, transform=shifted, ha="center", va="top", fontsize=size, clip_on=False)
            lines = max((t.count("\n") + 1 for t in labels), default=0)
            axis.set_label_coords(0.5, 0, transform=offset_copy(ax.transAxes, fig=ax.figure, units="points",
                                                               y=-(gap + lines * size * 1.2 + LABEL_PAD)))
        else:
            shifted = offset_copy(along, fig=ax.figure, x=-gap, units="points")
            for v, text in zip(locs, labels):
                ax.text(0, v, text, transform=shifted, ha="right", va="center", fontsize=size, clip_on=False)
            wide = max((_text_width(t, size) * 72 for t in labels), default=0.0)
            axis.set_label_coords(0, 0.5, transform=offset_copy(ax.transAxes, fig=ax.figure, units="points",
                                                               x=-(gap + wide + LABEL_PAD)))


def _plain(label: str) -> str:
    """Recipe text as matplotlib draws it literally: '$' would start mathtext (a malformed formula
    stops the whole report), controls and invisible formatting characters are made visible."""
    from bench.report.text import clean

    return clean(label).replace("\n", " ").replace("$", r"\$")


def _short(label: str, n: int = 18) -> str:
    return _plain(label if len(label) <= n else label[: n - 1] + "…")


def _label(ax: "Axes", text: str, xy: tuple[float, float], dx: float, dy: float, **kw) -> None:
    """``text`` at data point ``xy`` moved by (dx, dy) points: what ``ax.annotate(text, xy, xytext=(dx, dy),
    textcoords="offset points")`` draws, as a plain Text (an Annotation costs about twice as much)."""
    from matplotlib.transforms import offset_copy

    ax.text(xy[0], xy[1], text, transform=offset_copy(ax.transData, fig=ax.figure, x=dx, y=dy, units="points"), **kw)


Box = tuple[float, float, float, float]   # (x0, x1, y0, y1) in data coordinates: something drawn


def _free_corner(ax: "Axes", marks: list[Box], size: tuple[float, float]) -> str:
    """The corner of the axes (upper left, upper right, lower left, lower right: ties in that order) where a
    legend of ``size`` (inches) covers the fewest of ``marks``: matplotlib's ``loc="best"`` from what bench
    drew, which it knows (``"best"`` measures every artist's path: a tenth of all the figures' drawing)."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    pos = ax.get_position()
    w = size[0] / (pos.width * ax.figure.get_figwidth())    # the legend as a fraction of the axes
    h = size[1] / (pos.height * ax.figure.get_figheight())

    def frac(v: float, lo: float, hi: float) -> float:
        return (v - lo) / (hi - lo) if hi != lo else 0.5

    corners = {"upper left": (0.0, w, 1 - h, 1.0), "upper right": (1 - w, 1.0, 1 - h, 1.0),
               "lower left": (0.0, w, 0.0, h), "lower right": (1 - w, 1.0, 0.0, h)}
    boxes = [(min(frac(a, x0, x1), frac(b, x0, x1)), max(frac(a, x0, x1), frac(b, x0, x1)),
              min(frac(c, y0, y1), frac(d, y0, y1)), max(frac(c, y0, y1), frac(d, y0, y1))) for a, b, c, d in marks]

    def covered(l: float, r: float, b: float, t: float) -> int:
        return sum(1 for bl, br, bb, bt in boxes if bl <= r and br >= l and bb <= t and bt >= b)

    return min(corners, key=lambda name: covered(*corners[name]))   # min keeps the first of equals


@dataclass(frozen=True)
class Key:
    """One legend entry: its text and its sample, drawn as ``kind`` ('patch': a filled box, 'line', 'marker')
    with ``style``, matplotlib keyword arguments (of a Rectangle, or of a Line2D)."""

    label: str
    kind: str
    style: tuple[tuple[str, object], ...] = ()


def _key(label: str, kind: str, **style) -> Key:
    return Key(label, kind, tuple(style.items()))


#: a line of text as matplotlib lays it out, in em: its baseline 0.76 below the line's top, 0.24 above its bottom
ASCENT, DESCENT = 0.76, 0.24
#: matplotlib's legend layout (its rcParams' defaults), in em of the legend's font: the inset from the axes'
#: edges (borderaxespad + borderpad), the sample's length and height, the gap to the text, the row pitch (a line
#: of text and labelspacing), the gap between columns; a sample sits in the middle of its row
LEGEND_EM = {"inset": 0.9, "sample": 2.0, "sample_height": 0.7, "gap": 0.8, "pitch": 1.5, "columns": 2.0}


def _legend_columns(keys: Sequence[Key], size: float,
                    ncol: int) -> tuple[list[Sequence[Key]], list[float], int, float]:
    """The legend's columns (filled top to bottom), each one's width in em (sample, gap, its widest text), the
    number of rows and the whole width in em (the columns and the gaps between them)."""
    em = LEGEND_EM
    rows = -(-len(keys) // ncol)
    columns = [col for col in (keys[i * rows:(i + 1) * rows] for i in range(ncol)) if col]
    widths = [em["sample"] + em["gap"] + max(_text_width(k.label, size) * 72 / size for k in col) for col in columns]
    return columns, widths, rows, sum(widths) + em["columns"] * (len(widths) - 1)


def _legend_size(keys: Sequence[Key], size: float, ncol: int = 1) -> tuple[float, float]:
    """Inches the legend takes from its corner of the axes (its inset included): what :func:`_free_corner`
    keeps clear."""
    em = LEGEND_EM
    *_, rows, total = _legend_columns(keys, size, ncol)
    height = em["inset"] + ASCENT + DESCENT + em["pitch"] * (rows - 1)
    return (em["inset"] + total) * size / 72, height * size / 72


def _legend(ax: "Axes", keys: Sequence[Key], loc: str, size: float, ncol: int = 1) -> None:
    """What ``ax.legend(handles, loc=loc, fontsize=size, ncol=ncol, frameon=False)`` draws (the entries filled
    top to bottom, column by column), laid out by bench with matplotlib's metrics (``LEGEND_EM``): matplotlib's
    legend packs its entries in offset boxes that measure every text at each drawing (a quarter of a figure's
    cost). A right-hand corner places the legend by the texts' estimated widths (:func:`_text_width`)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    if not keys:
        return
    em = LEGEND_EM
    pos = ax.get_position()
    sx = size / (pos.width * ax.figure.get_figwidth() * 72)    # one em as a fraction of the axes' width
    sy = size / (pos.height * ax.figure.get_figheight() * 72)
    columns, widths, rows, total = _legend_columns(keys, size, ncol)
    x = em["inset"] * sx if "left" in loc else 1 - (em["inset"] + total) * sx
    if "upper" in loc:
        first = 1 - (em["inset"] + ASCENT) * sy
    else:
        first = (em["inset"] + DESCENT + em["pitch"] * (rows - 1)) * sy
    common = {"transform": ax.transAxes, "clip_on": False, "zorder": 5}   # above the data, as matplotlib's legend
    for col, width in zip(columns, widths):
        for r, key in enumerate(col):
            base = first - em["pitch"] * r * sy
            mid = base + (ASCENT - 0.5) * sy
            style = dict(key.style)
            if key.kind == "patch":
                ax.add_patch(Rectangle((x, mid - em["sample_height"] / 2 * sy), em["sample"] * sx,
                                       em["sample_height"] * sy, **common, **style))
            elif key.kind == "line":
                ax.add_line(Line2D([x, x + em["sample"] * sx], [mid, mid], **common, **style))
            else:
                ax.add_line(Line2D([x + em["sample"] / 2 * sx], [mid], linestyle="none", **common, **style))
            ax.text(x + (em["sample"] + em["gap"]) * sx, base, key.label, fontsize=size, va="baseline", **common)
        x += (width + em["columns"]) * sx


# ------------------------------------------------------------------------------------ figures
Point = tuple[int, float, float]   # (row position, published, measured)


def _pairs(view: PlotData) -> dict[str, list[Point]]:
    """Per metric column, the rows that have both a published and a measured value."""
    out = {key: [(rv.position, c.published, c.measured) for rv in view.rows for c in [rv.cells[key]]
                 if c.published is not None and c.measured is not None] for key in view.metric_keys}
    return {k: pts for k, pts in out.items() if pts}


def _panels(keys: list[str]) -> list[list[str]]:
    """COCO AP columns share one panel (same unit and scale); every other metric gets its own."""
    ap = [k for k in keys if k in AP_METRICS]
    return ([ap] if ap else []) + [[k] for k in keys if k not in AP_METRICS]


def _identity_panel(ax: "Axes", view: PlotData, keys: list[str], pairs: dict[str, list[Point]],
                    first: bool) -> None:
    """One metric panel: the tolerance band (its width in the title), y = x and the points. A legend only
    where it says something the first panel's does not: the first panel, and a panel of several series."""
    values = [v for k in keys for _, x, y in pairs[k] for v in (x, y)]
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.05, 0.5)
    lo, hi = lo - pad, hi + pad
    legend = []
    if not view.smoke:  # smoke cells are not compared: no band to fall in
        tol = view.tolerances[keys[0]]
        ax.fill_between([lo, hi], [lo - tol.band(lo), hi - tol.band(hi)], [lo + tol.band(lo), hi + tol.band(hi)],
                        color=BAND_COLOUR, alpha=0.12, lw=0)
        legend.append(_key("tolerance band", "patch", color=BAND_COLOUR, alpha=0.12, linewidth=0))
    ax.plot([lo, hi], [lo, hi], color="#888888", lw=0.8, ls="--")
    legend.append(_key("y = x", "line", color="#888888", linewidth=0.8, linestyle="--"))
    for i, key in enumerate(keys):
        pts = pairs[key]
        colour = MEASURED_COLOUR if len(keys) == 1 else SERIES_COLOURS[i % len(SERIES_COLOURS)]
        marker = SERIES_MARKERS[i % len(SERIES_MARKERS)]
        ax.scatter([p[1] for p in pts], [p[2] for p in pts], s=20, color=colour, zorder=3, marker=marker)
        if len(keys) > 1:
            legend.append(_key(METRICS[key].label, "marker", marker=marker, markersize=20 ** 0.5, color=colour,
                               markeredgewidth=SCATTER_EDGE))
        if i == 0:  # row numbers on the first series only: more would pile up
            for pos, x, y in pts:
                _label(ax, str(pos), (x, y), 4, 3, fontsize=7)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    unit = METRICS[keys[0]].unit
    title = f"COCO AP ({unit})" if len(keys) > 1 else f"{METRICS[keys[0]].label} ({unit})"
    band = "" if view.smoke else f", band {view.tolerances[keys[0]].describe()}"
    ax.set_title(title + band, y=TITLE_Y)
    ax.set_xlabel("published")
    ax.set_ylabel("measured")
    if first or len(keys) > 1:   # the others would repeat the first panel's
        _legend(ax, legend, "upper left", 6.5, ncol=2 if len(keys) > 4 else 1)


def published_vs_measured(view: PlotData) -> Optional["Figure"]:
    pairs = _pairs(view)
    if not pairs:
        return None
    panels = _panels(list(pairs))
    fig, axes = _figure(len(panels), Layout(axes=(2.8, 2.6)), view, "published vs measured (numbers: row #)")
    for i, (ax, keys) in enumerate(zip(axes, panels, strict=True)):
        _identity_panel(ax, view, keys, pairs, first=i == 0)
        _ticks(ax)
    return fig


def _speed_keys(view: PlotData) -> Optional[tuple[str, str]]:
    keys = view.metric_keys
    speed = next((k for k in ("fps", "latency_ms") if k in keys), None)
    accuracy = next((k for k in ("mask_AP", "box_AP") if k in keys), None)
    return (speed, accuracy) if speed and accuracy else None


def speed_accuracy(view: PlotData) -> Optional["Figure"]:
    keys = _speed_keys(view)
    if keys is None:
        return None
    speed, accuracy = keys
    points = []   # (row, published point, measured point) of each row with either
    for rv in view.rows:
        s, a = rv.cells[speed], rv.cells[accuracy]
        pub = (s.published, a.published) if s.published is not None and a.published is not None else None
        meas = (s.measured, a.measured) if s.measured is not None and a.measured is not None else None
        if pub or meas:
            points.append((rv, pub, meas))
    if not points:
        return None
    fig, (ax,) = _figure(1, Layout(axes=(5.6, 3.6)), view, "speed vs accuracy")
    pubs = [(rv, p) for rv, p, _ in points if p]
    meas = [(rv, m) for rv, _, m in points if m]
    joins = [v for _, p, m in points if p and m for v in ((p[0], p[1]), (m[0], m[1]), (float("nan"),) * 2)]
    if joins:   # one dotted line per row with both points: one artist, broken at the NaNs
        ax.plot([j[0] for j in joins], [j[1] for j in joins], color="#bbbbbb", lw=0.7, ls=":")
    # each series one scatter (its points in the order of the rows)
    ax.scatter([p[0] for _, p in pubs], [p[1] for _, p in pubs], s=30, color=PUBLISHED_COLOUR, zorder=3)
    ax.scatter([m[0] for _, m in meas], [m[1] for _, m in meas], s=30, facecolors="none",
               edgecolors=MEASURED_COLOUR, zorder=3)
    lo, hi = ax.get_xlim()
    ax.set_xlim(lo, hi + 0.3 * (hi - lo))  # room for the labels right of the points
    ax.set_ylim(ax.get_ylim())
    # every measured point's row number (below right of it); a published point's row label above right of it,
    # higher, or above left: the first place inside the panel that overlaps no label placed before; none if no
    # place does (its row is still told by the dotted line to its measured point and that point's number)
    candidates = [(m, str(rv.position), [(5, -9)], {"color": MEASURED_COLOUR}) for rv, m in meas]
    candidates += [(p, _short(rv.label, 24), [(5, 3), (5, 11), (-5, 3)], {}) for rv, p in pubs]
    placed: list[Box] = []   # in inches from the axes' lower left corner
    marks = []               # what _free_corner keeps the legend off: each label drawn, in data coordinates
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    pos = ax.get_position()
    width, height = pos.width * fig.get_figwidth(), pos.height * fig.get_figheight()   # the panel, in inches
    per_x, per_y = (x1 - x0) / width, (y1 - y0) / height     # data units an inch
    for (x, y), text, places, style in candidates:
        wide = _text_width(text, 7)
        for dx, dy in places:
            at, base = (x - x0) / per_x + dx / 72, (y - y0) / per_y + dy / 72   # the text's anchor, its baseline
            box = (at if dx > 0 else at - wide, at + wide if dx > 0 else at,
                   base - DESCENT * 7 / 72, base + ASCENT * 7 / 72)
            inside = box[0] >= 0 and box[1] <= width and box[3] <= height
            if len(places) == 1 or inside and not any(b[0] < box[1] and box[0] < b[1] and b[2] < box[3]
                                                      and box[2] < b[3] for b in placed):
                placed.append(box)
                _label(ax, text, (x, y), dx, dy, fontsize=7, ha="left" if dx > 0 else "right", **style)
                marks.append((x0 + box[0] * per_x, x0 + box[1] * per_x, y, y))
                break
    entries = [_key("published", "marker", marker="o", markersize=30 ** 0.5, color=PUBLISHED_COLOUR,
                    markeredgewidth=SCATTER_EDGE),
               _key("measured (row #)", "marker", marker="o", markersize=30 ** 0.5, markerfacecolor="none",
                    markeredgecolor=MEASURED_COLOUR, markeredgewidth=SCATTER_EDGE)]
    _legend(ax, entries, _free_corner(ax, marks, _legend_size(entries, 7)), 7)
    ax.set_xlabel(f"{METRICS[speed].label} ({METRICS[speed].unit})")
    ax.set_ylabel(f"{METRICS[accuracy].label} ({METRICS[accuracy].unit})")
    _ticks(ax, grid=True)
    return fig


def _claim_panel(ax: "Axes", claims: list[PlotClaim], key: str) -> list[Box]:
    """The panel's bars; returns what it drew (bars, error bars, labels) for the legend's corner."""
    labels, pub, meas, below, above, missing = [], [], [], [], [], []
    for i, c in enumerate(claims):
        m = next((m for m in c.metrics if m.metric == key), None)
        labels.append(str(c.position))
        pub.append(m.published_delta if m and m.published_delta is not None else 0.0)
        measured = m is not None and m.measured_delta is not None
        meas.append(m.measured_delta if measured else 0.0)
        has_interval = measured and m.lo is not None and m.hi is not None
        below.append(max(0.0, m.measured_delta - m.lo) if has_interval else 0.0)
        above.append(max(0.0, m.hi - m.measured_delta) if has_interval else 0.0)
        if not measured:
            missing.append(i)
    noise = [below, above]
    xs = list(range(len(claims)))
    width = 0.38
    ax.bar([x - width / 2 for x in xs], pub, width, color=PUBLISHED_COLOUR)
    ax.bar([x + width / 2 for x in xs], meas, width, color=MEASURED_COLOUR,
           yerr=noise, error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333"})
    for i in missing:  # say so rather than draw a zero-height bar that reads as "no effect"
        _label(ax, "not\nmeasured", (i + width / 2, 0), 0, 3, ha="center", fontsize=6, color=MEASURED_COLOUR)
    ax.axhline(0, color="black", lw=0.6)
    if missing:   # room above zero for the "not measured" text (bars below zero alone end the axis at zero)
        ylo, yhi = ax.get_ylim()
        ax.set_ylim(ylo, max(yhi, 0.15 * (yhi - ylo)))
    ax.set_xlabel("row # (claims table)")
    m = METRICS[key]
    ax.set_title(f"Δ {m.label} ({m.unit}) vs baseline", y=TITLE_Y)
    marks = [(x - width, x, 0.0, p) for x, p in zip(xs, pub)]
    marks += [(x, x + width, min(0.0, v - down), max(0.0, v + up)) for x, v, down, up in zip(xs, meas, below, above)]
    ylo, yhi = ax.get_ylim()
    marks += [(i, i + width, 0.0, 0.0 + 0.12 * (yhi - ylo)) for i in missing]   # the "not measured" text
    _ticks(ax, x=(xs, labels))
    return marks


def _delta_keys(view: PlotData) -> tuple[list[PlotClaim], list[str]]:
    """The claim rows with a metric, and the columns of their Δ panels: the headline AP and every cost column
    (params, FLOPs, speed); the claims table has all AP columns."""
    claims = [c for c in view.claims if c.metrics]
    compared = [k for k in view.metric_keys if any(m.metric == k for c in claims for m in c.metrics)]
    primary = primary_metric([k for k in compared if k in AP_METRICS])
    return claims, ([primary] if primary else []) + [k for k in compared if k not in AP_METRICS]


def ablation_deltas(view: PlotData) -> Optional["Figure"]:
    claims, keys = _delta_keys(view)
    if not keys:
        return None
    width = max(1.8, 0.45 * len(claims) + 0.5)
    layout = Layout(axes=(width, 2.0), gap=(0.75, 1.0), bottom=0.55, max_cols=max(1, min(4, int(12 // (width + 0.75)))))
    fig, axes = _figure(len(keys), layout, view,
                        "ablation Δ against the baseline (error bar: the measured Δ's interval)")
    marks = [_claim_panel(ax, claims, key) for ax, key in zip(axes, keys, strict=True)]
    entries = [_key("paper Δ", "patch", color=PUBLISHED_COLOUR, linewidth=0),
               _key("measured Δ", "patch", color=MEASURED_COLOUR, linewidth=0)]
    _legend(axes[0], entries, _free_corner(axes[0], marks[0], _legend_size(entries, 7)), 7)
    return fig


# ------------------------------------------------------------------------------------ writing
FIGURES: dict[str, tuple[str, str, Callable[[PlotData], Optional["Figure"]]]] = {
    "published-vs-measured": ("Published vs measured",
                              "Each point is a row's cell (numbers: row #, on the first series); COCO AP columns "
                              "share a panel; the shaded band is the column's tolerance (its width in the panel's title).",
                              published_vs_measured),
    "speed-accuracy": ("Speed vs accuracy",
                       "Filled: published; hollow: measured (row #); dotted lines join a row's two points. A "
                       "published point's label is left out where it would cover another label.",
                       speed_accuracy),
    "ablation-deltas": ("Ablation deltas",
                        "Per claim row, the paper's difference to its baseline and the measured one, for the "
                        "primary AP and each cost column; error bars show the interval of the verdict rule.",
                        ablation_deltas),
}


def _not_drawn(table: str, name: str, e: Exception) -> None:
    import sys

    print(f"bench report: {table}: figure {name!r} not drawn: {type(e).__name__}: "
          f"{str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)


def _draw(name: str, draw, data: PlotData, files: dict[str, Path]) -> str:
    """Draw one figure into ``files`` (each written atomically): 'drawn', 'no data' or 'failed' (said on stderr)."""
    import os

    import matplotlib

    with matplotlib.rc_context(STYLE):
        try:
            fig = draw(data)
        except (ValueError, OverflowError, RuntimeError) as e:  # data matplotlib cannot draw: no figure
            _not_drawn(data.table, name, e)
            return "failed"
        if fig is None:
            return "no data"
        tmps = {fmt: path.with_name(f".{path.name}.{os.getpid()}.tmp") for fmt, path in files.items()}
        try:
            for fmt, tmp in tmps.items():
                fig.savefig(tmp, format=fmt, dpi=DPI, metadata=_METADATA[fmt])
        except (ValueError, OverflowError, RuntimeError) as e:
            _not_drawn(data.table, name, e)
            for tmp in tmps.values():
                tmp.unlink(missing_ok=True)
            return "failed"
    for fmt, tmp in tmps.items():
        os.replace(tmp, files[fmt])
    return "drawn"


def warm_up() -> None:
    """A figure worker's first task: the drawing libraries imported before the first table arrives."""
    import importlib

    for name in ("matplotlib.figure", "matplotlib.backends.backend_svg", "matplotlib.backends.backend_agg",
                 "bench.report.cache"):
        importlib.import_module(name)


def check_formats(formats: Sequence[str], pages: bool = False) -> tuple[str, ...]:
    """The figure formats, in FORMATS order, each once. A ValueError for an unknown one, or, with ``pages``,
    for a set without SVG or PNG (a page shows its figures as one of the two)."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"figure format(s) {unknown or list(formats)!r}: known are {', '.join(FORMATS)}")
    if pages and not {"svg", "png"} & set(formats):
        raise ValueError(f"figure format(s) {', '.join(formats)} alone: a page shows its figures as svg or png, "
                         "so add one of them")
    return tuple(f for f in FORMATS if f in formats)


def write_plots(view: Union["TableView", PlotData], out_dir: Path, store: Optional[Path] = None,
                keys: Optional[dict[str, str]] = None, formats: Sequence[str] = DEFAULT_FORMATS) -> list[Plot]:
    """Draw every figure that has data and save it in ``formats`` (default SVG) under ``out_dir``.

    ``store``: the figure store (``bench.report.cache``): a figure whose content hash is there is copied
    from it, not drawn; one drawn is added to it. Figures with no data leave no file behind, and a format
    not asked for leaves none from an earlier report. ``keys``: the figures' content hashes
    (:func:`figure_key`) when the caller has them already."""
    from bench.report.cache import copy_atomic

    formats = check_formats(formats)
    data = view if isinstance(view, PlotData) else plot_data(view)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    for name, (title, caption, draw) in FIGURES.items():
        files = {fmt: out_dir / f"{name}.{fmt}" for fmt in formats}
        for fmt in FORMATS:
            if fmt not in formats:
                (out_dir / f"{name}.{fmt}").unlink(missing_ok=True)   # this render's figure has no such file
        key = (keys[name] if keys else figure_key(name, data)) if store is not None else None
        stored = {fmt: store / f"{key}.{fmt}" for fmt in formats} if store is not None else {}
        if store is not None and (store / f"{key}.none").exists():
            outcome = "no data"
        elif store is not None and all(p.exists() for p in stored.values()):
            for fmt, src in stored.items():
                if not files[fmt].exists() or files[fmt].read_bytes() != src.read_bytes():
                    copy_atomic(src, files[fmt])
            plots.append(Plot(name, title, caption, files, drawn=False))
            continue
        else:
            outcome = _draw(name, draw, data, files)
            if outcome == "no data" and store is not None:
                store.mkdir(parents=True, exist_ok=True)
                (store / f"{key}.none").touch()   # a failure is not kept: the next render tries (and says) again
        if outcome != "drawn":
            for path in files.values():
                path.unlink(missing_ok=True)  # no stale figure from an earlier report
            continue
        if store is not None:
            for fmt, path in files.items():
                copy_atomic(path, stored[fmt])
        plots.append(Plot(name, title, caption, files))
    return plots
