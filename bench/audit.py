"""The audit: what can be checked about a paper without training anything.

1. **Architecture cells**: #params and GFLOPs are properties of the model, not of its training, so
   they are comparable at any scale. Each row's paper-scale model is built on the CPU exactly as
   ``bench profile`` builds it (the paper's classes and stated test size) and set against the
   published cell with an agreement word from the printed precision (:func:`agreement`).
2. **Internal consistency** of the published numbers alone: a model printed in two tables with
   different numbers, two rows printed identically although their models differ, and a figure the
   text states ("boosts by 0.8 AP", a recipe ``claim`` with a ``delta``) against the table's cells.
3. **The model zoo**: rows that are mmdetection zoo models as shipped, their published AP against
   the AP mmdet's metafile records for the released weights (``bench.zoo``).

Profiles are cached on disk by what they depend on (the row's resolved model config, its input-size
statements, bench's model code, the library versions), so a second audit only builds what changed.
"""
from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from bench.recipes import Catalogue, Row, Table

AUDIT_METRICS = ("params_M", "gflops")
_CACHE_VERSION = 1

#: the rule, printed with the audit
PRECISION_RULE = (
    "A published number stands for the interval its printed digits allow: 38.2 for [38.15, 38.25), a count the "
    "paper truncates (37.9 M for 37.9x) for [37.9, 38.0). 'exact': the measured value lies inside that interval; "
    "'within': outside it but inside the row's tolerance (default 2% for #params and GFLOPs); 'outside': "
    "neither. #params and GFLOPs are measured on the paper's configuration, so they are comparable at any scale.")


def decimals(value: float, printed: Optional[int] = None) -> int:
    """Decimals a published number was printed with: given by the recipe, else read off the number."""
    if printed is not None:
        return printed
    text = repr(float(value))
    if "e" in text or "E" in text:
        return 0
    return len(text.split(".")[1]) if "." in text else 0   # 30.0: printed "30.0", one decimal


def printed_interval(value: float, places: int, truncated: bool = False) -> tuple[float, float]:
    step = 10.0 ** -places
    return (value, value + step) if truncated else (value - step / 2, value + step / 2)


def agreement(published: Optional[float], measured: Optional[float], places: int, truncated: bool,
              tolerance: float, relative: bool = True) -> str:
    """'exact', 'within', 'outside', 'published unknown' or 'not measured' (see PRECISION_RULE)."""
    if published is None:
        return "published unknown"
    if measured is None or not math.isfinite(measured):
        return "not measured"
    lo, hi = printed_interval(published, places, truncated)
    eps = 1e-9 * max(1.0, abs(published))
    if lo - eps <= measured < hi + eps:
        return "exact"
    band = tolerance * abs(published) if relative else tolerance
    return "within" if abs(measured - published) <= band else "outside"


@dataclass
class AuditCell:
    table: str
    row: str
    position: int
    label: str
    metric: str
    published: Optional[float]
    measured: Optional[float]
    agreement: str
    interval: Optional[list[float]] = None
    rel_diff: Optional[float] = None
    note: str = ""


@dataclass
class Consistency:
    kind: str          # "repeated model, other numbers" | "same numbers, other models"
    rows: list[str]
    detail: str


@dataclass
class ClaimCheck:
    """A figure the paper's text states about a row, against the difference of the table's own cells."""

    table: str
    row: str
    vs: str
    metric: str
    stated: float
    relative: bool
    approximate: bool
    cells: Optional[list[Optional[float]]]    # [this row, the compared row] as printed
    cells_delta: Optional[float]              # what the printed cells give (row - vs, or % of vs)
    cells_range: Optional[list[float]]        # the Δ the printed precision allows
    agreement: str                            # consistent | inconsistent | cannot check
    text: str
    note: str = ""


