"""The COCO evaluators bench knows, and the cross-check that decides which of them a job may use.

pycocotools' ``COCOeval`` is the reference: the papers report its numbers, and mmdet's ``CocoMetric``
calls it. Two other evaluators re-implement it: hotcoco (Rust) and faster-coco-eval (C++). Each is
run here on the same inputs mmdet's CocoMetric builds (a pycocotools ``COCO`` of the ground truth, a
``loadRes`` of the predictions, the metric's params) and gives

- the 12 summary stats of ``COCOeval.summarize()``, and
- the per-image matches bench.matches keeps for the paired bootstrap of claims (``Matches``), when the
  evaluator exposes them: hotcoco gives pycocotools-shaped ``evalImgs`` (a list of the non-empty
  entries, keyed by image, category and area range, rather than the full K x A x I grid: they are laid
  out on that grid again here and read by ``bench.matches.from_cocoeval``); faster-coco-eval keeps its
  per-image evaluation inside C++ (``_evalImgs_cpp``, unreadable from Python; its ``eval['matched']``
  is one IoU threshold's pairs), so it gives no matches and is refused for jobs, its stats still
  cross-checked.

``cross_check(name)`` evaluates a small fixed set (bench's synthetic validation images with jittered
predictions: category swaps, false positives, tied scores, a crowd region, an image with more
detections than maxDets, one with none) with the candidate and with pycocotools, bbox and segm, under
mmdet's params (maxDets 100/300/1000) and pycocotools' defaults (1/10/100). The candidate is verified
only if all 12 stats agree to 1e-9 and its matches are identical to pycocotools' (every array equal,
hence the same AP from ``ap_from_matches``); otherwise it is refused with the first difference. The
verdict is cached per (evaluator, version, pycocotools version, check version, the source of this module
and bench.matches) as JSON under ``$BENCH_CACHE/evaluators/``.

``resolve(choice)`` turns ``--evaluator`` into the evaluator a job uses (``auto``: the fastest verified
one on the cross-check's own timing, pycocotools when none is), and ``use(name)`` makes mmdet's
CocoMetric evaluate with it inside a job (it swaps the ``COCOeval`` class CocoMetric calls). Only
numpy is imported at module level.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile
import time
import warnings
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

REFERENCE = "pycocotools"
KNOWN = ("pycocotools", "faster-coco-eval", "hotcoco")
CHOICES = (*KNOWN, "auto")
#: tolerance on each of the 12 stats (fractions, as COCOeval gives them)
STATS_TOL = 1e-9
#: bumped whenever the fixed set or the comparison changes: cached verdicts of an older check are ignored
CHECK_VERSION = 1
#: the distribution (pip name) whose version names an evaluator
DISTRIBUTION = {"pycocotools": "pycocotools", "faster-coco-eval": "faster-coco-eval", "hotcoco": "hotcoco"}


class EvaluatorError(ValueError):
    """An evaluator that is unknown, not installed, or refused (the message says which and why)."""


def cache_root() -> Path:
    env = os.environ.get("BENCH_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bench"
    return base / "evaluators"


def version(name: str) -> Optional[str]:
    """The installed version of an evaluator, or None when it is not installed."""
    import importlib.metadata as md
    import importlib.util

    if name not in DISTRIBUTION:
        raise EvaluatorError(f"unknown evaluator {name!r} (known: {', '.join(KNOWN)})")
    module = {"pycocotools": "pycocotools", "faster-coco-eval": "faster_coco_eval", "hotcoco": "hotcoco"}[name]
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return md.version(DISTRIBUTION[name])
    except md.PackageNotFoundError:
        return None


def installed() -> list[str]:
    return [n for n in KNOWN if version(n) is not None]


# ------------------------------------------------------------------------------------ evaluation
@dataclass
class Evaluation:
    """One COCO evaluation: the 12 summary stats, the per-image matches (None: not exposed), what
    ``COCOeval.eval`` holds (precision/recall arrays, for CocoMetric's classwise table) and the wall
    seconds of evaluate + accumulate + summarize + matches."""

    stats: np.ndarray
    matches: object  # Optional[bench.matches.Matches]
    eval: dict
    seconds: float
    native_stats: Optional[np.ndarray] = None   # the evaluator's own summarize(), when it is not pycocotools'


def _params_copy(params):
    p = copy.deepcopy(params)
    p.imgIds = [int(i) for i in np.unique(p.imgIds)]
    if p.useCats:
        p.catIds = [int(c) for c in np.unique(p.catIds)]
    p.maxDets = sorted(int(m) for m in p.maxDets)
    return p


def quiet():
    """Silence an evaluator's prints and warnings (a context manager)."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def _run_pycocotools(gt, dt, iou_type: str, params, want_matches: bool = True) -> Evaluation:
    from pycocotools.cocoeval import COCOeval

    from bench.matches import from_cocoeval

    t = time.perf_counter()
    with quiet():
        ev = COCOeval(gt, dt, iou_type)
        ev.params = _params_copy(params)
        ev.evaluate()
        m = from_cocoeval(ev) if want_matches else None
        ev.accumulate()
        ev.summarize()
    return Evaluation(np.asarray(ev.stats, np.float64), m, ev.eval, time.perf_counter() - t)


def summary(eval_: dict, params) -> np.ndarray:
    """The 12 stats by pycocotools' own ``summarize()`` over accumulated ``precision``/``recall``
    arrays (any evaluator's, in COCOeval's layout). pycocotools takes AP at maxDets 100 (the index of
    100 in ``params.maxDets``) and AR at each maxDets; hotcoco's and faster-coco-eval's own
    summaries take AP at the largest maxDets, which differs under mmdet's 100/300/1000 whenever an
    image has more than 100 detections of one category (measured on the fixed set: AP 0.18011 vs
    0.18106)."""
    from pycocotools.cocoeval import COCOeval

    with quiet():
        shell = COCOeval(iouType=params.iouType)
        shell.params = params
        shell.eval = {"precision": np.asarray(eval_["precision"], np.float64),
                      "recall": np.asarray(eval_["recall"], np.float64)}
        shell.summarize()
    return np.asarray(shell.stats, np.float64)


def _dt_dataset(gt, dt) -> dict:
    """The detections as pycocotools' ``loadRes`` made them (areas, boxes, ids computed there), as a
    dataset another evaluator loads unchanged; annotation dicts copied (evaluators add keys)."""
    return {"images": list(gt.dataset.get("images", [])), "categories": list(gt.dataset.get("categories", [])),
            "annotations": [dict(a) for a in dt.dataset.get("annotations", [])]}


def _gt_dataset(gt) -> dict:
    d = {k: v for k, v in gt.dataset.items() if k != "annotations"}
    d["annotations"] = [dict(a) for a in gt.dataset.get("annotations", [])]
    return d


#: a converted ground truth per pycocotools COCO object (CocoMetric evaluates bbox and segm on one)
_GT_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _converted_gt(name: str, gt, make: Callable):
    per = _GT_CACHE.setdefault(gt, {})
    key = (name, len(gt.dataset.get("annotations", [])), len(gt.dataset.get("images", [])))
    if key not in per:
        per[key] = make(_gt_dataset(gt))
    return per[key]


def _grid_eval_imgs(entries, p) -> list:
    """hotcoco's evalImgs (non-empty entries only) laid out as pycocotools' K x A x I list."""
    K, A, I = len(p.catIds), len(p.areaRng), len(p.imgIds)
    k_of = {int(c): k for k, c in enumerate(p.catIds)}
    i_of = {int(i): n for n, i in enumerate(p.imgIds)}
    a_of = {tuple(float(x) for x in r): a for a, r in enumerate(p.areaRng)}
    grid: list = [None] * (K * A * I)
    for e in entries:
        if not e:
            continue
        k, i = k_of.get(int(e["category_id"])), i_of.get(int(e["image_id"]))
        a = a_of.get(tuple(float(x) for x in e["aRng"]))
        if k is None or i is None or a is None:
            raise EvaluatorError(f"hotcoco evalImgs entry outside the params (image {e['image_id']}, "
                                 f"category {e['category_id']}, area {e['aRng']})")
        grid[k * A * I + a * I + i] = e
    return grid


class _EvalView:
    """What ``bench.matches.from_cocoeval`` reads of a COCOeval: params and evalImgs."""

    def __init__(self, params, eval_imgs):
        self.params, self.evalImgs = params, eval_imgs


def _run_hotcoco(gt, dt, iou_type: str, params, want_matches: bool = True) -> Evaluation:
    import hotcoco

    from bench.matches import from_cocoeval

    p = _params_copy(params)

    def evaluator(hgt, hdt, q):
        ev = hotcoco.COCOeval(hgt, hdt, iou_type)
        hp = ev.params
        hp.img_ids = list(q.imgIds)
        hp.cat_ids = list(q.catIds)
        hp.iou_thrs = [float(x) for x in q.iouThrs]
        hp.rec_thrs = [float(x) for x in q.recThrs]
        hp.max_dets = list(q.maxDets)
        hp.area_rng = [[float(x) for x in r] for r in q.areaRng]
        hp.area_rng_lbl = list(q.areaRngLbl)
        hp.use_cats = bool(q.useCats)
        return ev

    with quiet():
        hgt = _converted_gt("hotcoco", gt, hotcoco.COCO)
        t = time.perf_counter()
        hdt = hotcoco.COCO(_dt_dataset(gt, dt))
        ev = evaluator(hgt, hdt, p)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        m = None
        if want_matches and "all" in p.areaRngLbl:
            # the matches are area 'all' at COCO's AP cut (maxDets 100) alone: reading hotcoco's evalImgs (built as
            # Python dicts on access) for that area only is 4x less work; per-image matching of one area
            # range does not depend on the others (pycocotools' evaluateImg), and the cross-check compares
            # the result with pycocotools' matches array by array
            q = copy.deepcopy(p)
            q.areaRng, q.areaRngLbl = [p.areaRng[list(p.areaRngLbl).index("all")]], ["all"]
            q.maxDets = [100 if 100 in p.maxDets else max(p.maxDets)]  # bench.matches keeps COCO's AP cut
            ev_all = evaluator(hgt, hdt, q)
            ev_all.evaluate()
            m = from_cocoeval(_EvalView(q, _grid_eval_imgs(ev_all.evalImgs, q)))
        raw = ev.eval or {}
        out_eval = {k: (np.asarray(v) if isinstance(v, (list, np.ndarray)) else v) for k, v in raw.items()}
        stats = summary(out_eval, p)
    return Evaluation(stats, m, out_eval, time.perf_counter() - t, np.asarray(ev.stats, np.float64))


def _run_faster(gt, dt, iou_type: str, params, want_matches: bool = True) -> Evaluation:
    from faster_coco_eval import COCO as FCOCO
    from faster_coco_eval import COCOeval_faster

    p = _params_copy(params)
    with quiet():
        fgt = _converted_gt("faster-coco-eval", gt, lambda d: FCOCO(d))
        t = time.perf_counter()
        fdt = FCOCO(_dt_dataset(gt, dt))
        ev = COCOeval_faster(fgt, fdt, iou_type, print_function=lambda *a, **k: None)
        fp = ev.params
        fp.imgIds, fp.catIds, fp.maxDets = list(p.imgIds), list(p.catIds), list(p.maxDets)
        fp.iouThrs, fp.recThrs = np.asarray(p.iouThrs, np.float64), np.asarray(p.recThrs, np.float64)
        fp.areaRng, fp.areaRngLbl, fp.useCats = [list(r) for r in p.areaRng], list(p.areaRngLbl), p.useCats
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        stats = summary(ev.eval, p)
    return Evaluation(stats, None, dict(ev.eval), time.perf_counter() - t, np.asarray(ev.stats, np.float64))


RUNNERS = {"pycocotools": _run_pycocotools, "hotcoco": _run_hotcoco, "faster-coco-eval": _run_faster}
#: why an evaluator cannot serve a job (None: it can, once verified)
NO_MATCHES = {"faster-coco-eval": "it gives no per-image matches (COCOeval_faster keeps its per-image evaluation "
                                  "in C++, `_evalImgs_cpp`, unreadable from Python; `eval['matched']` holds one IoU "
                                  "threshold's pairs), so a job could not keep the matches the paired bootstrap of "
                                  "claims needs"}


def evaluate(name: str, gt, dt, iou_type: str, params, want_matches: bool = True) -> Evaluation:
    """COCO evaluation of ``dt`` (pycocotools ``loadRes``) against ``gt`` (pycocotools COCO) with
    ``params`` (pycocotools Params) by evaluator ``name``."""
    if name not in RUNNERS:
        raise EvaluatorError(f"unknown evaluator {name!r} (known: {', '.join(KNOWN)})")
    if iou_type not in ("bbox", "segm"):
        raise EvaluatorError(f"{name}: only bbox and segm evaluation are cross-checked, not {iou_type!r}")
    return RUNNERS[name](gt, dt, iou_type, params, want_matches)


# ----------------------------------------------------------------------------------- fixed set
def fixture_dir() -> Path:
    return cache_root() / f"fixture-v{CHECK_VERSION}"


def fixture() -> tuple[dict, list[dict], list[dict]]:
    """The cross-check's fixed set: (ground truth dataset, bbox predictions, segm predictions), as
    mmdet's CocoMetric writes them (bbox results without masks, segm results without boxes).

    Ground truth: 24 validation images of bench's synthetic set (seed 7), every 9th instance marked
    a crowd region. Predictions (seeded): per instance a copy shifted by up to 3 px (box and mask), 10%
    of them with a wrong category, 15% missed; 3 false positives per image; on image 2, 120 extra
    small boxes of one category (more than maxDets 100 for that image and category); image 3 gets none. Scores rounded to 2 decimals, so many tie."""
    from pycocotools import mask as mu

    from bench.data import synth

    root = fixture_dir() / "synth"
    synth.generate(root, synth.SynthSpec(train_images=1, val_images=24, seed=7))
    gt = json.loads((root / "annotations" / "instances_val.json").read_text())
    for n, a in enumerate(gt["annotations"]):
        if n % 9 == 4:
            a["iscrowd"] = 1
    rng = np.random.default_rng(20261201)
    by_img = {im["id"]: im for im in gt["images"]}
    img_ids = sorted(by_img)
    none_for = img_ids[2]
    boxes, segms = [], []

    def add(image_id, cat, bbox, m):
        score = round(float(rng.random()), 2)
        boxes.append({"image_id": image_id, "category_id": cat, "bbox": [float(v) for v in bbox], "score": score})
        r = mu.encode(np.asfortranarray(m))
        r["counts"] = r["counts"].decode()
        segms.append({"image_id": image_id, "category_id": cat, "segmentation": r, "score": score})

    cats = [c["id"] for c in gt["categories"]]
    for a in gt["annotations"]:
        if a["image_id"] == none_for or rng.random() < 0.15:
            continue
        im = by_img[a["image_id"]]
        h, w = im["height"], im["width"]
        m = mu.decode(mu.merge(mu.frPyObjects(a["segmentation"], h, w)))
        dy, dx = (int(v) for v in rng.integers(-3, 4, size=2))
        m = np.roll(m, (dy, dx), axis=(0, 1))
        x, y, bw, bh = a["bbox"]
        cat = a["category_id"] if rng.random() > 0.1 else int(rng.choice(cats))
        add(a["image_id"], cat, [x + dx, y + dy, bw, bh], m)
    for image_id in img_ids:
        if image_id == none_for:
            continue
        im = by_img[image_id]
        extra = 3 + (120 if image_id == img_ids[1] else 0)
        for j in range(extra):
            s = int(rng.integers(6, 40))
            x, y = int(rng.integers(0, im["width"] - s)), int(rng.integers(0, im["height"] - s))
            m = np.zeros((im["height"], im["width"]), np.uint8)
            m[y:y + s, x:x + s] = 1
            add(image_id, cats[0] if j >= 3 else int(rng.choice(cats)), [x, y, s, s], m)
    return gt, boxes, segms


def mmdet_params(gt, iou_type: str):
    """The params mmdet 3.3's CocoMetric sets (coco_metric.py compute_metrics): all categories and
    images of the annotation file, maxDets 100/300/1000, IoU 0.50:0.95."""
    from pycocotools.cocoeval import Params

    p = Params(iouType=iou_type)
    p.catIds = sorted(gt.getCatIds())
    p.imgIds = sorted(gt.getImgIds())
    p.maxDets = [100, 300, 1000]
    p.iouThrs = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
    return p


def default_params(gt, iou_type: str):
    from pycocotools.cocoeval import Params

    p = Params(iouType=iou_type)
    p.catIds = sorted(gt.getCatIds())
    p.imgIds = sorted(gt.getImgIds())
    return p


# ----------------------------------------------------------------------------------- cross-check
@dataclass
class Check:
    """The cross-check of one evaluator version against pycocotools on the fixed set."""

    evaluator: str
    version: str
    reference: str                 # "pycocotools 2.0.11"
    check_version: int
    stats_identical: bool
    matches: str                   # "identical" | "absent" | "differ: ..."
    verified: bool                 # stats identical and matches identical: may serve jobs
    reason: str                    # why refused ('' when verified)
    max_stats_diff: float
    cases: list = field(default_factory=list)    # per (iou type, params): diffs, APs, seconds
    seconds: float = 0.0           # the candidate's wall time over all cases (auto ranks by it)
    reference_seconds: float = 0.0
    checked_at: str = ""
    cached: bool = False

    def label(self) -> str:
        if self.evaluator == REFERENCE:
            return f"pycocotools {self.version} COCOeval (mmdet CocoMetric)"
        return f"{self.evaluator} {self.version} (cross-checked against {self.reference})"


def _matches_difference(a, b) -> Optional[str]:
    from bench.matches import FIELDS

    if a is None or b is None:
        return "absent" if a is None else "pycocotools gave none"
    if a.n_cats != b.n_cats:
        return f"{a.n_cats} categories, pycocotools {b.n_cats}"
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        if x.shape != y.shape:
            return f"{f}: {x.shape[0]} entries, pycocotools {y.shape[0]}"
        if not np.array_equal(x, y):
            i = int(np.flatnonzero(x != y)[0])
            return f"{f}[{i}] = {x[i]}, pycocotools {y[i]}"
    return None


STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def run_check(name: str) -> Check:
    """Run the cross-check now (no cache)."""
    from pycocotools.coco import COCO

    from bench.matches import ap_from_matches

    v = version(name)
    ref_v = version(REFERENCE)
    if v is None:
        raise EvaluatorError(f"evaluator {name!r} is not installed (pip install {DISTRIBUTION[name]})")
    gt_data, boxes, segms = fixture()
    with quiet():
        gt = COCO()
        gt.dataset = gt_data
        gt.createIndex()
    cases, worst, stats_ok, match_note = [], 0.0, True, "identical"
    t_cand = t_ref = 0.0
    for iou_type, preds in (("bbox", boxes), ("segm", segms)):
        with quiet():
            dt = gt.loadRes([dict(d) for d in preds])
        for pname, make in (("mmdet", mmdet_params), ("pycocotools-default", default_params)):
            params = make(gt, iou_type)
            ref = evaluate(REFERENCE, gt, dt, iou_type, params)
            cand = evaluate(name, gt, dt, iou_type, params)
            t_cand += cand.seconds
            t_ref += ref.seconds
            diff = np.abs(cand.stats - ref.stats) if cand.stats.shape == ref.stats.shape else None
            case = {"iou_type": iou_type, "params": pname, "reference_stats": ref.stats.tolist(),
                    "stats": cand.stats.tolist(), "seconds": round(cand.seconds, 4),
                    "native_stats": None if cand.native_stats is None else cand.native_stats.tolist(),
                    "reference_seconds": round(ref.seconds, 4)}
            if diff is None:
                stats_ok = False
                worst = float("inf")
                case["stats_difference"] = f"{cand.stats.size} stats, pycocotools {ref.stats.size}"
            else:
                worst = max(worst, float(diff.max()))
                bad = [f"{STAT_NAMES[j]} {float(cand.stats[j])!r} vs {float(ref.stats[j])!r}" for j in np.flatnonzero(diff > STATS_TOL)]
                if bad:
                    stats_ok = False
                    case["stats_difference"] = "; ".join(bad)
            md = _matches_difference(cand.matches, ref.matches)
            if md is None:
                case["matches_AP"] = [ap_from_matches(cand.matches, s) for s in ("AP", "AP50", "AP75")]
            else:
                case["matches_difference"] = md
                if match_note == "identical":
                    match_note = "absent" if md == "absent" else f"differ ({iou_type}, {pname} params): {md}"
            cases.append(case)
    if not stats_ok:
        first = next(c for c in cases if "stats_difference" in c)
        reason = (f"its stats differ from pycocotools {ref_v} by more than {STATS_TOL:g} "
                  f"({first['iou_type']}, {first['params']} params: {first['stats_difference']})")
    elif match_note != "identical":
        reason = NO_MATCHES.get(name) if match_note == "absent" and name in NO_MATCHES else \
            f"its stats agree but its per-image matches {match_note}"
    else:
        reason = ""
    import datetime as dt_

    return Check(evaluator=name, version=v, reference=f"pycocotools {ref_v}", check_version=CHECK_VERSION,
                 stats_identical=stats_ok, matches=match_note, verified=stats_ok and match_note == "identical",
                 reason=reason, max_stats_diff=worst, cases=cases, seconds=round(t_cand, 4),
                 reference_seconds=round(t_ref, 4),
                 checked_at=dt_.datetime.now(dt_.timezone.utc).isoformat(timespec="seconds"))


def _code_hash() -> str:
    """This module's and bench.matches' source: a change to the adapters or the matches re-runs the check."""
    import hashlib

    h = hashlib.sha256()
    for f in (Path(__file__), Path(__file__).with_name("matches.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _cache_file(name: str, v: str) -> Path:
    ref_v = version(REFERENCE) or "missing"
    return cache_root() / f"{name}-{v}--pycocotools-{ref_v}--check-v{CHECK_VERSION}-{_code_hash()}.json"


def cross_check(name: str, refresh: bool = False) -> Check:
    """The cross-check of the installed version of ``name``, from the cache when it holds one."""
    v = version(name)
    if v is None:
        raise EvaluatorError(f"evaluator {name!r} is not installed (pip install {DISTRIBUTION[name]})")
    path = _cache_file(name, v)
    if not refresh:
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and data.get("version") == v and data.get("check_version") == CHECK_VERSION:
                data["cached"] = True
                return Check(**{k: data[k] for k in Check.__dataclass_fields__ if k in data})
        except (OSError, ValueError, TypeError):
            pass
    check = run_check(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(check), f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return check


@dataclass
class Choice:
    """The evaluator a job uses: its name, version and what a result records (``label``)."""

    name: str
    version: str
    label: str
    why: str = ""


def resolve(choice: str = "auto") -> Choice:
    """``--evaluator`` as the evaluator a job uses. A named evaluator must be installed and verified
    (pycocotools always is: it is the reference); ``auto`` takes the fastest verified one on the
    cross-check's timing, pycocotools if none other is. Raises EvaluatorError with the reason."""
    if choice not in CHOICES:
        raise EvaluatorError(f"--evaluator {choice!r}: unknown (known: {', '.join(CHOICES)})")
    ref_v = version(REFERENCE)
    if ref_v is None:
        raise EvaluatorError("pycocotools is not installed: it is the reference evaluator (./install.sh)")
    ref = Choice(REFERENCE, ref_v, f"pycocotools {ref_v} COCOeval (mmdet CocoMetric)")
    if choice == REFERENCE:
        return ref
    if choice != "auto":
        try:
            check = cross_check(choice)
        except EvaluatorError:
            raise
        except Exception as e:  # noqa: BLE001 - an evaluator that cannot even run its cross-check is refused
            raise EvaluatorError(f"--evaluator {choice}: refused: its cross-check failed: {type(e).__name__}: {e}") from None
        if not check.verified:
            raise EvaluatorError(f"--evaluator {choice}: refused: {choice} {check.version} {check.reason}")
        return Choice(choice, check.version, check.label())
    best: Optional[Check] = None
    notes = []
    for name in KNOWN:
        if name == REFERENCE or version(name) is None:
            continue
        try:
            check = cross_check(name)
        except Exception as e:  # noqa: BLE001 - an evaluator that cannot even run is simply not chosen
            notes.append(f"{name}: {type(e).__name__}: {e}")
            continue
        if not check.verified:
            notes.append(f"{name} {check.version}: {check.reason.split(' (')[0]}")
        elif best is None or check.seconds < best.seconds:
            best = check
    if best is None or best.seconds >= sum(c["reference_seconds"] for c in best.cases):
        return Choice(ref.name, ref.version, ref.label, "; ".join(notes))
    return Choice(best.evaluator, best.version, best.label(), "; ".join(notes))


# ----------------------------------------------------------------------------------- in a job
def _cocoeval_class(name: str, ran: Optional[list] = None):
    """A pycocotools-COCOeval subclass that evaluates through ``name``: what mmdet's CocoMetric
    calls (constructor, ``params`` set by attribute, evaluate / accumulate / summarize, ``stats``,
    ``eval['precision']``). The matches go to every active ``bench.matches.capture()``. A proposal
    evaluation (useCats 0) or another IoU type falls back to pycocotools itself (not cross-checked)."""
    from pycocotools.cocoeval import COCOeval

    from bench import matches as matches_mod

    class EvaluatorCOCOeval(COCOeval):
        evaluator = name

        def _native(self) -> bool:
            return self.params.iouType not in ("bbox", "segm") or not self.params.useCats

        def evaluate(self):
            if self._native():
                if ran is not None:
                    ran.append(f"pycocotools ({self.params.iouType}, useCats {self.params.useCats})")
                return super().evaluate()
            self._bench_result = evaluate(name, self.cocoGt, self.cocoDt, self.params.iouType, self.params)
            if ran is not None:
                ran.append(f"{name} ({self.params.iouType})")
            self.params = _params_copy(self.params)

        def accumulate(self, p=None):
            if self._native():
                return super().accumulate(p)
            self.eval = self._bench_result.eval
            matches_mod.record(self._bench_result.matches)

        def summarize(self):
            if self._native():
                return super().summarize()
            self.stats = self._bench_result.stats
            for n, s in zip(STAT_NAMES, self.stats):
                print(f" {n:<6} = {s:0.3f}  ({name})")

    return EvaluatorCOCOeval


@contextlib.contextmanager
def use(name: str) -> Iterator[list]:
    """Within the block, mmdet's CocoMetric evaluates with ``name`` (pycocotools: unchanged). Yields the
    list of the evaluations the swapped class ran ('hotcoco (segm)', or 'pycocotools (...)' for what it
    leaves to pycocotools): empty if CocoMetric never called it (e.g. ``use_mp_eval``'s COCOevalMP)."""
    ran: list = []
    if name == REFERENCE:
        yield ran
        return
    if name not in RUNNERS or name in NO_MATCHES:
        raise EvaluatorError(f"evaluator {name!r} cannot serve a job" + (f": {NO_MATCHES[name]}" if name in NO_MATCHES else ""))
    from mmdet.evaluation.metrics import coco_metric

    original = coco_metric.COCOeval
    coco_metric.COCOeval = _cocoeval_class(name, ran)
    try:
        yield ran
    finally:
        coco_metric.COCOeval = original

