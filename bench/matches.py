"""Per-image COCO matches: what a paired bootstrap of an AP difference needs, kept beside each result.

A job evaluates with pycocotools' ``COCOeval`` (through mmdet's ``CocoMetric``). ``capture()`` records,
for every ``accumulate()`` call, the evaluation's per-image matches at area "all" and the largest
``maxDets`` (100): for each category, its detections in the order COCOeval ranks them (score
descending, stable over images in ``imgIds`` order), each with its image, a 10-bit mask of the IoU
thresholds at which it matched a ground truth and one of those at which it is ignored (crowd or
outside the area range), plus the number of non-ignored ground truths per (category, image). Scores
are not kept: only their order matters. That is enough to recompute AP, AP50 and AP75 exactly as
COCOeval does (``ap_from_matches``) for any reweighting of the images (``bootstrap_ap``), so two rows
evaluated on the same images can be resampled together.

The file (``<row>.matches.npz``) is plain arrays (``numpy.load(allow_pickle=False)``): one group per
IoU type (``segm_*``, ``bbox_*``). Read defensively (``load``): it may come from someone else's
results folder. Only numpy is imported here.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

#: COCO's 101 recall thresholds, as pycocotools builds them
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
#: the metric a matches group answers: metric key suffix -> IoU-threshold selector
SUFFIX_IOU = {"AP": None, "AP50": 0.5, "AP75": 0.75}
IOU_TYPE_PREFIX = {"segm": "mask", "bbox": "box"}
MAX_FILE_BYTES = 1 << 30
#: bootstrap defaults (the verdict rule says them)
RESAMPLES = 1000
SEED = 0


@dataclass
class Matches:
    """One evaluation's per-image matches (one IoU type)."""

    iou_type: str
    img_ids: np.ndarray        # (I,) int64, COCOeval's imgIds order
    iou_thrs: np.ndarray       # (T,) float64
    det_cat: np.ndarray        # (D,) int32 category index, grouped by category, ranked within it
    det_img: np.ndarray        # (D,) int32 image index
    det_tp: np.ndarray         # (D,) uint16 bit t: matched at iou_thrs[t]
    det_ig: np.ndarray         # (D,) uint16 bit t: ignored at iou_thrs[t]
    gt_cat: np.ndarray         # (G,) int32 category index
    gt_img: np.ndarray         # (G,) int32 image index
    gt_n: np.ndarray           # (G,) int32 non-ignored ground truths of (category, image)
    n_cats: int

    @property
    def n_images(self) -> int:
        return int(self.img_ids.size)


# ----------------------------------------------------------------------------------- capture
def from_cocoeval(ev) -> Optional[Matches]:
    """The matches of a COCOeval after ``evaluate()`` (area 'all', the largest maxDets)."""
    p = ev.params
    if not getattr(p, "useCats", 1) or not ev.evalImgs:
        return None
    T, I, A = len(p.iouThrs), len(p.imgIds), len(p.areaRng)
    if T > 16:
        return None
    a = next((i for i, lbl in enumerate(getattr(p, "areaRngLbl", ["all"])) if lbl == "all"), 0)
    max_det = 100 if 100 in p.maxDets else max(p.maxDets)  # COCO's AP (stats[0]) is taken at maxDets 100
    bits = (1 << np.arange(T, dtype=np.uint32)).astype(np.uint32)
    det_cat, det_img, det_tp, det_ig, gt_cat, gt_img, gt_n = [], [], [], [], [], [], []
    for k in range(len(p.catIds)):
        base = k * A * I + a * I
        scores, imgs, tps, igs = [], [], [], []
        for i in range(I):
            e = ev.evalImgs[base + i]
            if e is None:
                continue
            n_gt = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
            if n_gt:
                gt_cat.append(k), gt_img.append(i), gt_n.append(n_gt)
            s = np.asarray(e["dtScores"][:max_det], dtype=np.float64)
            if not s.size:
                continue
            m = np.asarray(e["dtMatches"])[:, :max_det] > 0
            g = np.asarray(e["dtIgnore"])[:, :max_det] > 0
            scores.append(s), imgs.append(np.full(s.size, i, np.int32))
            tps.append((m.T * bits).sum(1).astype(np.uint16)), igs.append((g.T * bits).sum(1).astype(np.uint16))
        if not scores:
            continue
        s = np.concatenate(scores)
        order = np.argsort(-s, kind="mergesort")  # exactly COCOeval.accumulate's ranking
        det_cat.append(np.full(s.size, k, np.int32))
        det_img.append(np.concatenate(imgs)[order])
        det_tp.append(np.concatenate(tps)[order]), det_ig.append(np.concatenate(igs)[order])

    def cat(parts, dtype):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    return Matches(iou_type=p.iouType, img_ids=np.asarray(p.imgIds, np.int64),
                   iou_thrs=np.asarray(p.iouThrs, np.float64), det_cat=cat(det_cat, np.int32),
                   det_img=cat(det_img, np.int32), det_tp=cat(det_tp, np.uint16), det_ig=cat(det_ig, np.uint16),
                   gt_cat=np.asarray(gt_cat, np.int32), gt_img=np.asarray(gt_img, np.int32),
                   gt_n=np.asarray(gt_n, np.int32), n_cats=len(p.catIds))


