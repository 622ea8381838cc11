"""The report's figures (matplotlib, Agg, no pyplot state), each written as PNG and SVG beside the page.

* published vs measured, one panel per metric column, with the y = x line and the tolerance band;
* speed vs accuracy (FPS or latency against mask AP, like AMF-SparseInst's Figure 8) when the table
  has a speed column: each row's published point joined to its measured one;
* ablation deltas: per claim row, the paper's Δ against its baseline next to the measured Δ (± noise).

A smoke-scale figure carries ``SMOKE_BANNER`` in its title.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from bench.report.frame import ClaimView, TableView
from bench.report.rules import SMOKE_BANNER, tolerance_for
from bench.vocab import METRICS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FORMATS = ("png", "svg")
PUBLISHED_COLOUR = "#4d4d4d"
MEASURED_COLOUR = "#1f6fb4"
SMOKE_COLOUR = "#b3261e"
PANEL_SIZE = (3.3, 3.0)     # inches per panel
MIN_WIDTH = 6.4            # inches: room for the two-line smoke title
DPI = 110


@dataclass
class Plot:
    name: str                  # file stem: 'published-vs-measured'
    title: str
    caption: str
    files: dict[str, Path]     # format -> path

    def file(self, fmt: str) -> Path:
        return self.files[fmt]


def _figure(n_panels: int, max_cols: int = 4, panel: tuple[float, float] = PANEL_SIZE) -> tuple["Figure", list["Axes"]]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    matplotlib.rcParams.update({"svg.fonttype": "none", "font.size": 8.5, "axes.titlesize": 9,
                                "axes.spines.top": False, "axes.spines.right": False})
    from matplotlib.figure import Figure

    cols = min(max_cols, max(n_panels, 1))
    rows = -(-max(n_panels, 1) // cols)
    fig = Figure(figsize=(max(panel[0] * cols, MIN_WIDTH), panel[1] * rows + 0.7), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for extra in axes[n_panels:]:
        extra.set_visible(False)
    return fig, axes[:n_panels]


def _title(fig: "Figure", view: TableView, what: str) -> str:
    t = view.table
    title = f"{t.paper.slug} Table {t.number}: {what}"
    if view.smoke:
        title = f"{SMOKE_BANNER}\n{title}"
    fig.suptitle(title, color=SMOKE_COLOUR if view.smoke else "black", fontsize=10,
                 fontweight="bold" if view.smoke else "normal")
    return title


def _short(label: str, n: int = 18) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


# ------------------------------------------------------------------------------------ figures
def published_vs_measured(view: TableView) -> Optional["Figure"]:
    pairs = {key: [(rv.row.position, c.published, c.measured.mean) for rv in view.rows
                   for c in [rv.cells[key]] if c.published is not None and c.measured is not None]
             for key in view.metric_keys}
    keys = [k for k, pts in pairs.items() if pts]
    if not keys:
        return None
    fig, axes = _figure(len(keys))
    for ax, key in zip(axes, keys):
        pts = pairs[key]
        xs, ys = [p[1] for p in pts], [p[2] for p in pts]
        lo, hi = min(xs + ys), max(xs + ys)
        pad = (hi - lo) * 0.08 or max(abs(hi) * 0.05, 0.5)
        lo, hi = lo - pad, hi + pad
        if not view.smoke:  # smoke cells are not compared: no band to fall in
            tol = tolerance_for(key, None, view.table)
            ax.fill_between([lo, hi], [lo - tol.band(lo), hi - tol.band(hi)], [lo + tol.band(lo), hi + tol.band(hi)],
                            color="#2e7d32", alpha=0.12, lw=0, label=f"tolerance {tol.describe()}")
        ax.plot([lo, hi], [lo, hi], color="#888888", lw=0.8, ls="--", label="y = x")
        ax.scatter(xs, ys, s=22, color=MEASURED_COLOUR, zorder=3)
        for pos, x, y in pts:
            ax.annotate(str(pos), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        m = METRICS[key]
        ax.set_title(f"{m.label} ({m.unit})")
        ax.set_xlabel("published")
        ax.set_ylabel("measured")
    axes[0].legend(loc="upper left", fontsize=7, frameon=False)
    _title(fig, view, "published vs measured (points: row #)")
    return fig


def _speed_keys(view: TableView) -> Optional[tuple[str, str]]:
    keys = view.metric_keys
    speed = next((k for k in ("fps", "latency_ms") if k in keys), None)
    accuracy = next((k for k in ("mask_AP", "box_AP") if k in keys), None)
    return (speed, accuracy) if speed and accuracy else None


def speed_accuracy(view: TableView) -> Optional["Figure"]:
    keys = _speed_keys(view)
    if keys is None:
        return None
    speed, accuracy = keys
    fig, (ax,) = _figure(1, panel=(6.2, 4.2))
    plotted = False
    for rv in view.rows:
        s, a = rv.cells[speed], rv.cells[accuracy]
        pub = (s.published, a.published) if s.published is not None and a.published is not None else None
        meas = (s.measured.mean, a.measured.mean) if s.measured and a.measured else None
        if pub:
            ax.scatter(*pub, s=30, color=PUBLISHED_COLOUR, zorder=3)
            ax.annotate(_short(rv.row.label, 24), pub, textcoords="offset points", xytext=(5, 3), fontsize=7)
        if meas:
            ax.scatter(*meas, s=30, facecolors="none", edgecolors=MEASURED_COLOUR, zorder=3)
            ax.annotate(str(rv.row.position), meas, textcoords="offset points", xytext=(5, -9), fontsize=7,
                        color=MEASURED_COLOUR)
        if pub and meas:
            ax.plot([pub[0], meas[0]], [pub[1], meas[1]], color="#bbbbbb", lw=0.7, ls=":")
        plotted = plotted or bool(pub or meas)
    if not plotted:
        return None
    ax.scatter([], [], s=30, color=PUBLISHED_COLOUR, label="published")
    ax.scatter([], [], s=30, facecolors="none", edgecolors=MEASURED_COLOUR, label="measured (row #)")
    ax.legend(loc="best", fontsize=7, frameon=False)
    ax.set_xlabel(f"{METRICS[speed].label} ({METRICS[speed].unit})")
    ax.set_ylabel(f"{METRICS[accuracy].label} ({METRICS[accuracy].unit})")
    ax.grid(alpha=0.25)
    _title(fig, view, "speed vs accuracy")
    return fig


def _claim_panel(ax: "Axes", claims: list[ClaimView], key: str) -> None:
    labels, pub, meas, noise, missing = [], [], [], [], []
    for i, c in enumerate(claims):
        m = next((m for m in c.metrics if m.metric == key), None)
        labels.append(_short(f"{c.row.row.position}. {c.row.row.label}"))
        pub.append(m.published_delta if m and m.published_delta is not None else 0.0)
        measured = m is not None and m.measured_delta is not None
        meas.append(m.measured_delta if measured else 0.0)
        noise.append(m.noise if measured and m.noise is not None else 0.0)
        if not measured:
            missing.append(i)
    xs = list(range(len(claims)))
    width = 0.38
    ax.bar([x - width / 2 for x in xs], pub, width, color=PUBLISHED_COLOUR, label="paper Δ")
    ax.bar([x + width / 2 for x in xs], meas, width, color=MEASURED_COLOUR, label="measured Δ",
           yerr=noise, error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333"})
    for i in missing:  # say so rather than draw a zero-height bar that reads as "no effect"
        ax.annotate("not\nmeasured", (i + width / 2, 0), textcoords="offset points", xytext=(0, 3), ha="center",
                    fontsize=6, color=MEASURED_COLOUR)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(xs, labels, rotation=30, ha="right", fontsize=7)
    m = METRICS[key]
    ax.set_title(f"Δ {m.label} ({m.unit}) vs baseline")


def ablation_deltas(view: TableView) -> Optional["Figure"]:
    claims = [c for c in view.claims if c.metrics]
    keys = [k for k in view.metric_keys if any(m.metric == k for c in claims for m in c.metrics)]
    if not keys:
        return None
    fig, axes = _figure(len(keys), panel=(max(2.6, 0.75 * len(claims) + 1.4), 3.2))
    for ax, key in zip(axes, keys):
        _claim_panel(ax, claims, key)
    axes[0].legend(loc="best", fontsize=7, frameon=False)
    _title(fig, view, "ablation Δ against the baseline (error bar: noise)")
    return fig


# ------------------------------------------------------------------------------------ writing
FIGURES: dict[str, tuple[str, str, Callable[[TableView], Optional["Figure"]]]] = {
    "published-vs-measured": ("Published vs measured",
                              "Each point is a row (its # in the table); the shaded band is the tolerance.",
                              published_vs_measured),
    "speed-accuracy": ("Speed vs accuracy",
                       "Filled: published; hollow: measured (row #); dotted lines join a row's two points.",
                       speed_accuracy),
    "ablation-deltas": ("Ablation deltas",
                        "Per claim row, the paper's difference to its baseline and the measured one; "
                        "error bars show the noise band of the verdict rule.",
                        ablation_deltas),
}


def write_plots(view: TableView, out_dir: Path) -> list[Plot]:
    """Draw every figure that has data and save it as PNG and SVG under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    for name, (title, caption, draw) in FIGURES.items():
        fig = draw(view)
        if fig is None:
            for fmt in FORMATS:
                (out_dir / f"{name}.{fmt}").unlink(missing_ok=True)  # no stale figure from an earlier report
            continue
        files = {fmt: out_dir / f"{name}.{fmt}" for fmt in FORMATS}
        for fmt, path in files.items():
            fig.savefig(path, dpi=DPI, metadata={"Date": None} if fmt == "svg" else None)
        plots.append(Plot(name, title, caption, files))
    return plots