#: the rule of the claim check, printed with it
CLAIM_RULE = (
    "A claim's stated figure (\"boosts by 0.8 AP\") is checked against the table's own cells: the cells' difference "
    "(this row − the compared row; in % of the compared row when the text says %) may lie anywhere their printed "
    "precision allows (34.9 − 34.1 with one decimal: [0.7, 0.9]); the stated figure stands for its own printed "
    "interval (0.8: [0.75, 0.85]; a hedged 'about 0.8': ±50%). 'consistent': the two overlap; 'inconsistent': they do "
    "not; 'cannot check': a cell is missing or unknown.")


@dataclass
class Audit:
    cells: list[AuditCell] = field(default_factory=list)
    consistency: list[Consistency] = field(default_factory=list)
    claims: list[ClaimCheck] = field(default_factory=list)
    zoo: list[dict] = field(default_factory=list)   # published AP of mmdet-zoo rows against the zoo's metafile
    profiled: int = 0      # rows built this time (the rest came from the cache)
    cached: int = 0


# ----------------------------------------------------------------------------------------- cache
def _cache_dir() -> Path:
    from bench.resolve import cache_dir

    return cache_dir() / "profiles"


def _row_key(row: Row, flops: bool) -> Optional[str]:
    from bench.plan import code_version
    from bench.resolve import canonical_hash, resolved_dict

    if row.model is None:
        return None
    cfg = resolved_dict(row.model)
    return canonical_hash({"v": _CACHE_VERSION, "config": cfg, "module_input": row.model.input_size,
                           "train_input": row.train.input_size, "flops": flops, "code": code_version(cfg)}, 20)


def cached_profiles(table: Table, flops: bool = True) -> list:
    """``bench.profile.profile_table``, from the audit's profile cache where the rows were built before
    (keyed by each row's resolved model, input sizes, bench's model code and the library versions)."""
    from bench.profile import Profile, _rel

    fields = set(Profile.__dataclass_fields__)
    rows = {r.id: r for r in table.rows}
    out = []
    for d in _cached_profiles(table, flops)[0]:
        p = Profile(**{k: v for k, v in d.items() if k in fields})
        row = rows[p.row]  # published cells from the recipe as it is now, never from the cache
        p.published_params_M, p.published_gflops = row.published.get("params_M"), row.published.get("gflops")
        p.params_rel_diff, p.gflops_rel_diff = _rel(p.params_M, p.published_params_M), _rel(p.gflops, p.published_gflops)
        if not flops:
            p.gflops = p.gflops_rel_diff = p.deform_gflops = None
        out.append(p)
    return out


def _cached_profiles(table: Table, flops: bool, build: bool = True) -> tuple[list[dict], int, int]:
    """Every row's profile (bench.profile) as a dict, from the cache where possible; with ``build``
    False nothing is built (rows not in the cache have no measurement)."""
    from bench.profile import Profile, profile_table
    from bench.rowstatus import safe_row_status
    from bench.vocab import RowStatus

    keys: dict[str, Optional[str]] = {}
    hits: dict[str, dict] = {}
    for row in table.rows:
        if safe_row_status(row)[0] is not RowStatus.RUNNABLE:
            keys[row.id] = None
            continue
        try:
            keys[row.id] = _row_key(row, flops)
        except Exception:  # noqa: BLE001 - profile_table reports why the row does not build
            keys[row.id] = None
        # a profile with FLOPs also answers a request without them
        for key in ([keys[row.id]] + ([_row_key(row, True)] if not flops and keys[row.id] else [])):
            path = _cache_dir() / f"{key}.json" if key else None
            if path is not None and path.exists():
                try:
                    hits[row.id] = json.loads(path.read_text())
                    break
                except (OSError, ValueError):
                    pass
    runnable = [r.id for r in table.rows if keys[r.id]]
    if not build or all(rid in hits for rid in runnable):
        out = []
        for row in table.rows:
            if row.id in hits:
                out.append(hits[row.id] | {"table": table.name, "position": row.position, "row": row.id,
                                           "label": row.label})
            else:
                st, reason = safe_row_status(row)
                out.append(asdict(Profile(table.name, row.position, row.id, row.label, str(st), note=reason)))
        return out, 0, len(hits)
    fresh = [asdict(p) for p in profile_table(table, flops=flops)]
    d = _cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    for p in fresh:
        key = keys.get(p["row"])
        if key and p.get("params_M") is not None:
            tmp = d / f".{key}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(p))
            os.replace(tmp, d / f"{key}.json")
    return fresh, len(runnable), 0


