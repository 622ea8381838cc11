"""How a report judges numbers, defined once: tolerances, cell agreement and the claim verdict rule.

Everything a report page says about "matches" and "held" comes from this module; the page prints
``CELL_RULE`` and ``VERDICT_RULE`` so a reader sees the rule that produced each colour and verdict.
No heavy imports here: the rules are plain arithmetic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

from bench.vocab import AP_METRICS, METRICS, Agreement, Verdict

if TYPE_CHECKING:  # annotations only: a figure worker imports the rules without pydantic
    from bench.recipes import Row, Table

#: Said by the title of every smoke-scale page and plot.
SMOKE_BANNER = "SMOKE SCALE — not comparable to the paper"
SMOKE_EXPLANATION = ("Smoke-scale numbers come from a few iterations on the synthetic dataset without pretrained "
                     "weights: they show that each row trains and evaluates end to end, never whether the paper's "
                     "numbers hold. Cells are therefore not coloured and every claim is inconclusive.")


# ------------------------------------------------------------------------------------ tolerances
@dataclass(frozen=True)
class Tolerance:
    """How far a measured value may lie from the published one and still count as reproduced."""

    value: float
    relative: bool          # True: a fraction of the published value; False: metric units
    source: str             # "row", "table" or "default"

    def band(self, reference: Optional[float]) -> float:
        """The absolute half-width of the band around ``reference`` (metric units)."""
        if not self.relative:
            return self.value
        return self.value * abs(reference) if reference is not None else math.inf

    def describe(self) -> str:
        amount = f"±{self.value * 100:g}%" if self.relative else f"±{self.value:g}"
        return f"{amount} ({self.source})"


#: The global default tolerance of each metric kind: COCO AP in points, the rest relative.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "ap": Tolerance(0.5, relative=False, source="default"),          # 0.5 AP points
    "complexity": Tolerance(0.02, relative=True, source="default"),  # #params, GFLOPs, memory, size: 2%
    "speed": Tolerance(0.02, relative=True, source="default"),       # FPS and times: 2%
}


#: what each kind covers, in words (for the page)
KIND_NAMES = {"ap": "COCO AP (points)", "complexity": "#params, GFLOPs, memory, size", "speed": "FPS and times"}


def metric_kind(metric: str) -> str:
    if metric in AP_METRICS:
        return "ap"
    if metric == "fps" or METRICS[metric].unit == "ms":
        return "speed"
    return "complexity"


def tolerance_for(metric: str, row: Optional[Row], table: Table) -> Tolerance:
    """The row's tolerance for ``metric``, else the table's, else the default of the metric's kind.

    Recipe tolerances are absolute (metric units), as the recipe schema says. ``row=None``: the table's."""
    if row is not None and metric in row.tolerance:
        return Tolerance(row.tolerance[metric], relative=False, source="row")
    if metric in table.tolerance:
        return Tolerance(table.tolerance[metric], relative=False, source="table")
    return DEFAULT_TOLERANCES[metric_kind(metric)]


