"""The report's view of a table: rows in paper order, cells (published / measured / Δ), claims, provenance.

``gather`` reads the results through ``bench.collect`` and keeps, per row, a *list* of done results,
one per seed (``measurement.seed``): today a results folder holds one result per row; further folders
(``extra_roots``: other seeds' runs) add to the list, and every number downstream is a mean with a
spread. ``build_table_view`` turns a recipe table and those results into plain dataclasses that the
HTML templates, plots and exports all read, so they cannot disagree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from bench.collect import RowState, table_states
from bench.recipes import Catalogue, RecipeError, Row, Table
from bench.report import rules
from bench.report.rules import Sample, Tolerance
from bench.vocab import Agreement, Verdict
from bench.results import Result, ResultReadError, read_result, result_path
from bench.vocab import AP_METRICS, RowStatus, RunStatus

RowKey = tuple[str, str]  # (table name, row id)


# ------------------------------------------------------------------------------------ gathering
@dataclass
class Gathered:
    """Row states of the primary results folder, done results per row (one per seed), problems."""

    scale: str
    states: dict[RowKey, RowState]
    results: dict[RowKey, list[Result]]
    problems: list[str] = field(default_factory=list)


def one_per_seed(results: Iterable[Result]) -> list[Result]:
    """Done results grouped by seed: the latest finished one of each seed, ordered by seed."""
    latest: dict[Optional[int], Result] = {}
    for res in results:
        if res.status != str(RunStatus.DONE):
            continue
        seed = res.measurement.seed if res.measurement else None
        kept = latest.get(seed)
        if kept is None or (res.finished_at or "") >= (kept.finished_at or ""):
            latest[seed] = res
    return [latest[s] for s in sorted(latest, key=lambda s: (s is None, s or 0))]


def _extra_results(tables: Sequence[Table], scale: str, root: Path,
                   problems: list[str]) -> dict[RowKey, list[Result]]:
    found: dict[RowKey, list[Result]] = {}
    for table in tables:
        for row in table.rows:
            path = result_path(root, scale, table.name, row.id)
            if not path.exists():
                continue
            try:
                found.setdefault((table.name, row.id), []).append(read_result(path))
            except ResultReadError as e:
                problems.append(str(e))
    return found


def gather(tables: Sequence[Table], scale: str, results_root: Path,
           extra_roots: Sequence[Path] = ()) -> Gathered:
    """Read ``results_root`` (states, live jobs, problems) and the done results of ``extra_roots``."""
    states: dict[RowKey, RowState] = {}
    pooled: dict[RowKey, list[Result]] = {}
    problems: list[str] = []
    for table in tables:
        table_rows, table_problems = table_states(table, scale, Path(results_root))
        problems += table_problems
        for st in table_rows:
            states[(st.table, st.row)] = st
            pooled[(st.table, st.row)] = [st.result] if st.result is not None else []
    for root in extra_roots:
        for key, found in _extra_results(tables, scale, Path(root), problems).items():
            pooled[key] += found
    return Gathered(scale, states, {k: one_per_seed(v) for k, v in pooled.items()}, problems)


# ------------------------------------------------------------------------------------ views
@dataclass
class CellView:
    metric: str
    in_paper: bool                    # the paper's table has this cell for this row (possibly unknown)
    published: Optional[float]
    published_note: Optional[str]
    measured: Optional[Sample]
    measured_note: Optional[str]
    tolerance: Tolerance
    agreement: Agreement
    decimals: int

    @property
    def delta(self) -> Optional[float]:
        if self.published is None or self.measured is None:
            return None
        return self.measured.mean - self.published

    @property
    def delta_pct(self) -> Optional[float]:
        if self.delta is None or not self.published:
            return None
        return 100.0 * self.delta / abs(self.published)

    @property
    def relative(self) -> bool:
        return rules.metric_kind(self.metric) != "ap"


@dataclass
class Provenance:
    scale: str
    dataset: str
    eval_split: str
    iterations: Optional[int]
    epochs: Optional[int]
    batch_size: int
    gpus: int
    device: str
    pretrained: bool
    seeds: list[Optional[int]]
    finished_at: Optional[str]
    git_commit: Optional[str]
    config_hash: str
    work_dir: Optional[str]
    log_path: Optional[Path]
    wall_s: Optional[float]
    speed_protocol: Optional[str]
    resumed_from: Optional[str]      # checkpoint an interrupted training resumed from
    trained_by: Optional[str] = None  # the run whose training this row evaluated (differs only at test time)


@dataclass
class RowView:
    row: Row
    factors: list[str]                 # display text per factor column, in column order
    row_status: str                    # RowStatus value
    run_status: str                    # RunStatus value
    detail: str                        # why a row has no numbers (failure, model missing, ...) or progress
    cells: dict[str, CellView]
    results: list[Result]
    provenance: Optional[Provenance]
    last_log: Optional[str]
    released: Optional[Result] = None  # `bench eval` of a given checkpoint (source: checkpoint), shown apart

    @property
    def released_label(self) -> str:
        """How the page names the checkpoint evaluation's numbers (and the trained ones beside them)."""
        if self.released is None:
            return ""
        zoo = (self.released.checkpoint or {}).get("zoo") or {}
        # "released weights" only for the released file itself (its SHA-256 begins as its zoo name says)
        word = ("checkpoint" if not zoo else "released weights" if zoo.get("sha256_matches") else
                "checkpoint (named as the zoo file, other bytes)" if zoo.get("sha256_matches") is False else
                "released weights (name carries no checksum)")
        limit = self.released.measurement.eval_limit if self.released.measurement else None
        return word + (f" (first {limit} images)" if limit else "")

    def released_value(self, metric: str) -> Optional[float]:
        return self.released.measured.get(metric) if self.released else None

    @property
    def has_numbers(self) -> bool:
        return bool(self.results)

    @property
    def status_label(self) -> str:
        """The row's status word: its run status, or why it cannot run (model missing / reference only)."""
        if self.run_status == str(RunStatus.NOT_RUN) and self.row_status != str(RowStatus.RUNNABLE):
            return self.row_status
        return self.run_status

    @property
    def status_class(self) -> str:
        """The CSS class of the row's status: done / failed / pending / not-run / not-runnable."""
        if self.run_status == str(RunStatus.DONE):
            return "done"
        if self.run_status in (str(RunStatus.FAILED), str(RunStatus.CANCELLED)):
            return "failed"
        if self.run_status != str(RunStatus.NOT_RUN):
            return "pending"
        return "not-run" if self.row_status == str(RowStatus.RUNNABLE) else "not-runnable"


