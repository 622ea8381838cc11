"""`bench eval`: evaluate a given checkpoint (released weights, or any training's) against a row.

The row's config is built exactly as `bench run` builds it at that scale (``bench.plan.make_plan``: the
same dataset, pipeline, input size, evaluator), the model is built with mmengine's Runner, and the
checkpoint is loaded as untrusted data: its pickle is first read statically (``pickles_only_allowed``:
only the allow-listed globals of an mmengine checkpoint), then loaded with ``torch.load(weights_only=True)``
inside ``safe_checkpoint_loading``. Its keys are compared with the model's: missing, unexpected and
shape-mismatched keys are listed, and a partial load is refused unless every offending key starts with
an ``--allow-partial`` prefix (the result then says what was skipped). The evaluation is the Runner's
test loop, and COCO metrics, params, FLOPs and speed come from the same functions `bench run` uses
(``bench.job``). The result is marked ``source: checkpoint`` with the file's SHA-256 and size, and is
written to ``results/<scale>/checkpoint-evals/...`` (``bench.results.checkpoint_result_path``), never
over a trained result.

Nothing imports this module but the CLI (tests/test_layering.py).
"""
from __future__ import annotations

import contextlib
import copy
import json
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from bench.recipes import Row, Table


class EvalError(ValueError):
    """Something the user can fix: the row cannot run, the checkpoint is refused or does not fit."""