#: the dicts of the active ``capture()`` blocks (innermost last)
_ACTIVE: list[dict[str, Matches]] = []


def record(m: Optional[Matches]) -> None:
    """Record matches into every active ``capture()``: for an evaluator other than pycocotools'
    (bench.evaluators), whose ``accumulate()`` the patch below does not see."""
    if m is not None:
        for got in _ACTIVE:
            got[m.iou_type] = m


@contextlib.contextmanager
def capture() -> Iterator[dict[str, Matches]]:
    """Within the block, every pycocotools ``COCOeval.accumulate()`` also records its matches into
    the yielded dict, keyed by IoU type (the last evaluation of a type wins); so does ``record()``."""
    from pycocotools.cocoeval import COCOeval

    got: dict[str, Matches] = {}
    original = COCOeval.accumulate

    def accumulate(self, *args, **kwargs):
        try:
            m = from_cocoeval(self)
            if m is not None:
                got[m.iou_type] = m
        except Exception:  # noqa: BLE001 - never let the bookkeeping break an evaluation
            pass
        return original(self, *args, **kwargs)

    COCOeval.accumulate = accumulate
    _ACTIVE.append(got)
    try:
        yield got
    finally:
        COCOeval.accumulate = original
        _ACTIVE.remove(got)


# ----------------------------------------------------------------------------------- file
FIELDS = ("img_ids", "iou_thrs", "det_cat", "det_img", "det_tp", "det_ig", "gt_cat", "gt_img", "gt_n")


def _write_atomic(path: Path, write) -> None:
    """``write(f)`` into a temporary file beside ``path``, flushed to disk, then renamed over it: a
    reader sees the old file or the whole new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save(path: Path, groups: dict[str, Matches]) -> dict:
    """Write the groups to ``path`` atomically; returns the record a result file carries."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for t, m in groups.items():
        for f in FIELDS:
            arrays[f"{t}_{f}"] = getattr(m, f)
        arrays[f"{t}_n_cats"] = np.asarray([m.n_cats], np.int64)
    _write_atomic(path, lambda f: np.savez_compressed(f, **arrays))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"file": path.name, "sha256": digest, "iou_types": sorted(groups),
            "images": max((m.n_images for m in groups.values()), default=0),
            "what": "per-image COCOeval matches (area all, maxDets 100) for the paired bootstrap of claims"}


class MatchesError(ValueError):
    pass