@dataclass
class ClaimMetric:
    metric: str
    published_delta: Optional[float]
    measured_delta: Optional[float]
    noise: Optional[float]              # half-width of the fallback interval (measured Δ ± noise)
    noise_source: str                   # how the interval was obtained, in words
    verdict: Verdict
    reason: str
    decimals: int
    lo: Optional[float] = None          # the measured Δ's interval
    hi: Optional[float] = None
    mde: Optional[float] = None         # minimum detectable effect (paired bootstrap only)
    stated: Optional[float] = None      # the claim's stated figure for this metric, when it states one


@dataclass
class ClaimView:
    row: RowView
    baseline_ref: str
    baseline_label: str
    claim: Optional[str]
    metrics: list[ClaimMetric]
    primary: Optional[str]
    problem: Optional[str] = None      # the baseline could not be found

    @property
    def shared_reason(self) -> Optional[str]:
        """The reason of every metric's verdict when they all share one (printed once)."""
        reasons = {m.reason for m in self.metrics}
        return reasons.pop() if len(reasons) == 1 else None

    @property
    def verdict(self) -> Verdict:
        for m in self.metrics:
            if m.metric == self.primary:
                return m.verdict
        return Verdict.INCONCLUSIVE


@dataclass
class TableView:
    table: Table
    scale: str
    smoke: bool
    rows: list[RowView]
    claims: list[ClaimView]
    problems: list[str]

    @property
    def metric_keys(self) -> list[str]:
        return [c.key for c in self.table.metric_columns]

    @property
    def max_seeds(self) -> int:
        return max((len(r.results) for r in self.rows), default=0)

    def counts(self) -> dict[str, int]:
        """Rows by reproduction status, for the index page."""
        out = {k: 0 for k in ("done", "failed", "pending", "not-run", "not-runnable")}
        for r in self.rows:
            out[r.status_class] += 1
        return out

    def verdict_counts(self) -> dict[str, int]:
        out = {str(v): 0 for v in Verdict}
        for c in self.claims:
            out[str(c.verdict)] += 1
        return out