# ----------------------------------------------------------------------------------------- audit
@functools.lru_cache(maxsize=4)
def _published_elsewhere(root: str) -> dict[str, dict[str, tuple[str, float, Table]]]:
    """model hash -> metric -> (table/row, published value, its table), over the whole catalogue: the
    architecture cells a model has in any table (csr-d2s Table II's full model is Table III's 256 row)."""
    from bench.resolve import model_hash

    out: dict[str, dict[str, tuple[str, float, Table]]] = {}
    for t in Catalogue(Path(root)).tables():
        for r in t.rows:
            if not any(r.published.get(metric) is not None for metric in AUDIT_METRICS):
                continue   # no cell to lend: its model is not hashed (a resolved config costs ~3 ms)
            try:
                h = model_hash(r)
            except Exception:  # noqa: BLE001
                continue
            for metric in AUDIT_METRICS:
                if h and r.published.get(metric) is not None:
                    out.setdefault(h, {}).setdefault(metric, (f"{t.name}/{r.id}", r.published[metric], t))
    return out


def audit_table(table: Table, flops: bool = True, build: bool = True,
                catalogue: Optional[Catalogue] = None) -> Audit:
    """The table's architecture cells. ``build`` False (the HTML report): only what ``bench audit``
    already measured and cached; the other cells say 'not measured'. With ``catalogue``, a row whose
    table prints no #params / GFLOPs cell is audited against the cell another table prints for the
    same model."""
    from bench.resolve import model_hash
    from bench.report.rules import tolerance_for

    elsewhere = _published_elsewhere(str(catalogue.root)) if catalogue is not None else {}
    borrowed: dict[tuple[str, str], tuple[str, float, Table]] = {}
    for row in table.rows:
        for metric in AUDIT_METRICS:
            if metric in row.published or row.model is None:
                continue
            try:
                hit = elsewhere.get(model_hash(row) or "", {}).get(metric)
            except Exception:  # noqa: BLE001
                hit = None
            if hit and not hit[0].startswith(f"{table.name}/"):
                borrowed[(row.id, metric)] = hit
    flops = flops and (any("gflops" in r.published for r in table.rows) or any(m == "gflops" for _, m in borrowed))
    profiles, built, cached = _cached_profiles(table, flops, build)
    by_row = {p["row"]: p for p in profiles}
    audit = Audit(profiled=built, cached=cached)
    for row in table.rows:
        prof = by_row.get(row.id, {})
        for metric in AUDIT_METRICS:
            src_table, origin = table, ""
            if metric in row.published:
                pub = row.published[metric]
            elif (row.id, metric) in borrowed:
                origin, pub, src_table = borrowed[(row.id, metric)]
            else:
                continue
            meas = prof.get(metric)
            places = decimals(pub, src_table.precision.get(metric)) if pub is not None else 0
            trunc = metric in src_table.truncated
            tol = tolerance_for(metric, row if not origin else None, src_table)
            word = agreement(pub, meas, places, trunc, tol.value, tol.relative)
            note = prof.get("note") or ""
            if prof.get("status") not in (None, "runnable"):
                word = f"{prof['status']}"   # reference only / model missing / refused: nothing to measure
            if origin:
                note = f"published in {origin} (the same model)" + (f"; {note}" if note else "")
            if metric == "gflops" and prof.get("input_hw"):
                note = (f"at {prof['input_hw'][0]}x{prof['input_hw'][1]} ({prof.get('input_source', '')})"
                        + (f"; {note}" if note else ""))
            audit.cells.append(AuditCell(
                table.name, row.id, row.position, row.label, metric, pub,
                round(meas, 4) if isinstance(meas, float) else meas, word,
                [round(x, places + 2) for x in printed_interval(pub, places, trunc)] if pub is not None else None,
                (meas - pub) / pub if pub and meas is not None else None, note))
    return audit


