"""Calibrate `bench run --dry-run`'s smoke-scale cost estimates on this machine.

For every model signature of the recipes (bench.cost.model_signature: detector, head, backbone, neck)
this takes the first runnable row with it, resolves its config at the scale exactly as `bench run` does,
and, in a fresh process, builds mmengine's Runner, trains a few iterations (the first ones are warm-up
and not counted), saves one checkpoint and tests on the scale's synthetic validation split. It writes

- ``bench/scales/costs/<scale>.yaml``: per signature, seconds per training iteration, per test image and
  fixed (Runner set-up + the run's checkpoint saves + ~4 s of measurement and job process around it);
  read by bench.cost when a plan has no results of its own for that signature;
- a per-signature line on stdout (record it in ``benchmarks/smoke_costs.txt``).

    .venv/bin/python benchmarks/smoke_costs.py [--scale smoke] [--iters 6] [--warmup 2] [--test-images 8]
        [--only SUBSTR]... [--missing] [--redo-below S] [--type-capped] [--write FILE]

Run it on an otherwise idle machine. A signature whose run fails is reported and left out.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, sys, time
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
t0 = time.perf_counter()
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner
from bench.resolve import register_all
register_all()
cfg = Config.fromfile(sys.argv[1])
cfg.work_dir = sys.argv[2]
warm, n = int(sys.argv[3]), int(sys.argv[4])
cfg.train_cfg["max_iters"] = warm + n
cfg.train_cfg["val_interval"] = 10**9
cfg.default_hooks["checkpoint"]["interval"] = 10**9
n_test = int(sys.argv[5])
cfg.test_dataloader.dataset["indices"] = n_test   # a subset: seconds per image is what is wanted
times = []

class IterTimer(Hook):
    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.t = time.perf_counter()
    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        times.append(time.perf_counter() - self.t)

runner = Runner.from_cfg(cfg)
runner.register_hook(IterTimer(), priority="VERY_LOW")
setup = time.perf_counter() - t0
runner.train()
t = time.perf_counter()
runner.save_checkpoint(cfg.work_dir, "probe.pth")
ckpt = time.perf_counter() - t
t = time.perf_counter()
runner.test()
test = time.perf_counter() - t
n_test = len(runner.test_dataloader.dataset)
print("COST", json.dumps(dict(setup_s=setup, iter_s=times[warm:], warm_s=times[:warm], checkpoint_s=ckpt,
                              test_s=test, test_images=n_test)))
"""

#: what a job does besides Runner set-up, training, checkpoints and test: params, FLOPs, writing the
#: results (0.3 s) and its process start/tear-down (2.6-4.2 s): benchmarks/harness_overhead.txt
OUTSIDE_S = 4.0