@dataclass
class KeyReport:
    """How a checkpoint's state dict fits the row's model."""

    missing: list[str] = field(default_factory=list)        # in the model, not in the checkpoint
    unexpected: list[str] = field(default_factory=list)     # in the checkpoint, not in the model
    mismatched: list[str] = field(default_factory=list)     # 'key: checkpoint shape vs model shape'
    loaded: int = 0

    @property
    def offending(self) -> list[str]:
        return self.missing + self.unexpected + [m.split(":", 1)[0] for m in self.mismatched]

    def lines(self) -> list[str]:
        out = []
        for what, keys in (("missing (in the model, not in the checkpoint)", self.missing),
                           ("unexpected (in the checkpoint, not in the model)", self.unexpected),
                           ("shape mismatch", self.mismatched)):
            if keys:
                out.append(f"{len(keys)} key(s) {what}: " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
        return out


# ----------------------------------------------------------------------------- the checkpoint
def file_record(path: Path) -> dict:
    from bench.job import file_sha256

    return {"path": str(Path(path).resolve()), "sha256": file_sha256(Path(path)), "size": Path(path).stat().st_size}


def read_state_dict(path: Path) -> dict:
    """The checkpoint's state dict (``state_dict`` of an mmengine checkpoint, or a bare one), read as data:
    refused if its pickle names anything outside the allow-list (read statically first for a zip checkpoint;
    a legacy-format file is refused by the weights_only unpickler itself); ``module.`` prefixes (a
    DistributedDataParallel save) removed as mmengine's loader does."""
    import torch

    from bench.job import pickles_only_allowed, safe_checkpoint_loading

    import zipfile

    path = Path(path)
    if not path.is_file():
        raise EvalError(f"checkpoint {path}: no such file")
    if zipfile.is_zipfile(path):
        ok, why = pickles_only_allowed(path)
        if not ok:
            raise EvalError(f"checkpoint {path}: {why}")
    # else torch's legacy format (torch.save before 1.6, as many released checkpoints of 2019-2020 are): torch reads
    # its globals statically only from zip checkpoints, so here the allow-listed weights_only unpickler alone decides
    try:
        with safe_checkpoint_loading():
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - an unreadable checkpoint is refused with the reason
        raise EvalError(f"checkpoint {path}: cannot be loaded as data: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise EvalError(f"checkpoint {path}: holds no state dict of tensors (neither 'state_dict' nor a bare one)")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def load_and_compare(model, ckpt_state: dict) -> KeyReport:
    """Load ``ckpt_state`` into ``model`` as far as it fits and say how it fits. Shape-mismatched keys are left
    out of the load (torch refuses them); missing and unexpected keys are torch's own answer from
    ``load_state_dict(strict=False)``, i.e. after the modules' ``_load_from_state_dict`` hooks (which rename the
    keys of older checkpoint layouts), as mmengine's loader sees them. The caller refuses a partial load."""
    model_state = model.state_dict()
    rep = KeyReport()
    for k in sorted(set(model_state) & set(ckpt_state)):
        if tuple(model_state[k].shape) != tuple(ckpt_state[k].shape):
            rep.mismatched.append(f"{k}: {tuple(ckpt_state[k].shape)} in the checkpoint vs "
                                  f"{tuple(model_state[k].shape)} in the model")
    mismatched = {m.split(":", 1)[0] for m in rep.mismatched}
    res = model.load_state_dict({k: v for k, v in ckpt_state.items() if k not in mismatched}, strict=False)
    rep.missing = sorted(k for k in res.missing_keys if k not in mismatched)
    rep.unexpected = sorted(res.unexpected_keys)
    rep.loaded = len(model_state) - len(rep.missing) - len(mismatched)
    return rep


def check_partial(rep: KeyReport, allow_partial: tuple[str, ...] | list[str], where: str) -> list[str]:
    """Refuse a partial load unless every offending key starts with an allowed prefix; return what
    is skipped (the report's lines) when it is allowed."""
    offending = rep.offending
    if not offending:
        return []
    outside = [k for k in offending if not any(k.startswith(p) for p in allow_partial)]
    if outside:
        hint = (f" ({len(outside)} key(s) outside the --allow-partial prefixes: {', '.join(outside[:10])})"
                if allow_partial else "")
        raise EvalError(f"{where}: the checkpoint does not fit the row's model: " + "; ".join(rep.lines())
                        + f"{hint}. Refused: a partial load is allowed only with --allow-partial KEY_PREFIX "
                        "covering every key listed")
    return rep.lines()


# ----------------------------------------------------------------------------- the row's config
def _limit_annotations(ann_file: Path, n: int, out: Path) -> int:
    """The first ``n`` images of a COCO annotation file (in file order, which is the dataset's order)
    with their annotations, written to ``out``. Returns how many images it holds."""
    data = json.loads(Path(ann_file).read_text())
    images = data.get("images", [])[:n]
    ids = {im["id"] for im in images}
    data["images"] = images
    data["annotations"] = [a for a in data.get("annotations", []) if a.get("image_id") in ids]
    from bench.results import atomic_write_json

    atomic_write_json(out, data)
    return len(images)


def apply_limit(cfg: dict, n: int, work: Path) -> int:
    """Point the test dataset and evaluator at an annotation file of the first ``n`` images, so COCOeval
    scores exactly the images evaluated (a dataset subset alone would count the rest as misses)."""
    dl = cfg["test_dataloader"]["dataset"]
    ann = Path(dl.get("data_root") or "") / dl["ann_file"]
    sub = work / f"limit-{n}-{ann.name}"
    kept = _limit_annotations(ann, n, sub)
    dl["ann_file"] = str(sub)
    evs = cfg.get("test_evaluator")
    for e in (evs if isinstance(evs, list) else [evs]):
        if isinstance(e, dict) and "ann_file" in e:   # COCO-style metrics (not e.g. CityScapesMetric)
            e["ann_file"] = str(sub)
    return kept


def run_spec(table: Table, row: Row, scale: str, results_root: Path, data_root=None,
             weights_dirs: Optional[list[Path]] = None):
    """The RunSpec `bench run` would give this row at this scale (never written, never launched)."""
    from bench.plan import make_plan

    plan = make_plan([(table, [row])], scale, results_root, data_root=data_root, force=True,
                     weights_dirs=weights_dirs)
    pr = plan.rows[0]
    if not plan.runs:
        raise EvalError(f"{table.name} row {row.id!r} cannot be evaluated: {pr.status}"
                        + (f": {pr.reason}" if pr.reason else ""))
    return next(iter(plan.runs.values()))


# ----------------------------------------------------------------------------- evaluation
def evaluate(table: Table, row: Row, checkpoint: Path, results_root: Path, scale: str = "smoke",
             data_root=None, limit: Optional[int] = None, device: str = "cpu",
             allow_partial: tuple[str, ...] = (), weights_dirs: Optional[list[Path]] = None,
             checkpoint_note: Optional[str] = None, released: Optional[dict] = None,
             on_line=lambda s: None, evaluator: str = "pycocotools") -> tuple[Path, Any]:
    """Evaluate ``checkpoint`` as ``table``'s ``row``; write and return (result path, Result). ``released``: the
    mmdet zoo entry the file was taken for (``bench.zoo.local_checkpoint``); the result records whether the file's
    SHA-256 begins as the released file's name says (only then does the report call it released weights).
    ``evaluator``: the COCO evaluator (``bench.evaluators``; as ``bench run``'s jobs), recorded in the result."""
    import torch

    from bench.results import checkpoint_result_path, write_result

    if device == "cuda" and not torch.cuda.is_available():
        raise EvalError("--device cuda: no CUDA device here")
    if limit is not None and limit < 1:
        raise EvalError("--limit must be at least 1")
    t0, started = time.time(), _now()
    where = f"{table.name} row {row.id!r}"
    if not Path(checkpoint).is_file():
        raise EvalError(f"checkpoint {checkpoint}: no such file")
    record = file_record(checkpoint)
    if released is not None:
        prefix = released.get("sha256_prefix")
        record["zoo"] = released | {"sha256_matches": record["sha256"].startswith(prefix) if prefix else None}
        if prefix and not record["zoo"]["sha256_matches"]:
            on_line(f"warning: {checkpoint} is named as the released {released.get('file_name')} but its sha256 begins "
                    f"{record['sha256'][:8]}, not {prefix}: not the released file (evaluated as a plain checkpoint)")
    ckpt_state = read_state_dict(checkpoint)      # refused before anything is built if it is not data
    spec = run_spec(table, row, scale, results_root, data_root, weights_dirs)
    out = checkpoint_result_path(results_root, spec.scale, table.name, row.id)
    log = out.with_name(out.stem + ".log")   # mmengine's and pycocotools' output: kept beside the result
    log.parent.mkdir(parents=True, exist_ok=True)
    partial = log.with_name(log.name + ".partial")   # a failed evaluation never replaces the last good one's log
    try:
        with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp, open(partial, "w") as log_f, \
                contextlib.redirect_stdout(log_f):
            res = _evaluate_in(Path(tmp), spec, table, row, ckpt_state, record, limit, device, allow_partial, where,
                               checkpoint_note, started, t0, evaluator)
    except BaseException:
        partial.replace(log.with_name(out.stem + ".failed.log"))
        raise
    partial.replace(log)
    write_result(out, res)
    for line in res.checkpoint["skipped"]:
        on_line(f"partial load (--allow-partial {' '.join(allow_partial)}): skipped {line}")
    on_line(f"log: {log}")
    return out, res


def _evaluate_in(work: Path, spec, table: Table, row: Row, ckpt_state: dict, record: dict, limit: Optional[int],
                 device: str, allow_partial, where: str, checkpoint_note: Optional[str], started: str, t0: float,
                 evaluator: str = "pycocotools"):
    from mmengine.config import Config
    from mmengine.runner import Runner

    from bench.evaluators import use as use_evaluator
    from bench.job import (_versions, count_trainable, device_description, evaluated_metrics, evaluator_outcome,
                           git_commit, job_evaluator, measure_flops, measure_speed, SpeedProbe)
    from bench.resolve import register_all
    from bench.results import Measurement, Result

    phases: dict[str, float] = {}
    register_all()
    if spec.dataset == "synth":
        from bench.data import synth

        synth.generate(Path(spec.dataset_root), synth.SynthSpec(**spec.data_spec))
    cfg_dict = copy.deepcopy(spec.config)
    kept = apply_limit(cfg_dict, limit, work) if limit else None
    cfg = Config(cfg_dict)
    cfg.work_dir = str(work / "eval")
    cfg.load_from = None
    cfg.resume = False
    # mmengine keeps loggers and visualizers by name for the process: a second evaluation in the same
    # process (tests, a notebook) must not write through the first one's (its folder is gone)
    cfg.experiment_name = f"bench-eval-{work.name}"
    if isinstance(cfg.get("visualizer"), dict):
        cfg.visualizer["name"] = f"bench-eval-{work.name}"
    if device == "cpu":
        cfg.setdefault("env_cfg", {})["dist_cfg"] = {"backend": "gloo"}
    runner = Runner.from_cfg(cfg)
    model = runner.model
    if device == "cpu" and next(model.parameters()).is_cuda:
        model.cpu()
    rep = load_and_compare(model, ckpt_state)   # nothing is evaluated unless the checks below pass
    skipped = check_partial(rep, allow_partial, where)
    if rep.loaded == 0:
        raise EvalError(f"{where}: no key of the checkpoint fits the model: refused")
    phases["setup"] = time.time() - t0
    t = time.time()
    n_speed = spec.scale_cfg["speed_images"]
    if kept is not None:  # --limit: time only the images evaluated (3 warm-up), never a separate pass
        n_speed = min(n_speed, max(0, kept - 3))
    probe = (SpeedProbe(model, n_speed) if cfg.test_dataloader.get("batch_size", 1) == 1 and n_speed > 0
             else None)
    evaluator_name, evaluator_label = job_evaluator(evaluator)
    try:
        with use_evaluator(evaluator_name) as ran:
            metrics = runner.test()
    finally:
        if probe is not None:
            probe.remove()
    phases["test"] = time.time() - t
    evaluator_label = evaluator_outcome(evaluator_name, evaluator_label, ran)
    t = time.time()
    measured, notes = evaluated_metrics(metrics, cfg)  # as bench run: an AP of 0 where CocoMetric skipped COCOeval
    if kept is not None:
        for k in [k for k in measured if k.startswith(("mask_", "box_"))]:
            notes[k] = (f"--limit {limit}: the first {kept} evaluation image(s) only, "
                        "never comparable to the paper or to a full evaluation")
    measured["params_M"] = count_trainable(model) / 1e6
    data = model.data_preprocessor(next(iter(runner.test_dataloader)), False)
    gflops, flops_note = measure_flops(model, data)
    measured["gflops"] = round(gflops, 2) if gflops is not None else None
    if gflops is None:
        notes["gflops"] = flops_note
    fps, proto = probe.result() if probe is not None else (None, "")
    if fps is None and kept is None:
        fps, proto = measure_speed(model, runner.test_dataloader, spec.scale_cfg["speed_images"])
    elif fps is None:
        notes["fps"] = (f"--limit {limit}: too few images to time (3 warm-up + at least 1)" if n_speed == 0
                        else f"--limit {limit}: {proto}")
    elif kept is not None:
        notes["fps"] = f"--limit {limit}: timed on {n_speed} of the {kept} evaluated image(s) after 3 warm-up"
    if fps is not None:
        measured["fps"] = round(fps, 2)
        measured["latency_ms"] = round(1000 / fps, 1)
    measured["model_size_MB"] = round(record["size"] / 2**20, 1)
    notes["model_size_MB"] = "size of the evaluated checkpoint file, MiB"
    phases["measure"] = time.time() - t
    measurement = Measurement(
        scale=spec.scale, dataset=spec.dataset if spec.dataset != "synth" else f"synth ({Path(spec.dataset_root).name})",
        dataset_root=spec.dataset_root, eval_split=spec.eval_split, train_images=None,
        eval_images=len(runner.test_dataloader.dataset), iterations=None, epochs=None, batch_size=spec.batch_size,
        gpus=spec.gpus, lr=None, input_size=spec.input_size, pretrained=bool(spec.scale_cfg["pretrained"]),
        seed=int(spec.scale_cfg["seed"]), device=device_description() if device == "cuda" else _cpu_device(),
        speed_protocol=proto, flops_note=flops_note, eval_limit=limit, evaluator=evaluator_label,
        phases_s={k: round(v, 2) for k, v in phases.items()})
    record.update(note=checkpoint_note, keys_loaded=rep.loaded, skipped=skipped,
                  allow_partial=list(allow_partial))
    res = Result(status="done", table=table.name, row=row.id, label=row.label, run_key=spec.run_key,
                 config_hash=spec.config_hash, measured=measured, measured_notes=notes, published=dict(row.published),
                 measurement=measurement, started_at=started, finished_at=_now(), wall_s=round(time.time() - t0, 1),
                 work_dir=None, config=spec.config, overlay=spec.overlay, versions=_versions(), git_commit=git_commit(),
                 hostname=socket.gethostname(), source="checkpoint", checkpoint=record)
    return res


def _cpu_device() -> str:
    import torch

    from bench.job import cpu_model

    return f"cpu: {cpu_model()} ({torch.get_num_threads()} threads)"


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