# ------------------------------------------------------------------------------------ samples
@dataclass(frozen=True)
class Sample:
    """The measured values of one cell, one per seed."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n

    @property
    def sd(self) -> Optional[float]:
        """Sample standard deviation over seeds; None with fewer than two."""
        if self.n < 2:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))


def sample_of(values: Sequence[Optional[float]]) -> Optional[Sample]:
    known = tuple(float(v) for v in values if v is not None and not math.isnan(v))
    return Sample(known) if known else None


# ------------------------------------------------------------------------------------ cells
CELL_RULE = ("A measured cell is within tolerance when |measured − published| ≤ the tolerance: the row's, "
             "else the table's (both absolute, in metric units), else the default of its kind: "
             + "; ".join(f"{KIND_NAMES[kind]} {tol.describe().split(' ')[0]}"
                         for kind, tol in DEFAULT_TOLERANCES.items())
             + ". With several seeds the mean is compared. Smoke-scale cells are not comparable.")


def agreement(published: Optional[float], measured: Optional[Sample], tol: Tolerance,
              comparable: bool) -> Agreement:
    if published is None:
        return Agreement.PUBLISHED_UNKNOWN
    if measured is None:
        return Agreement.NOT_MEASURED
    if not comparable:
        return Agreement.NOT_COMPARABLE
    within = abs(measured.mean - published) <= tol.band(published) + 1e-9
    return Agreement.WITHIN if within else Agreement.OUTSIDE


# ------------------------------------------------------------------------------------ claims
#: standard errors of the difference of means that count as noise when seeds give a spread
NOISE_SIGMAS = 2.0
#: the paired bootstrap (bench/matches.py): resamples, seed, interval
BOOTSTRAP = "paired bootstrap over the evaluation images (1,000 resamples, seed 0, both rows resampled together)"

VERDICT_RULE: tuple[str, ...] = (
    "Paper Δ = published row − published baseline (the claim's stated figure where the table lacks a cell); "
    "measured Δ = measured row − measured baseline (means over seeds), per metric both rows have.",
    f"Interval of the measured Δ: for AP, AP50 and AP75 of two rows evaluated on the same images, the 95% "
    f"percentile interval of a {BOOTSTRAP}, with the seed spread's standard error added in quadrature when both "
    "rows have at least two seeds; MDE (minimum detectable effect) = 2.80 × the bootstrap's standard error. "
    f"Otherwise measured Δ ± noise: {NOISE_SIGMAS:g} × the standard error of the difference of seed means with at "
    "least two seeds on both rows (never below half a unit of the paper's last printed digit), else the metric's "
    "tolerance (as for cells).",
    "held: the interval excludes 0 on the paper's side and does not lie wholly short of the paper's Δ.",
    "held, smaller: the interval excludes 0 on the paper's side but lies wholly short of the paper's Δ.",
    "not reproduced: the interval holds 0 and not the paper's Δ.",
    "reversed: the interval excludes 0 on the opposite side.",
    "inconclusive: the interval holds both 0 and the paper's Δ (too little data: see the MDE), the paper shows no "
    "difference, a cell is unknown or not measured, or the run is at smoke scale (smoke numbers never confirm or "
    "refute a paper claim).",
    "A row's verdict is that of its primary metric (mask AP, else box AP, else its first metric).",
)


def noise_band(row: Sample, base: Sample, tol: Tolerance, reference: Optional[float],
               decimals: int = 1) -> tuple[float, str]:
    """(noise half-width, how it was obtained) for the difference of two measured cells.

    ``decimals``: digits the paper prints; a seed spread never claims more precision than half of its last one."""
    if row.n >= 2 and base.n >= 2:
        se = math.sqrt((row.sd or 0.0) ** 2 / row.n + (base.sd or 0.0) ** 2 / base.n)
        return max(NOISE_SIGMAS * se, 0.5 * 10 ** -decimals), f"{NOISE_SIGMAS:g} SE over {row.n}+{base.n} seeds"
    return tol.band(reference), f"tolerance {tol.describe()}"


def seed_se(row: Sample, base: Sample) -> float:
    """Standard error of the difference of seed means (0 unless both rows have two seeds or more)."""
    if row.n >= 2 and base.n >= 2:
        return math.sqrt((row.sd or 0.0) ** 2 / row.n + (base.sd or 0.0) ** 2 / base.n)
    return 0.0


def claim_verdict(published_delta: Optional[float], measured_delta: Optional[float],
                  interval: Optional[tuple[float, float]], smoke: bool,
                  mde: Optional[float] = None) -> tuple[Verdict, str]:
    """The verdict on one metric of one claim, with the reason in words (``VERDICT_RULE``).

    ``interval``: (low, high) of the measured Δ."""
    if smoke:
        return Verdict.INCONCLUSIVE, "smoke scale: smoke numbers never confirm or refute a paper claim"
    if published_delta is None:
        return Verdict.INCONCLUSIVE, "the paper does not show this cell for both rows"
    if measured_delta is None or interval is None:
        return Verdict.INCONCLUSIVE, "not measured for both rows"
    if published_delta == 0:
        return Verdict.INCONCLUSIVE, "the paper shows no difference: no direction to test"
    lo, hi = interval
    if published_delta < 0:  # judge in the paper's direction
        lo, hi = -hi, -lo
    paper = abs(published_delta)
    if lo > 0:
        if hi < paper:
            return Verdict.HELD_SMALLER, "the paper's direction, but the interval lies wholly short of its Δ"
        return Verdict.HELD, "the paper's direction; the interval excludes 0 and reaches the paper's Δ"
    if hi < 0:
        return Verdict.REVERSED, "the interval excludes 0 on the opposite side"
    if lo <= paper <= hi:
        why = "the interval holds both 0 and the paper's Δ: too little data"
        return Verdict.INCONCLUSIVE, why + (f" (MDE {mde:.2g})" if mde is not None else "")
    return Verdict.NOT_REPRODUCED, "the interval holds 0 and not the paper's Δ"


def primary_metric(metrics: Sequence[str]) -> Optional[str]:
    """The metric whose verdict stands for a claim row: mask AP, else box AP, else the first."""
    for key in ("mask_AP", "box_AP"):
        if key in metrics:
            return key
    return metrics[0] if metrics else None