# ------------------------------------------------------------------------------------ building
def factor_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "✓" if value else ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _decimals_of(value: float) -> int:
    text = repr(float(value))
    return 0 if text.endswith(".0") else len(text.split(".")[1]) if "." in text else 0


def column_decimals(table: Table, metric: str) -> int:
    """Digits after the point for measured values: as many as the paper prints (at most 3)."""
    printed = [_decimals_of(r.published[metric]) for r in table.rows if r.published.get(metric) is not None]
    default = 1 if metric in AP_METRICS else 2
    return min(max(printed, default=default), 3)


def _sample(results: Sequence[Result], metric: str) -> Optional[Sample]:
    return rules.sample_of([r.measured.get(metric) for r in results])


def _cell(table: Table, row: Row, metric: str, results: Sequence[Result], comparable: bool) -> CellView:
    tol = rules.tolerance_for(metric, row, table)
    published = row.published.get(metric)
    measured = _sample(results, metric)
    notes = [r.measured_notes[metric] for r in results if metric in r.measured_notes]
    return CellView(metric=metric, in_paper=metric in row.published, published=published,
                    published_note=row.published_notes.get(metric), measured=measured,
                    measured_note=notes[0] if notes else None, tolerance=tol,
                    agreement=rules.agreement(published, measured, tol, comparable),
                    decimals=column_decimals(table, metric))


