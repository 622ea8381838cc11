"""The report's figures as drawn: bench's own ticks (bench.report.plots._ticks) against matplotlib's, the
titles wrapped to their figure, and what the SVG files hold."""
from __future__ import annotations

import random
import re
import xml.etree.ElementTree as ET

import pytest

from bench.report import plots
from bench.report.plots import PlotCell, PlotClaim, PlotClaimMetric, PlotData, PlotRow
from bench.report.rules import SMOKE_BANNER, Tolerance

SVG = "{http://www.w3.org/2000/svg}"


def _matplotlib_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """What matplotlib's own axis shows between lo and hi with the locator bench used before it drew its
    own ticks (MaxNLocator(TICKS, ...)) and matplotlib's default ScalarFormatter."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ax = Figure().add_subplot()
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(MaxNLocator(plots.TICKS, steps=[1, 2, 2.5, 5, 10], min_n_ticks=3))
    ticks = ax.xaxis._update_ticks()    # the ticks matplotlib draws: those inside the view (its own test)
    locs = [float(t.get_loc()) for t in ticks]
    return locs, [t.label1.get_text() for t in ticks]


def _bench_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    ax.set_xlim(lo, hi)
    ax.set_ylim(0, 1)
    n = len(ax.texts)
    plots._ticks(ax)
    texts = ax.texts[n:]
    xs = [t for t in texts if t.get_ha() == "center"]   # x labels are centred under their tick, y ones right-aligned
    return [float(t.get_position()[0]) for t in xs], [t.get_text() for t in xs]


RANGES = [(13.2, 64.9), (36.8, 44.9), (-1.2, 4.4), (-4.0, 8.1), (0.0, 1.0), (95.0, 310.0), (0.21, 0.38),
          (-0.6, 0.6), (1.0, 9.0), (27.3, 27.9), (150.0, 1240.0)]


@pytest.mark.parametrize("lo,hi", RANGES + [(round(a, 2), round(a + w, 2)) for a, w in
                                            ((random.Random(i).uniform(-50, 300), random.Random(-i).uniform(0.5, 400))
                                             for i in range(40))])
def test_ticks_are_matplotlibs(lo, hi):
    """The ticks bench draws itself are the ones matplotlib drew for the same axis: the same positions and
    the same label text (decimals of the step, U+2212 minus), on the kinds of range bench's figures have
    (AP points, Δ around zero, FPS, GFLOPs) and 40 random ones."""
    want_locs, want_labels = _matplotlib_ticks(lo, hi)
    got_locs, got_labels = _bench_ticks(lo, hi)
    assert got_locs == pytest.approx(want_locs, abs=1e-9 * (hi - lo))
    assert got_labels == want_labels


def test_tick_labels_format():
    assert plots._tick_labels([20.0, 22.5, 25.0]) == ["20.0", "22.5", "25.0"]
    assert plots._tick_labels([-2.0, 0.0, 2.0]) == ["\N{MINUS SIGN}2", "0", "2"]
    assert plots._tick_labels([-0.25, 0.0, 0.25]) == ["\N{MINUS SIGN}0.25", "0.00", "0.25"]
    assert plots._tick_labels([100.0, 200.0, 300.0]) == ["100", "200", "300"]


def test_long_titles_are_wrapped_to_the_figure():
    text = "amf-sparseinst Table 4: ablation Δ against the baseline (error bar: the measured Δ's interval)"
    wrapped = plots._wrap(text, plots.MIN_WIDTH)
    assert wrapped.replace("\n", " ") == text and wrapped.count("\n") == 1
    assert all(plots._text_width(line, plots.TITLE_SIZE) <= plots.MIN_WIDTH - 0.3 for line in wrapped.split("\n"))
    assert plots._wrap("short title", plots.MIN_WIDTH) == "short title"
    smoke = plots._wrap(f"{SMOKE_BANNER}\nx Table 1: y", plots.MIN_WIDTH)
    assert smoke.split("\n") == [SMOKE_BANNER, "x Table 1: y"]   # the banner keeps its own line
    # a smoke figure's title is bold, wider: wrapped by the bold font's widths (its line above did not fit)
    bold = plots._wrap(text, plots.MIN_WIDTH, "bold")
    assert plots._text_width(text, plots.TITLE_SIZE, "bold") > plots._text_width(text, plots.TITLE_SIZE)
    assert all(plots._text_width(line, plots.TITLE_SIZE, "bold") <= plots.MIN_WIDTH - 0.3 for line in bold.split("\n"))


def test_not_measured_notes_have_room_inside_their_panel():
    """A Δ panel whose claims are all unmeasured, its paper bars all below zero: the axis goes above zero far
    enough for the "not measured" notes (it ended at zero, and the notes sat on the panel's title)."""
    fig = plots.ablation_deltas(_data())
    fps = fig.axes[1]
    lo, hi = fps.get_ylim()
    assert hi >= 0.12 * (hi - lo)    # the height the legend placement allows a note (_claim_panel)
    assert sum(t.get_text() == "not\nmeasured" for t in fps.texts) == 4


def _data(smoke: bool = False) -> PlotData:
    rows = tuple(PlotRow(i, f"row {i}", {"mask_AP": PlotCell(30.0 + i, 30.4 + i), "fps": PlotCell(20.0 - i, 19.1 - i)})
                 for i in range(1, 6))
    claims = tuple(PlotClaim(i, (PlotClaimMetric("mask_AP", 0.6 * i, 0.5 * i, 0.3 * i, 0.7 * i),
                                 PlotClaimMetric("fps", -1.0, None, None, None)))
                   for i in (2, 3, 4, 5))
    tol = {"mask_AP": Tolerance(0.5, False, "default"), "fps": Tolerance(0.02, True, "default")}
    return PlotData("paper-x", "3", smoke, ("mask_AP", "fps"), tol, rows, claims, "paper-x/table-3")


def _texts(path) -> list[str]:
    root = ET.parse(path).getroot()
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


def _x_tick_labels(ax) -> list[str]:
    """The x tick labels bench drew on a panel: texts centred under the axis, top-aligned (a point's label and
    a "not measured" note are not top-aligned; titles are not among the axes' texts)."""
    return [t.get_text() for t in ax.texts if t.get_ha() == "center" and t.get_va() == "top"]


def test_ablation_panels_are_numbered_by_claim_row():
    """The Δ panels' x axis: the claim rows' numbers (2, 3, 4, 5) under their bars, not 0..n-1 (what the
    first version of bench's ticks drew, reading matplotlib's categorical ticks wrongly)."""
    fig = plots.ablation_deltas(_data())
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert _x_tick_labels(ax) == ["2", "3", "4", "5"]
        assert [t.get_position()[0] for t in ax.texts if t.get_text() == "2" and t.get_va() == "top"] == [0.0]


@pytest.mark.parametrize("smoke", [False, True])
def test_figure_files_hold_ticks_labels_and_the_whole_title(tmp_path, smoke):
    """Every figure of a table with AP, FPS and claims: its SVG holds bench's tick labels (3 at least an axis),
    the axis labels and the title in full (wrapped where long, never cut), and none of matplotlib's own
    tick groups (which bench no longer draws)."""
    drawn = {p.name: p.files["svg"] for p in plots.write_plots(_data(smoke), tmp_path)}
    assert set(drawn) == {"published-vs-measured", "speed-accuracy", "ablation-deltas"}
    what = {"published-vs-measured": "published vs measured (numbers: row #)", "speed-accuracy": "speed vs accuracy",
            "ablation-deltas": "ablation Δ against the baseline (error bar: the measured Δ's interval)"}
    panels = {"published-vs-measured": 2, "speed-accuracy": 1, "ablation-deltas": 2}
    for name, path in drawn.items():
        svg = path.read_text()
        texts = _texts(path)
        assert not re.search(r'id="[xy]tick_\d+"', svg)     # matplotlib's ticks are groups xtick_1, ytick_1, ...
        numbers = [t for t in texts if re.fullmatch(r"\N{MINUS SIGN}?\d+(\.\d+)?", t)]
        assert len(numbers) >= 6 * panels[name], (name, texts)
        start = next(i for i, t in enumerate(texts) if t.startswith("paper-x Table 3: "))
        lines = [texts[start]]
        while " ".join(lines) != f"paper-x Table 3: {what[name]}" and len(lines) < 4:
            lines.append(texts[start + len(lines)])
        assert " ".join(lines) == f"paper-x Table 3: {what[name]}"       # every line of the title, in order
        assert (SMOKE_BANNER in texts) == smoke
    pvm = _texts(drawn["published-vs-measured"])
    assert pvm.count("published") == 2 and pvm.count("measured") == 2   # each panel's axis labels
    assert sum(t.startswith("paper-x Table 3") for t in _texts(drawn["ablation-deltas"])) == 1


@pytest.mark.parametrize("loc", ["upper left", "upper right", "lower left", "lower right"])
@pytest.mark.parametrize("ncol", [1, 2])
def test_legend_is_where_matplotlibs_was(loc, ncol):
    """bench's legend (bench.report.plots._legend) puts every entry's text where matplotlib's own legend
    (frameon=False) puts it, to half a point, in every corner, in one column and in two (filled column by
    column), with samples of each kind."""
    import io

    from matplotlib.backends.backend_svg import RendererSVG
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    keys = [plots._key("tolerance band", "patch", color="#2e7d32", alpha=0.12, linewidth=0),
            plots._key("y = x", "line", color="#888888", linewidth=0.8, linestyle="--"),
            plots._key("mask AP", "marker", marker="o", markersize=20 ** 0.5, color="#1f6fb4"),
            plots._key("mask AP50 (a longer label)", "marker", marker="s", markersize=20 ** 0.5, color="#d9730d"),
            plots._key("Δ FPS", "patch", color="#4d4d4d", linewidth=0)]

    def handle(k):
        style = dict(k.style)
        if k.kind == "patch":
            return Rectangle((0, 0), 1, 1, **style)
        return Line2D([], [], linestyle=style.pop("linestyle", "none") if k.kind == "line" else "none", **style)

    fig = Figure(figsize=(6.4, 3.2))
    theirs, ours = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    legend = theirs.legend([handle(k) for k in keys], [k.label for k in keys], loc=loc, fontsize=7, ncol=ncol,
                           frameon=False)
    plots._legend(ours, keys, loc, 7, ncol=ncol)
    fig.set_dpi(72)   # the SVG renderer's: what the page shows (text measured unhinted, as bench measures it)
    renderer = RendererSVG(*fig.get_size_inches() * 72, io.StringIO())
    fig.draw(renderer)

    def corner_relative(ax, text):   # the text's bounding box against its axes' lower left corner, in points
        box, frame = text.get_window_extent(renderer), ax.get_window_extent(renderer)
        return box.x0 - frame.x0, box.y0 - frame.y0

    mine = [t for t in ours.texts if t.get_text() in {k.label for k in keys}]
    assert [t.get_text() for t in mine] == [k.label for k in keys]
    for want, got in zip(legend.get_texts(), mine, strict=True):
        assert corner_relative(ours, got) == pytest.approx(corner_relative(theirs, want), abs=0.5), got.get_text()


def test_speed_labels_do_not_cover_each_other():
    """A crowded speed-accuracy figure (ten rows within 0.1 FPS and 0.3 AP, two far off, like sbr-cnn Table 7): every
    measured point keeps its row number; each published label drawn lies inside the panel and overlaps no other
    label (a label with no free place is left out: the caption says so); most still find a place."""
    import io

    from matplotlib.backends.backend_svg import RendererSVG

    def cells(ap: float, fps: float) -> dict:
        return {"mask_AP": PlotCell(ap, ap + 0.05), "fps": PlotCell(fps, fps + 0.04)}

    rows = tuple(PlotRow(i, f"R^3-CNN variant {i} (H=2)", cells(38.0 + 0.03 * i, 0.8 + 0.02 * (i % 4)))
                 for i in range(1, 11))
    rows += (PlotRow(11, "R^3-CNN far, slow", cells(36.9, 3.3)), PlotRow(12, "R^3-CNN far, best", cells(39.5, 1.2)))
    data = PlotData("paper-x", "7", False, ("mask_AP", "fps"), {"mask_AP": Tolerance(0.5, False, "default"),
                                                               "fps": Tolerance(0.02, True, "default")}, rows, ())
    fig = plots.speed_accuracy(data)
    ax = fig.axes[0]
    fig.set_dpi(72)
    renderer = RendererSVG(*fig.get_size_inches() * 72, io.StringIO())
    fig.draw(renderer)
    numbers = [t for t in ax.texts if t.get_color() == plots.MEASURED_COLOUR and t.get_text().isdigit()]
    assert sorted(int(t.get_text()) for t in numbers) == list(range(1, 13))
    labels = [t for t in ax.texts if t.get_text().startswith("R^3-CNN")]
    assert 4 <= len(labels) < 12       # some had no free place; the far ones and a few in the crowd did
    frame = ax.get_window_extent(renderer)
    boxes = [t.get_window_extent(renderer) for t in labels]
    for i, box in enumerate(boxes):
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 + 0.5 and box.y1 <= frame.y1 + 0.5
        for other in boxes[i + 1:] + [t.get_window_extent(renderer) for t in numbers]:
            overlap = min(box.x1, other.x1) - max(box.x0, other.x0), min(box.y1, other.y1) - max(box.y0, other.y0)
            assert min(overlap) <= 0.5, (labels[i].get_text(), overlap)