def machine() -> str:
    from bench.job import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="smoke")
    ap.add_argument("--iters", type=int, default=6, help="timed training iterations per signature")
    ap.add_argument("--warmup", type=int, default=2, help="untimed first iterations")
    ap.add_argument("--test-images", type=int, default=8, help="validation images tested per signature")
    ap.add_argument("--only", action="append", default=None,
                    help="calibrate only signatures containing this text (repeatable; merged into the file)")
    ap.add_argument("--write", type=Path, default=None,
                    help="the rates file to write (default bench/scales/costs/<scale>.yaml, which bench/cost.py reads)")
    ap.add_argument("--missing", action="store_true", help="calibrate only signatures the file lacks (merged into it)")
    ap.add_argument("--redo-below", type=float, default=None, metavar="S",
                    help="also recalibrate signatures the file has at under S seconds per iteration (merged into it)")
    ap.add_argument("--type-capped", action="store_true",
                    help="recalibrate only signatures whose row gets the scale's type_caps (merged into the file)")
    args = ap.parse_args()

    from bench.cost import COSTS_DIR, module_signature, sampled_rois
    from bench.data import synth
    from bench.plan import Scale, make_plan, synth_spec
    from bench.recipes import Catalogue
    from bench.vocab import RowStatus

    scale = Scale.load(args.scale)
    tmp = Path(tempfile.mkdtemp(prefix="bench-costs-"))
    picked: dict[str, tuple[str, dict]] = {}
    counts: dict[str, int] = {}
    cat = Catalogue()
    for table in cat.tables():
        plan = make_plan([(table, list(table.rows))], args.scale, tmp / "results")
        for pr in plan.rows:
            if pr.status != RowStatus.RUNNABLE or pr.run_key not in plan.runs:
                continue
            spec = plan.runs[pr.run_key]
            sig = module_signature(spec.config.get("model"))
            counts[sig] = counts.get(sig, 0) + 1
            if args.type_capped and not spec.overlay.get("type_caps"):
                continue
            if sig not in picked and (args.only is None or any(o in sig for o in args.only)):
                picked[sig] = (f"{table.name}/{pr.row.id}", spec)
    out_path = args.write or COSTS_DIR / f"{scale.name}.yaml"
    merge = args.only or args.missing or args.redo_below is not None or args.type_capped
    old = yaml.safe_load(out_path.read_text()) if out_path.exists() and merge else {}
    rates = dict((old or {}).get("rates") or {})
    if args.missing or args.redo_below is not None:
        picked = {k: v for k, v in picked.items() if k not in rates and args.missing
                  or args.redo_below is not None and k in rates and rates[k]["s_per_iter"] < args.redo_below}
    print(f"# {len(picked)} signatures; {args.warmup} warm-up + {args.iters} timed iterations each; "
          f"scale {scale.name} ({scale.description}); {machine()}; {dt.date.today()}")
    print(f"{'signature':70} {'rows':>4} {'s/iter':>7} {'spread':>13} {'test s/img':>10} {'fixed s':>7}  row")
    from mmengine.config import Config

    def write() -> None:  # after every signature: an interrupted calibration keeps what it measured
        out_path.parent.mkdir(parents=True, exist_ok=True)
        doc = dict(machine=machine(), measured_at=str(dt.date.today()), scale=scale.name,
                   input_size=scale.input_size, batch_size=scale.batch_size,
                   method=("benchmarks/smoke_costs.py: median of timed_iters training iterations after warmup_iters "
                           "untimed ones; test over test_images synthetic validation images; fixed = Runner set-up + the "
                           f"scale's checkpoint saves + {OUTSIDE_S:.0f} s of measurement and job process"),
                   rates=dict(sorted(rates.items())))
        tmp_out = out_path.with_suffix(".yaml.tmp")
        tmp_out.write_text("# written by benchmarks/smoke_costs.py; read by bench/cost.py\n"
                           + yaml.safe_dump(doc, sort_keys=False, width=120))
        os.replace(tmp_out, out_path)

    for sig, (row, spec) in sorted(picked.items()):
        t_sig = time.time()
        if spec.dataset == "synth":
            synth.generate(Path(spec.dataset_root), synth.SynthSpec(**spec.data_spec))
        work = tmp / spec.run_key
        work.mkdir(parents=True, exist_ok=True)
        Config(spec.config).dump(str(work / "config.py"))
        p = subprocess.run([sys.executable, "-c", CHILD, str(work / "config.py"), str(work / "train"),
                            str(args.warmup), str(args.iters), str(args.test_images)], capture_output=True, text=True, cwd=REPO)
        shutil.rmtree(work, ignore_errors=True)  # checkpoints: hundreds of MB per signature
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("COST ")]
        if p.returncode or not lines:
            print(f"{sig:70} FAILED ({row}): {(p.stderr.strip().splitlines() or ['?'])[-1][:200]}")
            continue
        c = json.loads(lines[-1][5:])
        its = sorted(c["iter_s"])
        s_iter = its[len(its) // 2]
        n_ckpt = (scale.iterations or 0) // (scale.checkpoint_interval or 10**9)
        fixed = c["setup_s"] + n_ckpt * c["checkpoint_s"] + OUTSIDE_S
        test_img = c["test_s"] / max(1, c["test_images"])
        rates[sig] = dict(s_per_iter=round(s_iter, 3), test_s_per_image=round(test_img, 3), fixed_s=round(fixed, 1),
                          row=row, rows=counts[sig], rois=sampled_rois(spec.config.get("model")), warmup_iters=args.warmup, timed_iters=len(its),
                          test_images=c["test_images"])
        print(f"{sig:70} {counts[sig]:>4} {s_iter:7.2f} {its[0]:6.2f}-{its[-1]:<6.2f} {test_img:10.2f} {fixed:7.1f}  {row} "
              f"[{time.time() - t_sig:.0f} s]", flush=True)
        write()
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"# wrote {out_path} ({len(rates)} signatures)")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"# took {time.time() - t0:.0f} s")