def _same_printed(ta: Table, a: float, tb: Table, b: float, metric: str) -> bool:
    """Two printed numbers can stand for the same value: their printed intervals overlap (77.23 and 77.2)."""
    la, ha = printed_interval(a, decimals(a, ta.precision.get(metric)), metric in ta.truncated)
    lb, hb = printed_interval(b, decimals(b, tb.precision.get(metric)), metric in tb.truncated)
    return la < hb and lb < ha


def consistency(tables: list[Table]) -> list[Consistency]:
    """Published numbers checked against each other, no model built."""
    from bench.resolve import model_hash

    out: list[Consistency] = []
    by_model: dict[str, list[tuple[Table, Row]]] = {}
    for t in tables:
        for r in t.rows:
            try:
                h = model_hash(r)
            except Exception:  # noqa: BLE001 - a row that does not resolve has no model to compare
                h = None
            if h:
                by_model.setdefault(h, []).append((t, r))
    for group in by_model.values():
        for i, (ta, ra) in enumerate(group):
            for tb, rb in group[i + 1:]:
                same_split = ra.train.eval_split == rb.train.eval_split
                diff = {k: (ra.published[k], rb.published[k]) for k in set(ra.published) & set(rb.published)
                        if ra.published[k] is not None and rb.published[k] is not None
                        and not _same_printed(ta, ra.published[k], tb, rb.published[k], k)}
                if diff and same_split:
                    out.append(Consistency("repeated model, other numbers", [f"{ta.name}/{ra.id}", f"{tb.name}/{rb.id}"],
                                           "; ".join(f"{k}: {a:g} vs {b:g}" for k, (a, b) in sorted(diff.items()))))
    for t in tables:
        seen: dict[tuple, Row] = {}
        for r in t.rows:
            cells = tuple(sorted((k, v) for k, v in r.published.items() if v is not None))
            if len(cells) < 2:
                continue
            if cells in seen:
                a = seen[cells]
                try:
                    differ = model_hash(a) != model_hash(r)
                except Exception:  # noqa: BLE001
                    differ = True
                if differ and a.model is not None and r.model is not None:
                    out.append(Consistency("same numbers, other models", [f"{t.name}/{a.id}", f"{t.name}/{r.id}"],
                                           f"{len(cells)} published cells identical"))
            else:
                seen[cells] = r
    return out


def _cell_interval(t: Table, value: float, metric: str) -> tuple[float, float]:
    return printed_interval(value, decimals(value, t.precision.get(metric)), metric in t.truncated)