def latest_log(work_dir: Optional[str]) -> Optional[Path]:
    """The run's newest training log (``work_dir/train/*/*.log``), if it is still there."""
    if not work_dir or not Path(work_dir).is_dir():
        return None
    logs = sorted(Path(work_dir).glob("train/*/*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1] if logs else None


def provenance(results: Sequence[Result]) -> Optional[Provenance]:
    """Where the numbers come from; the latest result speaks for the run, seeds are listed."""
    if not results:
        return None
    res = max(results, key=lambda r: r.finished_at or "")
    m = res.measurement
    if m is None:
        return None
    return Provenance(scale=m.scale, dataset=m.dataset, eval_split=m.eval_split, iterations=m.iterations,
                      epochs=m.epochs, batch_size=m.batch_size, gpus=m.gpus, device=m.device,
                      pretrained=m.pretrained, seeds=[r.measurement.seed if r.measurement else None for r in results],
                      finished_at=res.finished_at, git_commit=res.git_commit, config_hash=res.config_hash,
                      work_dir=res.work_dir, log_path=latest_log(res.work_dir), wall_s=res.wall_s,
                      speed_protocol=m.speed_protocol, resumed_from=getattr(m, "resumed_from", None),
                      trained_by=getattr(m, "trained_by", None))


def status_detail(state: RowState) -> str:
    """Why a row has no numbers (or how far it got), in words."""
    res = state.result
    if state.run_status in (str(RunStatus.FAILED), str(RunStatus.CANCELLED)):
        why = (res.failure if res and res.failure else None) or state.progress or state.reason
        return why or "no reason recorded"
    if state.run_status == str(RunStatus.NOT_RUN):
        return state.reason if state.row_status != str(RowStatus.RUNNABLE) else ""
    if state.run_status != str(RunStatus.DONE):
        return state.progress or ""
    return ""


def _last_log(state: RowState, results: Sequence[Result]) -> Optional[str]:
    if state.last_log:
        return state.last_log
    tails = [r.log_tail[-1] for r in results if r.log_tail]
    return tails[-1] if tails else None


def build_row(table: Table, row: Row, state: RowState, results: Sequence[Result], scale: str) -> RowView:
    comparable = scale != "smoke" and all(r.measurement is None or r.measurement.scale != "smoke" for r in results)
    cells = {key: _cell(table, row, key, results, comparable) for key in (c.key for c in table.metric_columns)}
    return RowView(row=row, factors=[factor_text(row.factors.get(c.key)) for c in table.factor_columns],
                   row_status=state.row_status, run_status=state.run_status, detail=status_detail(state),
                   cells=cells, results=list(results), provenance=provenance(results),
                   last_log=_last_log(state, results), released=getattr(state, "checkpoint", None))


# ------------------------------------------------------------------------------------ claims
@dataclass
class BaselineRef:
    table: Table
    row: Row
    results: list[Result]


def _bootstrap(row_results: Sequence[Result], base_results: Sequence[Result], metric: str):
    """The paired bootstrap of the metric's Δ from the rows' per-image matches, or (None, why not)."""
    from bench import matches as M

    prefix, _, suffix = metric.partition("_")
    iou_type = {v: k for k, v in M.IOU_TYPE_PREFIX.items()}.get(prefix)
    if iou_type is None or suffix not in M.SUFFIX_IOU:
        return None, "no per-image bootstrap for this metric"
    groups = []
    for results in (row_results, base_results):
        got = []
        for r in results:
            if not r.matches or r.path is None or iou_type not in (r.matches.get("iou_types") or []):
                return None, "no per-image matches kept for both rows"
            got.append((M.matches_path(r.path), str(r.matches.get("sha256"))))
        groups.append(got)
    try:
        return cached_bootstrap(groups[0], groups[1], iou_type, suffix), ""
    except (M.MatchesError, M.NotPaired) as e:
        return None, str(e)


def cached_bootstrap(row: list[tuple[Path, str]], base: list[tuple[Path, str]], iou_type: str, suffix: str):
    """``matches.paired_bootstraps`` of the files (every AP suffix at once), cached by their hashes in
    ``$BENCH_CACHE/bootstrap``."""
    import hashlib
    import json

    from bench import matches as M
    from bench.results import atomic_write_json, read_json_dict

    for path, recorded in (*row, *base):  # the files must still be the ones their results record
        try:
            actual = hashlib.sha256(path.read_bytes()).hexdigest() if path.stat().st_size <= M.MAX_FILE_BYTES else ""
        except OSError as e:
            raise M.MatchesError(f"{path}: {e.strerror or e}") from None
        if actual != recorded:
            raise M.MatchesError(f"{path}: its SHA-256 is not the one its result file records")
    key = hashlib.sha256(json.dumps([[h for _, h in row], [h for _, h in base], iou_type, M.RESAMPLES,
                                     M.SEED, 2]).encode()).hexdigest()[:32]
    from bench.diskcache import cache_dir

    cache = cache_dir() / "bootstrap" / f"{key}.json"
    hit = read_json_dict(cache)
    if suffix in hit:
        try:
            return M.PairedBootstrap(**hit[suffix])
        except TypeError:
            pass
    load = lambda files: [M.load(p, h)[iou_type] for p, h in files]  # noqa: E731
    found = M.paired_bootstraps(load(row), load(base))  # AP, AP50 and AP75 from one pass
    try:
        atomic_write_json(cache, {k: pb.__dict__ for k, pb in found.items()}, durable=False)
    except OSError:
        pass
    return found[suffix]


def _claim_metric(table: Table, row: RowView, base: BaselineRef, metric: str, smoke: bool) -> ClaimMetric:
    pub_row, pub_base = row.row.published.get(metric), base.row.published.get(metric)
    published_delta = round(pub_row - pub_base, 9) if pub_row is not None and pub_base is not None else None
    stated = next((c.delta for c in row.row.stated_claims if c.metric == metric and not c.relative
                   and c.vs in (None, row.row.baseline)), None)
    if published_delta is None and stated is not None:
        published_delta = stated
    meas_row, meas_base = _sample(row.results, metric), _sample(base.results, metric)
    decimals = column_decimals(table, metric)
    measured_delta, noise, noise_source, lo, hi, mde = None, None, "", None, None, None
    if meas_row is not None and meas_base is not None and smoke:
        # no interval: a smoke-scale difference says nothing about the paper's, however narrow
        measured_delta, noise_source = meas_row.mean - meas_base.mean, "smoke scale: no interval"
    elif meas_row is not None and meas_base is not None:
        measured_delta = meas_row.mean - meas_base.mean
        pb, why_not = _bootstrap(row.results, base.results, metric)
        if pb is not None:
            pb = pb.widened(rules.seed_se(meas_row, meas_base))
            measured_delta, lo, hi, mde = pb.delta, pb.lo, pb.hi, pb.mde
            noise_source = (f"paired bootstrap over {pb.images} images ({pb.resamples} resamples)"
                            + (f" + seed spread ({meas_row.n}+{meas_base.n} seeds)"
                               if rules.seed_se(meas_row, meas_base) else ""))
        else:
            reference = pub_row if pub_row is not None else meas_row.mean
            noise, noise_source = rules.noise_band(meas_row, meas_base, rules.tolerance_for(metric, row.row, table),
                                                   reference, decimals)
            lo, hi = measured_delta - noise, measured_delta + noise
            if why_not:
                noise_source += f" ({why_not})"
    interval = (lo, hi) if lo is not None else None
    verdict, reason = rules.claim_verdict(published_delta, measured_delta, interval, smoke, mde)
    return ClaimMetric(metric, published_delta, measured_delta, noise, noise_source, verdict, reason, decimals,
                       lo, hi, mde, stated)


def claim_metrics_of(row: Row, base: Row, table: Table) -> list[str]:
    """The metrics a claim compares: the table's metric columns published for both rows (or, when the
    paper shows no cell of the pair, every table metric column both rows carry)."""
    keys = [c.key for c in table.metric_columns if c.key in row.published and c.key in base.published]
    return keys or [c.key for c in table.metric_columns if c.key in row.published]


def build_claim(table: Table, row: RowView, base: Optional[BaselineRef], smoke: bool,
                problem: Optional[str]) -> ClaimView:
    ref = row.row.baseline or ""
    if base is None:
        return ClaimView(row, ref, ref, row.row.claim_text, [], None, problem or f"baseline {ref!r} not found")
    keys = claim_metrics_of(row.row, base.row, table)
    metrics = [_claim_metric(table, row, base, k, smoke) for k in keys]
    label = base.row.label if base.table.name == table.name else f"{base.table.name}: {base.row.label}"
    return ClaimView(row, ref, label, row.row.claim_text, metrics, rules.primary_metric(keys))


def resolve_baseline(catalogue: Optional[Catalogue], table: Table, ref: str,
                     gathered: Gathered) -> tuple[Optional[BaselineRef], Optional[str]]:
    try:
        base_table, base_row = catalogue.find_row(ref, table) if catalogue else (table, table.row(ref))
    except RecipeError as e:
        return None, str(e)
    return BaselineRef(base_table, base_row, gathered.results.get((base_table.name, base_row.id), [])), None


def baseline_tables(tables: Sequence[Table], catalogue: Catalogue) -> list[Table]:
    """Tables outside ``tables`` that hold a baseline row of theirs ('paper/table/row' references)."""
    names = {t.name for t in tables}
    extra: dict[str, Table] = {}
    for t in tables:
        for r in t.rows:
            if r.baseline and "/" in r.baseline:
                try:
                    other, _ = catalogue.find_row(r.baseline, t)
                except RecipeError:
                    continue  # shown on the page as the claim's problem
                if other.name not in names:
                    extra[other.name] = other
    return list(extra.values())


def build_table_view(table: Table, gathered: Gathered, catalogue: Optional[Catalogue] = None) -> TableView:
    smoke = gathered.scale == "smoke"
    rows = [build_row(table, r, gathered.states[(table.name, r.id)], gathered.results.get((table.name, r.id), []),
                      gathered.scale) for r in table.rows]
    claims = []
    for rv in rows:
        if rv.row.baseline:
            base, problem = resolve_baseline(catalogue, table, rv.row.baseline, gathered)
            claims.append(build_claim(table, rv, base, smoke or _any_smoke(rv, base), problem))
    problems = [p for p in gathered.problems if f"/{table.name}/" in p.replace("\\", "/")]
    return TableView(table=table, scale=gathered.scale, smoke=smoke, rows=rows, claims=claims, problems=problems)


def _any_smoke(row: RowView, base: Optional[BaselineRef]) -> bool:
    results = row.results + (base.results if base else [])
    return any(r.measurement is not None and r.measurement.scale == "smoke" for r in results)