def load(path: Path, sha256: Optional[str] = None) -> dict[str, Matches]:
    """Read a matches file defensively: size-bounded, no pickles, checksum and shapes checked.
    Raises MatchesError with the reason."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise MatchesError(f"{path}: {e.strerror or e}") from None
    if size > MAX_FILE_BYTES:
        raise MatchesError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB")
    raw = path.read_bytes()
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise MatchesError(f"{path}: its SHA-256 is not the one its result file records")
    try:
        import io

        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - any unreadable file is one reason
        raise MatchesError(f"{path}: not a matches file ({type(e).__name__}: {e})") from None
    out: dict[str, Matches] = {}
    for t in ("segm", "bbox"):
        if f"{t}_img_ids" not in data:
            continue
        try:
            m = Matches(iou_type=t, n_cats=int(data[f"{t}_n_cats"][0]),
                        **{f: data[f"{t}_{f}"] for f in FIELDS})
        except KeyError as e:
            raise MatchesError(f"{path}: group {t!r} lacks {e}") from None
        _check(path, m)
        out[t] = m
    if not out:
        raise MatchesError(f"{path}: holds no segm or bbox matches")
    return out


def _check(path: Path, m: Matches) -> None:
    D, G, I = m.det_cat.size, m.gt_cat.size, m.img_ids.size
    bad = []
    if any(a.ndim != 1 for a in (m.img_ids, m.iou_thrs, m.det_cat, m.det_img, m.det_tp, m.det_ig, m.gt_cat,
                                 m.gt_img, m.gt_n)):
        bad.append("arrays must be one-dimensional")
    elif not (m.det_img.size == m.det_tp.size == m.det_ig.size == D and m.gt_img.size == m.gt_n.size == G):
        bad.append("array lengths disagree")
    elif not 1 <= m.iou_thrs.size <= 16 or m.n_cats < 1:
        bad.append("IoU thresholds or category count out of range")
    elif (D and (m.det_cat.min() < 0 or m.det_cat.max() >= m.n_cats or m.det_img.min() < 0 or m.det_img.max() >= I)) \
            or (G and (m.gt_cat.min() < 0 or m.gt_cat.max() >= m.n_cats or m.gt_img.min() < 0
                       or m.gt_img.max() >= I or m.gt_n.min() < 1)):
        bad.append("an index is out of range")
    elif D and np.any(np.diff(m.det_cat) < 0):
        bad.append("detections are not grouped by category")
    if bad:
        raise MatchesError(f"{path}: group {m.iou_type!r}: {bad[0]}")


# ----------------------------------------------------------------------------------- AP
def _iou_index(m: Matches, suffix: str) -> np.ndarray:
    thr = SUFFIX_IOU[suffix]
    if thr is None:
        return np.arange(m.iou_thrs.size)
    hit = np.flatnonzero(np.isclose(m.iou_thrs, thr))
    if not hit.size:
        raise MatchesError(f"no IoU threshold {thr} among the matches' thresholds")
    return hit


def ap_per_threshold(m: Matches, weights: np.ndarray, exact: bool = True,
                     chunk_elems: int = 1 << 23) -> np.ndarray:
    """(B, T): for each row of image ``weights`` (B, I), the mean over categories of COCO's AP at each
    IoU threshold, in %; NaN where no category has a ground truth. The mean over T is COCO's AP,
    one column its AP50 or AP75.

    COCOeval's accumulate, restated so that it costs little per resample: recall rises only at a true
    positive, and the precision envelope's maximum always lies at one, so only the true positives'
    precisions are needed: (cumulative true-positive weight) / (cumulative weight of the non-ignored
    detections before it). A detection's weight is its image's count in the resample.

    ``exact``: float64 and pycocotools' own threshold search (all-ones weights give COCOeval's numbers to
    the last bit); otherwise float32, for resamples (the weights are integer counts, so the cumulative
    sums stay exact; the precision rounds at 1e-7 relative; recall is divided in float64 so that it meets
    COCO's thresholds exactly as pycocotools does)."""
    weights = np.atleast_2d(np.asarray(weights, np.float64))
    B, T = weights.shape[0], m.iou_thrs.size
    dt = np.float64 if exact else np.float32
    eps = np.spacing(dt(1))
    bits = (1 << np.arange(T, dtype=np.uint32)).astype(np.uint32)
    R = REC_THRS.size
    total = np.zeros((B, T))
    counted = np.zeros(B)
    starts = np.searchsorted(m.det_cat, np.arange(m.n_cats + 1))
    wdt = weights.astype(dt)

    def n_below(rc: np.ndarray) -> np.ndarray:
        """How many recall thresholds are <= each recall: pycocotools' own float64 comparison, since its
        thresholds are linspace values (0.07000000000000001 is not reached by a recall of exactly 0.07)."""
        return np.searchsorted(REC_THRS, rc.ravel(), side="right").reshape(rc.shape)

    for k in range(m.n_cats):
        g = m.gt_cat == k
        if not g.any():
            continue
        npig = weights[:, m.gt_img[g]] @ m.gt_n[g].astype(np.float64)
        valid = npig > 0
        if not valid.any():
            continue
        counted += valid
        lo, hi = starts[k], starts[k + 1]
        ig = (m.det_ig[lo:hi, None] & bits) > 0                        # (D, T)
        tp = ((m.det_tp[lo:hi, None] & bits) > 0) & ~ig
        if not tp.any():
            continue                                                   # AP 0 at every threshold
        # detections after the category's last true positive change no AP in any resample: dropped
        last = int(np.flatnonzero(tp.any(axis=1))[-1]) + 1
        tp, ig, img = tp[:last], ig[:last], m.det_img[lo:lo + last]
        same_ig = bool((ig == ig[:, :1]).all())
        positions = [np.flatnonzero(tp[:, t]) for t in range(T)]
        step = max(1, chunk_elems // max(1, last))
        for b0 in range(0, B, step):
            b1 = min(B, b0 + step)
            w = wdt[b0:b1][:, img]                                     # (b, D)
            ni_all = np.cumsum(w * ~ig[:, 0], axis=1) if same_ig else None
            for t, pos in enumerate(positions):
                if not pos.size:
                    continue                                           # no true positive: AP_t 0
                ni = ni_all if same_ig else np.cumsum(w * ~ig[:, t], axis=1)
                tps = np.cumsum(w[:, pos], axis=1)                     # (b, P)
                with np.errstate(invalid="ignore", divide="ignore"):
                    rc = tps.astype(np.float64) / npig[b0:b1, None]     # the counts are exact integers
                    pr = tps / (ni[:, pos] + eps)
                env = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                cnt = np.diff(n_below(np.nan_to_num(rc, nan=-1.0, posinf=2.0)), axis=1, prepend=0)
                ap = (env * cnt).sum(axis=1) / R
                total[b0:b1, t] += np.where(valid[b0:b1], ap, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * total / counted[:, None]


def bootstrap_ap(m: Matches, weights: np.ndarray, suffix: str = "AP", exact: bool = True) -> np.ndarray:
    """AP (in %) of the evaluation under each row of image ``weights`` (B, I): what COCOeval's
    ``stats`` would give on the image multiset those counts describe. All-ones weights give COCOeval's
    own AP. A category counts in a resample only if it has a non-ignored ground truth there."""
    return ap_per_threshold(m, weights, exact)[:, _iou_index(m, suffix)].mean(axis=1)


def ap_from_matches(m: Matches, suffix: str = "AP") -> float:
    """COCOeval's AP (area all, maxDets 100), in %, from the matches alone."""
    return float(bootstrap_ap(m, np.ones((1, m.n_images)), suffix)[0])


@dataclass
class PairedBootstrap:
    delta: float              # AP(row) - AP(base) on the evaluation images, in points
    lo: float                 # 95% percentile interval of the resampled differences
    hi: float
    se: float                 # standard deviation of the resampled differences
    mde: float                # minimum detectable effect: (z_0.975 + z_0.80) * se
    resamples: int
    images: int
    seed: int

    def widened(self, extra_se: float) -> "PairedBootstrap":
        """The interval with a seed spread's standard error added in quadrature (asymmetry kept)."""
        if extra_se <= 0 or self.se <= 0:
            return self
        k = (self.se ** 2 + extra_se ** 2) ** 0.5 / self.se
        return PairedBootstrap(self.delta, self.delta - (self.delta - self.lo) * k, self.delta + (self.hi - self.delta) * k,
                               self.se * k, self.mde * k, self.resamples, self.images, self.seed)


#: z_0.975 + z_0.80: a true difference this large is detected (interval excludes 0) 80% of the time
MDE_FACTOR = 1.959964 + 0.841621


class NotPaired(ValueError):
    """The two evaluations are not on the same images (or categories): no paired bootstrap."""


def paired_bootstraps(row: Sequence[Matches], base: Sequence[Matches], suffixes: Sequence[str] = tuple(SUFFIX_IOU),
                      resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, PairedBootstrap]:
    """Paired bootstrap over images of AP(row) - AP(base), for each suffix (AP, AP50, AP75) from one pass:
    both rows resampled with the same image draws. ``row``/``base``: one Matches per seed (the row's value
    is the mean over its seeds)."""
    if not row or not base:
        raise NotPaired("no matches")
    ref = row[0]
    for m in (*row, *base):
        if m.n_images != ref.n_images or not np.array_equal(np.sort(m.img_ids), np.sort(ref.img_ids)):
            raise NotPaired("the two rows were not evaluated on the same images")
        if m.n_cats != ref.n_cats or not np.allclose(m.iou_thrs, ref.iou_thrs):
            raise NotPaired("the two rows were not evaluated on the same categories and IoU thresholds")
    rng = np.random.default_rng(seed)
    # image draws indexed by position in ref.img_ids
    draws = rng.multinomial(ref.n_images, np.full(ref.n_images, 1.0 / ref.n_images), size=resamples).astype(np.float64)
    by_id = dict(zip(ref.img_ids.tolist(), range(ref.n_images)))

    def per_t(ms: Sequence[Matches], weights: np.ndarray, exact: bool) -> np.ndarray:
        out = []
        for m in ms:
            idx = np.fromiter((by_id[i] for i in m.img_ids.tolist()), np.int64, m.n_images)
            out.append(ap_per_threshold(m, weights[:, idx], exact))
        return np.mean(out, axis=0)                                   # (B, T)

    ones = np.ones((1, ref.n_images))
    full = per_t(row, ones, True) - per_t(base, ones, True)
    resampled = per_t(row, draws, False) - per_t(base, draws, False)
    out = {}
    for suffix in suffixes:
        t = _iou_index(ref, suffix)
        diffs = resampled[:, t].mean(axis=1)
        diffs = diffs[np.isfinite(diffs)]
        if not diffs.size:
            raise NotPaired("no resample has a ground truth")
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        se = float(np.std(diffs, ddof=1)) if diffs.size > 1 else 0.0
        out[suffix] = PairedBootstrap(float(full[0, t].mean()), float(lo), float(hi), se, MDE_FACTOR * se,
                                      int(diffs.size), ref.n_images, seed)
    return out


def paired_bootstrap(row: Sequence[Matches], base: Sequence[Matches], suffix: str = "AP",
                     resamples: int = RESAMPLES, seed: int = SEED) -> PairedBootstrap:
    """``paired_bootstraps`` for one suffix."""
    return paired_bootstraps(row, base, (suffix,), resamples, seed)[suffix]


def matches_path(result_path: Path) -> Path:
    """Where a row's matches file lies: beside its result file."""
    result_path = Path(result_path)
    return result_path.with_name(result_path.stem + ".matches.npz")


def copy_beside(src: Path, result_path: Path, record: dict) -> dict:
    """Copy a run's matches file beside a row's result file (atomically); the row's record of it."""
    import shutil

    dst = matches_path(result_path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as r:
        _write_atomic(dst, lambda f: shutil.copyfileobj(r, f))
    return dict(record, file=dst.name)