def claim_checks(tables: list[Table], catalogue: Optional[Catalogue] = None) -> list[ClaimCheck]:
    """Every stated claim figure against its table's cells (``CLAIM_RULE``); nothing is built."""
    from bench.recipes import RecipeError

    out: list[ClaimCheck] = []
    for t in tables:
        for r in t.rows:
            for c in r.stated_claims:
                ref = c.vs or r.baseline or ""
                check = ClaimCheck(t.name, r.id, ref, c.metric, c.delta, c.relative, c.approximate, None, None, None,
                                   "cannot check", c.text)
                out.append(check)
                try:
                    ot, other = catalogue.find_row(ref, t) if catalogue else (t, t.row(ref))
                except (RecipeError, KeyError, ValueError) as e:
                    check.note = f"compared row {ref!r} not found: {e}"
                    continue
                a, b = r.published.get(c.metric), other.published.get(c.metric)
                check.cells = [a, b]
                if a is None or b is None:
                    check.note = "the table does not print both cells"
                    continue
                (alo, ahi), (blo, bhi) = _cell_interval(t, a, c.metric), _cell_interval(ot, b, c.metric)
                if c.relative:
                    if not b or blo <= 0 <= bhi:
                        check.note = "the compared cell is 0: no percentage"
                        continue
                    corners = [100 * (x - y) / y for x in (alo, ahi) for y in (blo, bhi)]
                    check.cells_delta = round(100 * (a - b) / b, 6)
                else:
                    corners = [alo - bhi, ahi - blo]
                    check.cells_delta = round(a - b, 9)
                lo, hi = min(corners), max(corners)
                check.cells_range = [round(lo, 6), round(hi, 6)]
                half = 0.5 * 10.0 ** -decimals(c.delta)
                if c.approximate:
                    half = max(half, 0.5 * abs(c.delta))
                ok = c.delta - half <= hi + 1e-9 and lo - 1e-9 <= c.delta + half
                check.agreement = "consistent" if ok else "inconsistent"
    return out


#: the rule of the model-zoo check, printed with it
ZOO_RULE = ("A row that is an mmdetection model-zoo model as shipped (its zoo config, nothing in `model` overridden, the "
            "zoo's schedule) has its published box / mask AP set beside the AP the zoo's metafile records for the "
            "released weights (COCO val2017): 'agrees' within half of the last printed digit, else 'differs'; a row "
            "the paper evaluates on another split (test-dev) is compared all the same and says so.")


def zoo_checks(tables: list[Table]) -> list[dict]:
    """``bench.zoo.metafile_crosscheck`` of every table, with an agreement word and the split caveat."""
    from bench.zoo import metafile_crosscheck

    out = []
    for t in tables:
        try:
            found = metafile_crosscheck(t)
        except Exception:  # noqa: BLE001 - an unreadable metafile leaves the audit without this check
            continue
        splits = {r.id: r.train.eval_split for r in t.rows}
        for f in found:
            split = splits.get(f["row"]) or "val2017"
            word = "no zoo number" if f["agree"] is None else ("agrees" if f["agree"] else "differs")
            note = "" if split in ("val2017", "minival") else f"the paper evaluates on {split}, the zoo on val2017"
            out.append(dict(f, agreement=word, eval_split=split, note=note))
    return out


def audit(tables: list[Table], flops: bool = True, catalogue: Optional[Catalogue] = None) -> Audit:
    result = Audit()
    for t in tables:
        a = audit_table(t, flops, catalogue=catalogue)
        result.cells += a.cells
        result.profiled += a.profiled
        result.cached += a.cached
    result.consistency = consistency(tables)
    result.claims = claim_checks(tables, catalogue)
    result.zoo = zoo_checks(tables)
    for c in result.claims:
        if c.agreement == "inconsistent":
            unit = "%" if c.relative else ""
            result.consistency.append(Consistency(
                "claim disagrees with its table", [f"{c.table}/{c.row}", c.vs if "/" in c.vs else f"{c.table}/{c.vs}"],
                f"the text states {c.stated:+g}{unit} {c.metric}; the cells {c.cells[0]:g} and {c.cells[1]:g} give "
                f"{c.cells_delta:+.3g}{unit} (printed precision allows [{c.cells_range[0]:+.3g}, {c.cells_range[1]:+.3g}])"))
    return result


def as_json(a: Audit) -> dict[str, Any]:
    return {"rule": PRECISION_RULE, "claim_rule": CLAIM_RULE, "zoo_rule": ZOO_RULE, "cells": [asdict(c) for c in a.cells],
            "consistency": [asdict(c) for c in a.consistency], "claims": [asdict(c) for c in a.claims],
            "zoo": a.zoo,
            "profiled": a.profiled, "cached": a.cached}
