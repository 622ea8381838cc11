"""The `bench` command line. Each command is a thin layer over the pipeline modules:
recipes -> plan -> launch -> run -> collect -> report."""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import click

# mmengine 0.10.7 imports pkg_resources, which warns on every start: not the user's concern
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

from bench import __version__


def _console():
    from rich.console import Console

    # piped output (CI logs, files) is not squeezed into 80 columns
    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", 200))
    return Console(highlight=False, soft_wrap=False, width=width)


class BenchError(click.ClickException):
    def show(self, file=None):
        click.echo(f"bench: error: {self.format_message()}", err=True)


def _catalogue(ctx: click.Context):
    from bench.recipes import Catalogue, RecipeError

    try:
        return Catalogue(ctx.obj.get("recipes"))
    except RecipeError as e:
        raise BenchError(str(e)) from None


def _load(ctx: click.Context, name: str):
    from bench.recipes import RecipeError

    cat = _catalogue(ctx)
    try:
        return cat, cat.load(name)
    except RecipeError as e:
        raise BenchError(str(e)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="bench")
@click.option("--recipes", type=click.Path(file_okay=False, path_type=Path), envvar="BENCH_RECIPES",
              help="Recipes folder (default: the repository's recipes/).")
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), envvar="BENCH_RESULTS",
              help="Results folder (default: the repository's results/).")
@click.pass_context
def main(ctx: click.Context, recipes: Path | None, results: Path | None) -> None:
    """Reproduce the result tables of instance-segmentation papers and check, cell by cell,
    whether the published numbers hold.

    Tables are named PAPER/TABLE (csr-d2s/table-ii, sbr-cnn/table-6); a bare TABLE works where it is
    unique (table-ii).
    """
    ctx.ensure_object(dict)
    ctx.obj["recipes"] = recipes
    ctx.obj["results"] = results


# ----------------------------------------------------------------------------------------- list
def _safe_row_status(row):
    """bench.resolve.row_status, but a row whose config cannot be built at all (a malformed base config,
    a file mmengine refuses) is reported as 'cannot resolve: <reason>' instead of crashing the command."""
    from bench.rowstatus import safe_row_status

    return safe_row_status(row)


def _row_record(table, row, with_hash: bool) -> dict:
    from bench.rowstatus import cached_model_hash

    status, reason = _safe_row_status(row)
    rec = {"table": table.name, "position": row.position, "id": row.id, "label": row.label,
           "status": str(status), "reason": reason or None,
           "fidelity": row.fidelity, "deviations": list(row.deviations),
           "published": {k: v for k, v in row.published.items()}, "baseline": row.baseline}
    if with_hash:
        rec["config_hash"] = cached_model_hash(row)  # None: no model, or a config that does not resolve
    return rec


EVALUATORS = ["pycocotools", "faster-coco-eval", "hotcoco", "auto"]


def _evaluator(name: str, say: bool = True):
    """The COCO evaluator ``name`` resolves to here (bench.evaluators: cross-checked, or refused with the
    difference); said on stdout when ``say``."""
    from bench.evaluators import EvaluatorError, resolve

    try:
        chosen = resolve(name)
    except EvaluatorError as e:
        raise BenchError(str(e)) from None
    if say:
        click.echo(f"evaluator: {chosen.label}" + (f" (not chosen: {chosen.why})" if chosen.why else ""))
    return chosen

@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print every table's rows as JSON.")
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """List papers and tables, with row counts by status."""
    from bench.recipes import RecipeError
    from bench.vocab import RowStatus

    cat = _catalogue(ctx)
    try:
        tables = cat.tables()
    except RecipeError as e:
        raise BenchError(str(e)) from None
    if as_json:
        out = [{"table": t.name, "paper": t.paper.slug, "number": t.number, "title": t.title,
                "rows": [_row_record(t, r, with_hash=True) for r in t.rows]} for t in tables]
        click.echo(json.dumps(out, indent=2))
        return
    # a plain aligned table (rich's import and layout would double this command's start-up)
    import shutil

    # of the runnable rows, those declared faithful / approximate (recipes.Row: absent is unstated)
    head = ("table", "title", "rows", "runnable", "faithful", "approximate", "model missing", "reference only",
            "refused")
    lines = []
    for t in tables:
        st = [_safe_row_status(r)[0] for r in t.rows]
        fid = [r.fidelity for r, s in zip(t.rows, st) if s is RowStatus.RUNNABLE]
        lines.append((t.name, t.title, str(len(t.rows)), str(st.count(RowStatus.RUNNABLE)),
                      str(fid.count("faithful")), str(fid.count("approximate")),
                      str(st.count(RowStatus.MODEL_MISSING)), str(st.count(RowStatus.REFERENCE_ONLY)),
                      str(st.count(RowStatus.REFUSED))))
    widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]
    room = shutil.get_terminal_size((120, 24)).columns - sum(widths) + widths[1] - 2 * (len(head) - 1)
    widths[1] = max(12, min(widths[1], room))

    def fmt(cells) -> str:
        out = []
        for i, (c, w) in enumerate(zip(cells, widths)):
            c = c if len(c) <= w else c[: w - 1] + "…"
            out.append(c.ljust(w) if i < 2 else c.rjust(w))
        return "  ".join(out).rstrip()

    click.echo(fmt(head))
    click.echo("  ".join("-" * w for w in widths))
    for cells in lines:
        click.echo(fmt(cells))
    approx = sum(int(x[5]) for x in lines)
    click.echo(f"{len(tables)} tables, {sum(len(t.rows) for t in tables)} rows"
               + (f"; {approx} runnable row{'s run' if approx != 1 else ' runs'} an approximate port "
                  "(`bench show TABLE` lists the deviations)" if approx else ""))


# ----------------------------------------------------------------------------------------- show
def _fmt(v) -> str:
    if v is None:
        return "?"
    if isinstance(v, bool):
        return "✓" if v else "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


@main.command("show")
@click.argument("table")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.pass_context
def show_cmd(ctx: click.Context, table: str, as_json: bool) -> None:
    """Show TABLE as the paper prints it (published cells), with each row's status and fidelity.

    '?' marks a cell the paper text does not show (see the notes). Fidelity: 'faithful' or 'approximate'
    (a port that differs from the original system; the notes list each deviation), blank where the recipe
    states none."""
    _, t = _load(ctx, table)
    if as_json:
        out = {"table": t.name, "number": t.number, "title": t.title,
               "columns": [c.model_dump() for c in t.columns],
               "rows": [_row_record(t, r, with_hash=True) | {"factors": r.factors,
                                                              "released_checkpoint": _zoo_link(r, as_dict=True)}
                        for r in t.rows]}
        click.echo(json.dumps(out, indent=2))
        return
    from rich.table import Table as RTable

    rt = RTable(title=f"{t.paper.slug} Table {t.number}: {t.title}", caption=t.caption)
    rt.add_column("#", justify="right")
    rt.add_column("row")
    for c in t.columns:
        rt.add_column(c.label, justify="right")
    rt.add_column("status")
    rt.add_column("fidelity")
    notes = []
    for r in t.rows:
        status, reason = _safe_row_status(r)
        cells = [_fmt(r.published[c.key]) if c.key in r.published else
                 (_fmt(r.factors.get(c.key)) if c.key in r.factors else "") for c in t.columns]
        rt.add_row(str(r.position), r.label, *cells, str(status), r.fidelity or "")
        if reason:
            notes.append(f"row {r.position} ({r.id}): {status}: {reason}")
        for d in r.deviations:
            notes.append(f"row {r.position} ({r.id}): approximate port: {d}")
        link = _zoo_link(r)
        if link is not None:
            notes.append(f"row {r.position} ({r.id}): mmdet model zoo {link.model.name}: {link.describe()}")
        for k, n in r.published_notes.items():
            notes.append(f"row {r.position} ({r.id}) {k}: {n}")
    from rich.markup import escape

    con = _console()
    con.print(rt)
    for n in notes:   # recipe text, never rich markup ('[18]', '[dim]' are printed as written)
        con.print(f"  [dim]{escape(n)}[/dim]")


def _zoo_link(row, as_dict: bool = False):
    """The row's mmdet model-zoo link (bench.zoo), or None; a metafile that cannot be read is no link."""
    from bench.zoo import link

    try:
        lk = link(row)
    except Exception:  # noqa: BLE001 - the zoo link is extra information: never fail a listing for it
        return None
    return lk.as_dict() if (as_dict and lk is not None) else lk


# ------------------------------------------------------------------------------------- validate
@main.command("validate")
@click.pass_context
def validate_cmd(ctx: click.Context) -> None:
    """Load every recipe and check it: schema, configs, overrides, baselines. Exit 1 on any error."""
    from bench.recipes import RecipeError
    from bench.rowstatus import row_check
    from bench.vocab import RowStatus

    cat = _catalogue(ctx)
    errors: list[str] = []
    n_rows = 0
    for name in cat.names():
        try:
            t = cat.load(name)
        except RecipeError as e:
            errors.append(str(e))
            continue
        for r in t.rows:
            n_rows += 1
            where = f"{cat.paths[name]}: row {r.position} (id {r.id!r})"
            if r.model is not None:
                status, reason, config_error = row_check(r)  # cached by the row's spec and bench's code
                if config_error:
                    errors.append(f"{where}, field model: {config_error}")
                elif status is RowStatus.REFUSED:
                    errors.append(f"{where}: refused: {reason}")
            if r.baseline and "/" in r.baseline:
                try:
                    cat.find_row(r.baseline, t)
                except RecipeError as e:
                    errors.append(f"{where}, field baseline: {e}")
    if errors:
        for e in errors:
            click.echo(e, err=True)
        click.echo(f"bench validate: {len(errors)} error(s)", err=True)
        sys.exit(1)
    click.echo(f"bench validate: {len(cat.names())} tables, {n_rows} rows: ok")


# ----------------------------------------------------------------------------------------- data
@main.group("data")
def data_group() -> None:
    """Datasets: make the synthetic set, check a real data root."""


@data_group.command("synth")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: $BENCH_DATA or ~/.cache/bench/data/synth-<key>).")
@click.option("--train-images", default=96, show_default=True)
@click.option("--val-images", default=24, show_default=True)
@click.option("--size", default=160, show_default=True, help="Image width and height in pixels (160: the smoke scale's set).")
@click.option("--seed", default=0, show_default=True)
@click.option("--force", is_flag=True, help="Rewrite even if the folder holds the same dataset.")
@click.option("--layout", type=click.Choice(["synth", "coco", "cityscapes"]), default="synth", show_default=True,
              help="synth: the smoke scale's set. coco / cityscapes: a small made-up root in the exact on-disk layout "
                   "of COCO 2017 or of mmdet's converted Cityscapes (for exercising paper configs; needs --out).")
def data_synth(out: Path | None, train_images: int, val_images: int, size: int, seed: int, force: bool,
               layout: str) -> None:
    """Write the deterministic synthetic COCO-format instance-segmentation set (or a real-format root)."""
    from bench.data import synth

    if layout != "synth":
        from bench.data import layouts

        if out is None:
            raise BenchError(f"--layout {layout} needs --out DIR")
        src = click.get_current_context().get_parameter_source
        n_train = train_images if src("train_images").name != "DEFAULT" else (8 if layout == "coco" else 4)
        n_val = val_images if src("val_images").name != "DEFAULT" else (4 if layout == "coco" else 2)
        try:
            m = (layouts.write_coco(out, n_train, n_val, seed=seed) if layout == "coco"
                 else layouts.write_cityscapes(out, n_train, n_val, seed=seed))
        except FileExistsError as e:
            raise BenchError(str(e)) from None
        click.echo(f"{out}: {layout} layout: " + ", ".join(
            f"{k} {v['images']} images / {v['instances']} instances ({v['crowd']} crowd)" for k, v in m["splits"].items()))
        return

    spec = synth.SynthSpec(train_images=train_images, val_images=val_images, width=size, height=size, seed=seed)
    out = out or synth.default_dir()
    try:
        m = synth.generate(out, spec, force=force)
    except FileExistsError as e:
        raise BenchError(str(e)) from None
    s = m["splits"]
    click.echo(f"{out}: train {s['train']['images']} images / {s['train']['instances']} instances, "
               f"val {s['val']['images']} images / {s['val']['instances']} instances, classes {', '.join(m['classes'])}")


@data_group.command("check")
@click.argument("args", nargs=-1, required=True, metavar="DATASET ROOT | DATASET=ROOT...")
@click.option("--split", default=None, help="Evaluation split (default: val2017 / cityscapes-val).")
def data_check(args: tuple[str, ...], split: str | None) -> None:
    """Check that ROOT holds the files a paper-scale run on DATASET needs (coco or cityscapes):
    `bench data check coco /data/coco`, or several at once: `bench data check coco=/data/coco cityscapes=/data/cs`."""
    from bench.data.datasets import LAYOUTS, DataError, check_root

    if len(args) == 2 and "=" not in args[0] and "=" not in args[1]:
        pairs = [(args[0], args[1])]
    elif all("=" in a for a in args):
        pairs = [tuple(a.split("=", 1)) for a in args]
    else:
        raise BenchError("give DATASET ROOT, or DATASET=ROOT pairs")
    failed = False
    for dataset, root in pairs:
        if dataset not in LAYOUTS or dataset == "synth":
            raise BenchError(f"unknown dataset {dataset!r} (coco or cityscapes)")
        sp = split or ("val2017" if dataset == "coco" else "cityscapes-val")
        try:
            check_root(dataset, Path(root), sp)
            click.echo(f"{root}: {dataset} ({sp}) ok")
        except DataError as e:
            click.echo(f"bench: error: {e}", err=True)
            failed = True
    if failed:
        sys.exit(1)


# ------------------------------------------------------------------------------------------ run
def _results_root(ctx: click.Context) -> Path:
    from bench.results import default_results_dir

    return ctx.obj.get("results") or default_results_dir()


def _select_rows(table, row_ids: tuple[str, ...]):
    from bench.recipes import RecipeError

    if not row_ids:
        return list(table.rows)
    try:
        return [table.row(r) for r in row_ids]
    except RecipeError as e:
        raise BenchError(str(e)) from None


def _print_plan(plan) -> None:
    from rich.table import Table as RTable

    from bench.cost import calibration as plan_calibration
    from bench.cost import source_kind

    con = _console()
    rt = RTable(title=f"plan at {plan.scale.name} scale: {plan.scale.description}")
    smoke = plan.scale.name == "smoke"
    for c in ("table", "#", "row", "status", "action", "run key", "est. min" if smoke else "est. GPU-h", "note"):
        rt.add_column(c)
    for pr in plan.rows:
        note = pr.reason
        if pr.action == "done":
            note = f"result exists: {pr.result}"
        elif pr.shared_with:
            note = "one training serves: " + ", ".join(pr.shared_with)
        est = pr.est_minutes if smoke else pr.est_gpu_hours
        est_s = f"{est:.1f}" if pr.action == "run" and est is not None else ""
        if smoke and est_s and pr.est_source:
            est_s += " " + source_kind(pr.est_source)
        elif not smoke and est_s and pr.est_source:
            est_s += " " + pr.est_source.split(":")[0]
        rt.add_row(pr.table, str(pr.row.position), pr.row.id, str(pr.status), pr.action, pr.run_key or "",
                   est_s, note)
    con.print(rt)
    n_run = len(plan.runs)
    if smoke:
        from collections import Counter

        ran = [pr for pr in plan.rows if pr.action == "run" and pr.est_minutes is not None]
        kinds = Counter(source_kind(pr.est_source or "formula") for pr in ran)
        cal = plan_calibration(plan.scale.name)
        said = {"results": "from your finished runs of the same models",
                "calibration": "from the calibration" + (f" on {cal['machine']}" if cal.get("machine") else ""),
                "formula": "from a rough formula (models never calibrated)"}
        cost = (f"about {sum(pr.est_minutes for pr in ran):.0f} min, one run at a time; rates of "
                + ", ".join(f"{n} row(s) {said[k]}" for k, n in kinds.items()))
    else:
        ran = [pr for pr in plan.rows if pr.action == "run" and pr.est_gpu_hours]
        n_pre = sum((pr.est_source or "").startswith("preflight") for pr in ran)
        unknown = [pr for pr in plan.rows if pr.action == "run" and pr.est_gpu_hours is None]
        cost = (f"about {sum(pr.est_gpu_hours for pr in ran):.0f} GPU-hours: {n_pre} run(s) rated by a GPU preflight, "
                f"{len(ran) - n_pre} by the formula (0.11 V100-s per training image: Mask R-CNN R-50 1x in mmdet's "
                "model zoo; other models differ)" + (f"; {len(unknown)} without a schedule" if unknown else ""))
    con.print(f"{n_run} run(s) to start; estimated cost: {cost}")
    shown = plan.scale.as_dict()
    if shown.get("type_caps"):   # the rules without their reasons (in the scale file): one line stays readable
        shown["type_caps"] = [{k: v for k, v in r.items() if k != "why"} for r in shown["type_caps"]]
    con.print(f"overlay ({plan.scale.name}): " + json.dumps(shown))


@main.command("run")
@click.argument("table")
@click.argument("rows", nargs=-1)
@click.option("--scale", default="smoke", show_default=True,
              help="smoke: synthetic data, tiny schedule, CPU. paper: the recipe as the paper states it. "
                   "Or a scale YAML (a variant of bench/scales/smoke.yaml).")
@click.option("--data-root", "data_root", multiple=True, metavar="[DATASET=]DIR",
              help="Dataset root for --scale paper: DIR, or coco=DIR / cityscapes=DIR (repeatable, for a table mixing "
                   "datasets); at smoke scale the synthetic set's folder.")
@click.option("--weights-dir", "weights_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding pretrained checkpoints by file name (repeatable; then $BENCH_WEIGHTS, then torch's "
                   "hub cache). Paper-scale configs load them from there instead of their URLs.")
@click.option("--no-preflight", is_flag=True, help="At paper scale, submit without preflighting each run first.")
@click.option("--cluster", type=click.Choice(["local", "inline", "slurm"]), default="local", show_default=True,
              help="local: submitit subprocesses on this machine; inline: in this process; slurm: a SLURM cluster.")
@click.option("--profile", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Cluster profile YAML (slurm/<name>.yaml) for --cluster slurm.")
@click.option("--max-parallel", type=int, default=None,
              help="Concurrent local jobs (default: number of GPUs, or 1 on a CPU machine).")
@click.option("--gpus", type=int, default=None, help="GPUs per run at paper scale (default: the recipe's).")
@click.option("--tasks", type=click.IntRange(min=1), default=None,
              help="CPU processes per run (torch.distributed with gloo), at any scale: the total batch (the paper's, "
                   "or the scale's) is split over them; one result, written by rank 0. For GPUs use --gpus (NCCL).")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train each row with N seeds (the scale's seed, +1, ...); seeds after the first write to "
                   "results/seeds/<k>/, and reports show mean and spread and use it as noise for claims.")
@click.option("--force", is_flag=True, help="Rerun rows whose results already exist.")
@click.option("--log", "log", type=click.Choice(["tensorboard", "wandb", "mlflow"]), default=None,
              help="Also log the training to this mmengine visualizer backend, offline, under each run's "
                   "train/<time>/vis_data/ (refused with the reason if its package is not installed). Not part of the "
                   "run key: a row already done is not retrained for it.")
@click.option("--evaluator", type=click.Choice(EVALUATORS), default="auto",
              show_default=True, help="COCO evaluator of the jobs: one cross-checked against pycocotools (the 12 stats "
              "to 1e-9 and the per-image matches identical on a fixed set, cached per version) or refused with the "
              "difference; auto: the fastest verified one installed, else pycocotools. Recorded in each result; not "
              "part of the run key (the numbers are the same).")
@click.option("--dry-run", is_flag=True, help="Print the plan (what runs, what is skipped and why, the estimated cost of "
              "each run and where the estimate comes from) and stop.")
@click.pass_context
def run_cmd(ctx, table, rows, scale, data_root, weights_dirs, no_preflight, cluster, profile, max_parallel, gpus, tasks,
            seeds, force, log, evaluator, dry_run) -> None:
    """Plan TABLE's rows (or only ROWS), skip those already done, train and evaluate the rest.

    Each run writes results/<scale>/<paper>/<table>/<row>.json. A model shared by several rows
    (or tables) trains once. A failed row is recorded with its reason; the others go on."""
    from bench.data.datasets import DataError
    from bench.plan import PlanError, make_plan

    cat, t = _load(ctx, table)
    selected = _select_rows(t, rows)
    root = _results_root(ctx)
    roots = _data_roots(data_root)
    if scale == "paper" and roots is None:
        raise BenchError("--scale paper needs --data-root (a COCO or Cityscapes root, or coco=DIR cityscapes=DIR; "
                         "see `bench data check`)")
    chosen = _evaluator(evaluator)
    try:
        plans = [make_plan([(t, selected)], scale, root, data_root=roots, force=force, gpus=gpus, seed_index=k,
                           weights_dirs=list(weights_dirs), log=log, evaluator=chosen.name, tasks=tasks)
                 for k in range(seeds)]
    except (PlanError, DataError) as e:
        raise BenchError(str(e)) from None
    plan = plans[0]
    _print_plan(plan)
    for k, extra in enumerate(plans[1:], start=1):
        click.echo(f"seed {extra.scale.seed} (results/seeds/{k}/): {len(extra.runs)} run(s) to start, "
                   f"{sum(pr.action == 'done' for pr in extra.rows)} done")
        plan.runs.update(extra.runs)
        plan.reuse += extra.reuse
    if plan.reuse and not dry_run:
        from bench.plan import apply_reuse

        for name in apply_reuse(plan):
            click.echo(f"{name}: result written from the finished run of the same model (no new training)")
    if dry_run or not plan.runs:
        if not plan.runs and not dry_run:
            done = sum(pr.action in ("done", "reuse") for pr in plan.rows)
            cannot = sum(pr.action == "cannot run" for pr in plan.rows)
            click.echo(f"nothing to run: {done} row(s) already done (--force reruns them), {cannot} cannot run")
            _next_steps(t, plan.scale.name)
        return
    runs = list(plan.runs.values())
    if cluster in ("local", "inline"):   # inline too: a multi-GPU config in one CPU process has no launcher
        from bench.launch import LaunchError, check_local_gpus

        try:
            check_local_gpus(runs)
        except LaunchError as e:
            hint = (" To exercise the paper config on this machine, `bench preflight` runs it in one process."
                    if plan.scale.name == "paper" else "")
            raise BenchError(str(e) + hint) from None
    if cluster == "inline" and any(getattr(s, "tasks", 1) > 1 for s in runs):
        raise BenchError("--cluster inline runs in this one process: a multi-process run (--tasks, --gpus > 1) "
                         "needs --cluster local or slurm")
    if plan.scale.name == "paper" and not no_preflight:
        _preflight_before_submit(plan, root)
        if not plan.runs:
            click.echo("nothing to submit: every run failed its preflight (see above; --no-preflight skips it)")
            sys.exit(1)
    runs = list(plan.runs.values())
    if force and not dry_run:  # --force starts from scratch: old work dirs moved aside (never deleted)
        from bench.launch import start_clean

        for line in start_clean(runs):
            click.echo(line)
    if plan.scale.name == "smoke":
        from bench.data import synth

        try:
            synth.generate(Path(runs[0].dataset_root), synth.SynthSpec(**runs[0].data_spec))
        except (FileExistsError, OSError) as e:
            raise BenchError(str(e)) from None
    if cluster == "slurm":
        from bench.cluster import submit_slurm

        try:
            jobs = submit_slurm(runs, profile)
        except Exception as e:  # noqa: BLE001 - report submission problems as one clear error
            raise BenchError(str(e)) from None
        for j in jobs:
            click.echo(j)
        click.echo("submitted; follow with `bench status " + t.name + f" --scale {plan.scale.name}`")
        return
    outcomes = _run_with_progress(runs, cluster, max_parallel)
    skipped = [o for o in outcomes if getattr(o, "skipped", False)]
    failed = [o for o in outcomes if not o.ok and o not in skipped]
    click.echo(f"{len(outcomes) - len(failed) - len(skipped)} run(s) done, {len(failed)} failed"
               + (f", {len(skipped)} skipped (running elsewhere)" if skipped else ""))
    for o in skipped:
        click.echo(f"  skipped: {', '.join(tg['table'] + '/' + tg['row'] for tg in o.spec.targets)}: {o.detail}")
    for o in failed:
        click.echo(f"  failed: {', '.join(tg['table'] + '/' + tg['row'] for tg in o.spec.targets)}: {o.detail}")
    if log:
        click.echo(f"{log} logs: under each run's train/<time>/vis_data/ in " + ", ".join(s.work_dir for s in runs)
                   + (f"  (view: tensorboard --logdir {Path(runs[0].work_dir).parent})" if log == "tensorboard" else ""))
    _next_steps(t, plan.scale.name, failed)
    if failed:
        sys.exit(1)


def _next_steps(table, scale: str, failed=()) -> None:
    """What to do after a run: the report command and the page it writes, or the first failure's log."""
    from bench.report.build import default_reports_dir

    scale_opt = "" if scale == "smoke" else f" --scale {scale}"
    page = default_reports_dir() / scale / table.paper.slug / f"{table.table}.html"
    click.echo("next:")
    if failed:
        tg = failed[0].spec.targets[0]
        click.echo(f"  bench logs {tg['table']} {tg['row']}{scale_opt}    # why the first failed row failed")
    click.echo(f"  bench report {table.name} --html{scale_opt}    # writes {page}")
    click.echo(f"  bench status {table.name}{scale_opt}")


def _data_roots(values):
    from bench.plan import PlanError, parse_data_roots

    try:
        return parse_data_roots(values)
    except PlanError as e:
        raise BenchError(str(e)) from None


def _preflight_before_submit(plan, results_root: Path) -> None:
    """Preflight each run (one iteration, cached by run key) and take the failing ones out of the
    plan, recording each as failed with the preflight's reason."""
    from bench.preflight import preflight_plan
    from bench.results import Result, write_result

    click.echo(f"preflight of {len(plan.runs)} run(s) before submitting (1 iteration each, cached by run key; "
               "--no-preflight skips it)")
    recs = preflight_plan(plan, results_root, iters=1, device=_local_device(), use_cache=True,
                          on_result=lambda r: click.echo(_preflight_line(r)))
    for rec in recs:
        if rec["status"] == "ok":
            continue
        spec = plan.runs.pop(rec["run_key"])
        for tg in spec.targets:
            write_result(Path(tg["path"]), Result(
                status="failed", table=tg["table"], row=tg["row"], label=tg["label"], run_key=spec.run_key,
                config_hash=spec.config_hash, published=tg["published"], config=spec.config, overlay=spec.overlay,
                failure=f"refused by preflight: {rec['reason']}", work_dir=spec.work_dir))
        click.echo(f"  refused (not submitted): {', '.join(rec['rows'])}: {rec['reason']}")


def _local_device() -> str:
    from bench.launch import visible_gpus

    return "cuda" if visible_gpus() else "cpu"


def _preflight_line(r: dict) -> str:
    mem = f"{r['peak_mem_mb']:.0f} MB" if r.get("peak_mem_mb") else "-"
    spi = f"{r['s_per_iter']:.2f} s/it" if r.get("s_per_iter") else "-"
    counts = (f"train {r.get('train_images')} img / {r.get('train_instances')} inst, "
              f"eval {r.get('eval_images')} img / {r.get('eval_instances')} inst")
    cached = " (cached)" if r.get("cached") else ""
    head = f"{r['status']:6s} {', '.join(r['rows'])}{cached}"
    return f"{head}: {spi}, {mem}, {counts}" + (f": {r['reason']}" if r["status"] != "ok" else "")


@main.command("preflight")
@click.argument("tables", nargs=-1, required=True)
@click.option("--row", "row_ids", multiple=True, help="Only these rows (repeatable; ids of the one TABLE given).")
@click.option("--data-root", "data_root", multiple=True, required=True, metavar="[DATASET=]DIR",
              help="DIR, or coco=DIR / cityscapes=DIR (repeatable).")
@click.option("--weights-dir", "weights_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding pretrained checkpoints by file name (repeatable; then $BENCH_WEIGHTS, hub cache).")
@click.option("--iters", type=click.IntRange(min=1), default=2, show_default=True, help="Training iterations per run.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--gpus", type=int, default=None, help="GPUs the cluster run will use (decides the per-GPU batch).")
@click.option("--tasks", type=click.IntRange(min=1), default=None,
              help="Run each preflight in N CPU processes (gloo; the paper's total batch split over them), as "
                   "`bench run --tasks N` would: distributed sampler, DDP gradients, the evaluation gathered from all ranks.")
@click.option("--batch-per-task", type=click.IntRange(min=1), default=None,
              help="With --tasks: train each process on N images per iteration instead of its planned share of the "
                   "paper's batch (to fit N processes in this machine's memory); the record says so.")
@click.option("--cached", "use_cache", is_flag=True,
              help="Reuse a run's cached record if it passed with at least ITERS iterations on this device.")
@click.option("--evaluator", type=click.Choice(EVALUATORS), default="auto",
              show_default=True, help="COCO evaluator the runs' jobs will use (as `bench run --evaluator`): the 2-image "
              "evaluation goes through it and the record names it.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run (a JSON list).")
@click.pass_context
def preflight_cmd(ctx, tables, row_ids, data_root, weights_dirs, iters, device, gpus, tasks, batch_per_task, use_cache,
                  evaluator, as_json) -> None:
    """Prove every run of TABLES' paper-scale plan starts, here, in minutes: real datasets counted as mmdet
    builds them, every checkpoint found and loaded with its keys checked, ITERS training iterations at the
    paper's input size and per-GPU batch with finite losses and gradients, then the test pipeline and the
    evaluator on 2 images. Exit 1 if any run fails. Records go to results/paper/preflight/<run key>.json."""
    from bench.data.datasets import DataError
    from bench.plan import PlanError, make_plan
    from bench.preflight import preflight_plan

    cat = _catalogue(ctx)
    pairs = []
    for name in tables:
        _, t = _load(ctx, name)
        pairs.append((t, _select_rows(t, tuple(row_ids)) if row_ids else list(t.rows)))
    if row_ids and len(tables) > 1:
        raise BenchError("--row selects rows of one table: give one TABLE with --row")
    root = _results_root(ctx)
    chosen = _evaluator(evaluator, say=False)
    try:
        plan = make_plan(pairs, "paper", root, data_root=_data_roots(data_root), force=True, gpus=gpus,
                         weights_dirs=list(weights_dirs), evaluator=chosen.name, tasks=tasks)
    except (PlanError, DataError) as e:
        raise BenchError(str(e)) from None
    cannot = [pr for pr in plan.rows if pr.action == "cannot run"]
    echo = (lambda r: None) if as_json else (lambda r: click.echo(_preflight_line(r)))
    if batch_per_task and not (tasks and tasks > 1):
        raise BenchError("--batch-per-task sets the batch of each of --tasks N processes: give --tasks 2 or more")
    if tasks and tasks > 1:
        if device != "cpu":
            raise BenchError("--tasks runs CPU processes (gloo): use it with --device cpu")
        from bench.dist_preflight import preflight_plan_tasks

        recs = preflight_plan_tasks(plan, root, tasks=tasks, iters=iters, use_cache=use_cache, on_result=echo,
                                    batch_per_task=batch_per_task)
    else:
        recs = preflight_plan(plan, root, iters=iters, device=device, use_cache=use_cache, on_result=echo)
    if as_json:
        out = [{k: r.get(k) for k in ("table", "row", "rows", "run_key", "status", "reason", "train_images",
                                       "train_instances", "train_ignored", "train_with_masks", "counted_images",
                                       "eval_images", "eval_instances", "iters", "s_per_iter", "first_iter_s",
                                       "peak_mem_mb", "mem_kind", "losses", "grad_params", "no_grad", "weights",
                                       "eval_metrics", "evaluator", "device", "batch_per_gpu", "wall_s", "cached",
                                       "tasks", "backend", "ranks", "cpu_changes", "batch_override")}
               for r in recs]
        out += [{"table": pr.table, "row": pr.row.id, "rows": [f"{pr.table}/{pr.row.id}"], "run_key": None,
                 "status": "not runnable", "reason": f"{pr.status}: {pr.reason}"} for pr in cannot]
        click.echo(json.dumps(out, indent=2, default=str))
    else:
        for pr in cannot:
            click.echo(f"{'skip':6s} {pr.table}/{pr.row.id}: {pr.status}: {pr.reason}")
        ok = sum(r["status"] == "ok" for r in recs)
        click.echo(f"preflight: {ok} of {len(recs)} run(s) ok, {len(recs) - ok} failed, {len(cannot)} row(s) not runnable")
    if any(r["status"] != "ok" for r in recs):
        sys.exit(1)


@main.command("weights")
@click.argument("tables", nargs=-1)
@click.option("--weights-dir", "weights_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding checkpoints by file name (repeatable; then $BENCH_WEIGHTS, torch's hub cache).")
@click.option("--missing", is_flag=True, help="List only the checkpoints not found here.")
@click.option("--check", is_flag=True,
              help="Compare each checkpoint file found (TABLES' files, or every file in the weights folders) with "
                   "its shipped key layout; exit 1 if one differs.")
@click.option("--record-layout", "record", multiple=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Write the key layout of this real checkpoint file (repeatable), replacing the shipped one; "
                   "says how it differs from it.")
@click.option("--layout-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where layouts are read and written (default: bench/data/checkpoint_layouts/).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def weights_cmd(ctx, tables, weights_dirs, missing, check, record, layout_dir, as_json) -> None:
    """The pretrained checkpoints TABLES' paper-scale configs load: URL, file name, and where it is here
    or where to put it (fetch them on a machine with internet; compute nodes are usually offline), and
    whether bench ships the file's key layout (what fabricated test files and `--check` compare with).

    \b
    Examples:
      bench weights amf-sparseinst/table-10 --missing
      bench weights --check amf-sparseinst/table-4 --weights-dir /data/weights
      bench weights --record-layout /data/weights/resnet50-0676ba61.pth
    """
    from bench.data.checkpoints import LAYOUTS_DIR, LayoutError, check_file, load_layout
    from bench.weights import search_dirs
    from bench.zoo import table_weights

    root = layout_dir or LAYOUTS_DIR
    if record:
        _record_layouts(record, root, as_json)
        return
    if not tables and not check:
        raise BenchError("name TABLES (or use --check / --record-layout FILE)")
    entries = table_weights([_load(ctx, n)[1] for n in tables], list(weights_dirs) or None,
                            on_error=lambda t, r, m: click.echo(f"{t} row {r!r}: cannot resolve its config: {m}", err=True))
    for e in entries:
        try:
            lay = load_layout(e["file_name"], root)
        except LayoutError as err:
            raise BenchError(str(err)) from None
        e["layout"] = (f"{lay['provenance'].get('source')}: {lay['provenance'].get('library', '')} "
                       f"{lay['provenance'].get('version', '')}".strip() if lay else None)
    if check:
        files = [Path(e["found"]) for e in entries if e["found"]] if tables else sorted(
            {p.resolve() for d in (list(weights_dirs) or search_dirs()) if d.is_dir() for p in d.iterdir()
             if p.is_file() and p.suffix in (".pth", ".pt", ".pkl", ".bin")})
        out = []
        for f in files:
            try:
                state, diffs = check_file(f, root)
            except Exception as err:  # noqa: BLE001 - an unreadable file is named, not a crash
                state, diffs = "unreadable", [f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"]
            out.append({"file": str(f), "state": state, "differences": diffs})
        out += [{"file": e["file_name"], "state": "missing", "differences": [f"put it at {e['put_at']}"]}
                for e in entries if not e["found"]]
        if as_json:
            click.echo(json.dumps(out, indent=2))
        else:
            for o in out:
                click.echo(f"{o['state']:10s} {o['file']}" + "".join(f"\n           {d}" for d in o["differences"]))
            click.echo(f"{len(out)} file(s): " + ", ".join(f"{sum(o['state'] == s for o in out)} {s}"
                                                         for s in dict.fromkeys(o["state"] for o in out)))
        if any(o["state"] in ("differs", "unreadable") for o in out):
            sys.exit(1)
        return
    items = [e for e in entries if not (missing and e["found"])]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    for e in items:
        where = f"found: {e['found']}" if e["found"] else f"MISSING: put it at {e['put_at']}"
        kind = ("released checkpoint (mmdet model zoo, for `bench eval --checkpoint zoo`): " + e["where"]
                if e.get("kind") == "released checkpoint" else "")
        click.echo(f"{e['file_name']}\n  {e['url'] or e['ref']}\n  {where}\n" + (f"  {kind}\n" if kind else "")
                   + f"  key layout: {e['layout'] or 'none shipped (bench weights --record-layout FILE)'}\n"
                   + f"  used by {len(e['rows'])} row(s): " + ", ".join(e["rows"][:6])
                   + (" ..." if len(e["rows"]) > 6 else ""))
    n_missing = sum(not e["found"] for e in entries)
    click.echo(f"{len(entries)} checkpoint file(s), {n_missing} missing")


def _record_layouts(files, root: Path, as_json: bool) -> None:
    """``bench weights --record-layout``: each real file's layout written over the shipped one, with what changed."""
    from bench.data.checkpoints import LayoutError, compare, load_layout, record_layout, write_layout

    out = []
    for f in files:
        try:
            old = load_layout(f.name, root)
        except LayoutError:
            old = None
        try:
            lay = record_layout(f, url=(old or {}).get("url"))
        except Exception as err:  # noqa: BLE001 - named, and nothing is written for it
            raise BenchError(f"{f}: cannot read it as a checkpoint: {type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}") from None
        diffs = compare(old, lay["container"], lay["tensors"]) if old else []
        path = write_layout(lay, root)
        out.append({"file": str(f), "layout": str(path), "tensors": len(lay["tensors"]),
                    "replaced": old["provenance"] if old else None, "differences_from_replaced": diffs})
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    for o in out:
        click.echo(f"{o['layout']}: {o['tensors']} tensors from {o['file']}"
                   + ("" if o["replaced"] is None else
                      " (the shipped layout agreed)" if not o["differences_from_replaced"] else
                      " (the shipped layout differed: " + "; ".join(o["differences_from_replaced"]) + ")"))


def _run_with_progress(runs, cluster: str, max_parallel: int | None):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from bench.launch import run_inline, run_local, visible_gpus

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} it"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), transient=False) as prog:
        tasks = {}
        for spec in runs:
            names = ", ".join(f"{tg['table'].split('/')[1]}/{tg['row']}" for tg in spec.targets)
            tasks[spec.run_key] = prog.add_task(names, total=spec.overlay.get("iterations") or 1, info="queued")

        def on_progress(spec, state):
            tid = tasks[spec.run_key]
            info = state.get("state", "starting")
            if state.get("loss") is not None:
                info += f" loss {state['loss']:.3f}"
            if state.get("finished") or state.get("state") in ("done", "failed"):
                info = state.get("state", "finished")
            prog.update(tid, completed=state.get("iter", 0), total=state.get("max_iters") or None, info=info)

        if cluster == "inline":
            return run_inline(runs, on_progress)
        n = max_parallel or max(1, visible_gpus())
        return run_local(runs, max_parallel=n, on_progress=on_progress)


# ----------------------------------------------------------------------------------------- eval
@main.command("eval")
@click.argument("table")
@click.argument("row")
@click.option("--checkpoint", required=True, metavar="FILE|zoo",
              help="The checkpoint to evaluate (an mmengine .pth or a bare state dict), or 'zoo': the row's released "
                   "mmdet model-zoo checkpoint, by file name from --weights-dir / $BENCH_WEIGHTS / torch's hub cache "
                   "(never downloaded).")
@click.option("--data-root", "data_root", multiple=True, metavar="[DATASET=]DIR",
              help="Dataset root as for `bench run` (at smoke scale: the synthetic set's folder).")
@click.option("--scale", default="smoke", show_default=True,
              help="Build the row's config as `bench run` does at this scale (smoke, paper, or a scale YAML).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate the first N images only (said in the result: never comparable to the paper).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--allow-partial", "allow_partial", multiple=True, metavar="KEY_PREFIX",
              help="Allow a partial load when every missing, unexpected or shape-mismatched key starts with one of "
                   "these prefixes (repeatable); the result says what was skipped.")
@click.option("--weights-dir", "weights_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding checkpoints by file name (repeatable; then $BENCH_WEIGHTS, torch's hub cache).")
@click.option("--evaluator", type=click.Choice(EVALUATORS), default="auto",
              show_default=True, help="COCO evaluator, as `bench run --evaluator`: one cross-checked against pycocotools "
              "or refused with the difference; auto: the fastest verified one installed. Recorded in the result.")
@click.pass_context
def eval_cmd(ctx, table, row, checkpoint, data_root, scale, limit, device, allow_partial, weights_dirs,
             evaluator) -> None:
    """Evaluate a given checkpoint (released weights, another training) as TABLE's ROW: the row's config as
    `bench run` builds it, the checkpoint loaded strictly as data (its keys checked against the model), the
    row's COCO evaluation, params, FLOPs and speed. Writes results/<scale>/checkpoint-evals/<paper>/<table>/<row>.json
    (source: checkpoint), never over the row's trained result; the report shows both."""
    from bench.data.datasets import DataError
    from bench.evaluate import EvalError, evaluate
    from bench.plan import PlanError

    _, t = _load(ctx, table)
    (r,) = _select_rows(t, (row,))
    note = released = None
    if checkpoint == "zoo":
        from bench.zoo import ZooError, local_checkpoint

        try:
            path, note, released = local_checkpoint(r, list(weights_dirs))
        except ZooError as e:
            raise BenchError(str(e)) from None
    else:
        path = Path(checkpoint)
    if scale == "paper" and not data_root:
        raise BenchError("--scale paper needs --data-root (as `bench run --scale paper`)")
    chosen = _evaluator(evaluator)
    try:
        out, res = evaluate(t, r, path, _results_root(ctx), scale=scale, data_root=_data_roots(data_root), limit=limit,
                            device=device, allow_partial=tuple(allow_partial), weights_dirs=list(weights_dirs),
                            checkpoint_note=note, released=released, on_line=click.echo, evaluator=chosen.name)
    except (EvalError, PlanError, DataError) as e:
        raise BenchError(str(e)) from None
    m = res.measured
    shown = ", ".join(f"{k} {m[k]:g}" for k in ("mask_AP", "box_AP", "params_M", "gflops", "fps") if m.get(k) is not None)
    click.echo(f"{t.name}/{r.id}: checkpoint {res.checkpoint['path']} (sha256 {res.checkpoint['sha256'][:12]}, "
               f"{res.checkpoint['size']} bytes, {res.checkpoint['keys_loaded']} keys loaded): {shown}")
    if limit:
        click.echo(f"  --limit {limit}: the first {res.measurement.eval_images} evaluation image(s) only: "
                   "never comparable to the paper")
    if res.measurement.scale == "smoke":
        from bench.report.rules import SMOKE_BANNER

        click.echo(f"  {SMOKE_BANNER}")
    click.echo(f"  result: {out}")


# --------------------------------------------------------------------------------------- status
def _tables_arg(ctx, names: tuple[str, ...]):
    cat = _catalogue(ctx)
    from bench.recipes import RecipeError

    try:
        return cat, ([cat.load(n) for n in names] if names else cat.tables())
    except RecipeError as e:
        raise BenchError(str(e)) from None


@main.command("status")
@click.argument("tables", nargs=-1)
@click.option("--scale", type=click.Choice(["smoke", "paper"]), default="smoke", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--all-rows", is_flag=True, help="Also list rows that never ran (default: tables with activity show all rows).")
@click.pass_context
def status_cmd(ctx, tables, scale, as_json, all_rows) -> None:
    """Per row: queued / running / done / failed / cancelled / not run, with progress and the last log line.

    Reads the results folder only, so it works from any process (and reattaches to SLURM jobs)."""
    from bench.collect import collect

    _, ts = _tables_arg(ctx, tables)
    col = collect(ts, scale, _results_root(ctx))
    active_tables = {s.table for s in col.states if s.run_status != "not run"}
    states = [s for s in col.states if tables or all_rows or s.table in active_tables]
    if as_json:
        click.echo(json.dumps([{
            "table": s.table, "position": s.position, "row": s.row, "label": s.label, "row_status": s.row_status,
            "run_status": s.run_status, "progress": s.progress, "last_log": s.last_log,
            "failure": s.result.failure if s.result else None, "job": s.job} for s in states], indent=2))
        return
    from rich.table import Table as RTable

    rt = RTable(title=f"status ({scale} scale, results in {_results_root(ctx)})")
    for c in ("table", "#", "row", "status", "progress / reason", "last log line"):
        rt.add_column(c, overflow="fold")
    for s in states:
        detail = s.progress or ""
        if s.result and s.result.failure:
            detail = s.result.failure
        elif s.run_status == "not run" and s.row_status != "runnable":
            detail = f"{s.row_status}: {s.reason}"
        elif s.result and s.result.status == "done" and s.result.measurement:
            m = s.result.measurement
            detail = f"{m.scale} scale, {m.iterations} it, {m.device}"
        rt.add_row(s.table, str(s.position), s.row, s.run_status, detail, (s.last_log or "")[-120:])
    con = _console()
    con.print(rt)
    if not states:
        con.print("no runs yet: start one with `bench run TABLE`")
    for p in col.problems:
        con.print(f"[yellow]problem:[/yellow] {p}")


@main.command("logs")
@click.argument("table")
@click.argument("row")
@click.option("--scale", type=click.Choice(["smoke", "paper"]), default="smoke", show_default=True)
@click.option("-n", "--lines", type=int, default=50, show_default=True, help="Last N lines (0: all).")
@click.pass_context
def logs_cmd(ctx, table, row, scale, lines) -> None:
    """Print the training log of TABLE's ROW (its latest run)."""
    from bench.collect import table_states

    _, t = _load(ctx, table)
    _select_rows(t, (row,))  # unknown row: error with "did you mean"
    states, _ = table_states(t, scale, _results_root(ctx))
    s = next(s for s in states if s.row == row)
    work = (s.job or {}).get("work_dir") or (s.result.work_dir if s.result else None)
    if not work:
        raise BenchError(f"{t.name} row {row!r} has not run at {scale} scale")
    logs = sorted(Path(work).glob("train/*/*.log"), key=lambda p: p.stat().st_mtime)
    job_logs = sorted(Path(work).glob("submitit/*_log.err"), key=lambda p: p.stat().st_mtime)
    if not logs and not job_logs:
        raise BenchError(f"no log yet in {work}")
    for path in logs[-1:] + job_logs[-1:]:
        text = path.read_text(errors="replace").splitlines()
        click.echo(f"==> {path} <==")
        click.echo("\n".join(text[-lines:] if lines else text))


# -------------------------------------------------------------------------------------- collect
@main.command("collect")
@click.argument("tables", nargs=-1)
@click.option("--scale", type=click.Choice(["smoke", "paper"]), default="smoke", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "md"]), default="md", show_default=True)
@click.option("--long", "long_form", is_flag=True, help="One line per (row, metric) instead of one per row.")
@click.pass_context
def collect_cmd(ctx, tables, scale, fmt, long_form) -> None:
    """Read result files into one frame: published, measured, delta, scale and status per row."""
    from bench.collect import collect, frame, wide

    _, ts = _tables_arg(ctx, tables)
    col = collect(ts, scale, _results_root(ctx))
    df = frame(ts, col)
    out = df if long_form else wide(df)
    if fmt == "csv":
        click.echo(out.to_csv(index=False), nl=False)
    elif fmt == "json":
        click.echo(out.to_json(orient="records", indent=2))
    else:
        click.echo(out.to_markdown(index=False) if not out.empty else "(no rows)")
    for p in col.problems:
        click.echo(f"problem: {p}", err=True)


# -------------------------------------------------------------------------------------- profile
@main.command("profile")
@click.argument("table")
@click.option("--json", "as_json", is_flag=True)
@click.option("--no-flops", is_flag=True, help="Count parameters only (FLOPs take a few seconds a row on a CPU).")
@click.pass_context
def profile_cmd(ctx, table, as_json, no_flops) -> None:
    """Build every row's model on the CPU (no weights, no data): trainable params and FLOPs vs published.

    Profiles are cached by each row's resolved model (as `bench audit` caches them): a second call is instant."""
    from dataclasses import asdict

    from bench.audit import cached_profiles

    _, t = _load(ctx, table)
    profiles = cached_profiles(t, flops=not no_flops)  # a row built before comes from the cache
    if as_json:
        click.echo(json.dumps([asdict(p) for p in profiles], indent=2))
        return
    from rich.table import Table as RTable

    def num(v, pct=False):
        if v is None:
            return "-"
        return f"{v * 100:+.2f}%" if pct else f"{v:.5g}"

    rt = RTable(title=f"{t.name}: parameters and FLOPs measured on the CPU vs published")
    for c in ("#", "row", "status", "params M", "published", "diff", "GFLOPs", "published", "diff", "note"):
        rt.add_column(c, overflow="fold")
    for p in profiles:
        rt.add_row(str(p.position), p.row, p.status, num(p.params_M), num(p.published_params_M),
                   num(p.params_rel_diff, True), num(p.gflops), num(p.published_gflops), num(p.gflops_rel_diff, True),
                   p.note)
    _console().print(rt)


# ---------------------------------------------------------------------------------------- audit
@main.command("audit")
@click.argument("tables", nargs=-1)
@click.option("--no-flops", is_flag=True, help="Parameters only (FLOPs take seconds a row on a CPU).")
@click.option("--json", "as_json", is_flag=True, help="Per row and metric: table, row, metric, published, measured, "
              "agreement (and the consistency findings).")
@click.pass_context
def audit_cmd(ctx, tables, no_flops, as_json) -> None:
    """Check TABLES (default: all) without training: #params and GFLOPs of each row's paper-scale model against
    the published cells (exact / within / outside, by the printed precision); the paper's published numbers
    against each other; each figure the text states (a recipe claim's delta) against the table's own cells;
    mmdet-zoo rows against the zoo's metafile. Comparable at any scale; profiles are cached by model."""
    from dataclasses import asdict

    from bench.audit import CLAIM_RULE, PRECISION_RULE, ZOO_RULE, as_json as audit_json, audit

    cat, ts = _tables_arg(ctx, tables)
    result = audit(ts, flops=not no_flops, catalogue=cat)
    if as_json:
        click.echo(json.dumps(audit_json(result), indent=2))
        return
    from rich.table import Table as RTable

    rt = RTable(title=f"audit: architecture cells of {len(ts)} table(s) (comparable at any scale)")
    for c in ("table", "#", "row", "metric", "published", "measured", "diff", "agreement", "note"):
        rt.add_column(c, overflow="fold")
    colour = {"exact": "green", "within": "green", "outside": "red"}
    for c in result.cells:
        word = f"[{colour[c.agreement]}]{c.agreement}[/]" if c.agreement in colour else c.agreement
        rt.add_row(c.table, str(c.position), c.row, c.metric, _fmt(c.published),
                   f"{c.measured:.5g}" if isinstance(c.measured, (int, float)) else "-",
                   f"{c.rel_diff * 100:+.2f}%" if c.rel_diff is not None else "", word, c.note[:120])
    con = _console()
    con.print(rt)
    for f in result.consistency:
        con.print(f"[yellow]{f.kind}:[/yellow] {', '.join(f.rows)}: {f.detail}")
    if result.claims:
        words = [c.agreement for c in result.claims]
        con.print(f"claims stating a figure: {len(words)}: " + ", ".join(
            f"{words.count(w)} {w}" for w in ("consistent", "inconsistent", "cannot check") if w in words))
        con.print(f"[dim]{CLAIM_RULE}[/dim]")
    if result.zoo:
        words = [z["agreement"] for z in result.zoo]
        con.print(f"model-zoo rows, published AP against the zoo's metafile: {len(words)} cells: " + ", ".join(
            f"{words.count(w)} {w}" for w in ("agrees", "differs", "no zoo number") if w in words))
        for z in result.zoo:
            if z["agreement"] == "differs":
                con.print(f"  [yellow]differs:[/yellow] {z['table']}/{z['row']} {z['metric']}: published {z['published']:g}, "
                          f"zoo {z['zoo_model']} {z['metafile']:g}" + (f" ({z['note']})" if z["note"] else ""))
        con.print(f"[dim]{ZOO_RULE}[/dim]")
    con.print(f"[dim]{PRECISION_RULE}[/dim]")
    con.print(f"{result.profiled} row(s) profiled, {result.cached} from the cache")


# --------------------------------------------------------------------------------------- cancel
@main.command("cancel")
@click.argument("table")
@click.argument("rows", nargs=-1)
@click.option("--scale", default="smoke", show_default=True, type=click.Choice(["smoke", "paper"]))
@click.pass_context
def cancel_cmd(ctx, table, rows, scale) -> None:
    """Cancel TABLE's queued or running jobs (or only ROWS'): scancel on SLURM, a signal locally.
    Each cancelled row is recorded as cancelled; its checkpoints stay, so a later run resumes."""
    from bench.cancel import cancel_rows

    _, t = _load(ctx, table)
    selected = _select_rows(t, rows)
    try:
        lines = cancel_rows(t, selected, scale, _results_root(ctx))
    except Exception as e:  # noqa: BLE001 - scancel / signal errors are reported plainly
        raise BenchError(str(e)) from None
    for line in lines or ["nothing to cancel: no queued or running job for these rows"]:
        click.echo(line)


# --------------------------------------------------------------------------------------- report
from bench.report.command import report_cmd  # noqa: E402  (cheap: pandas/matplotlib/jinja2 load on use)

main.add_command(report_cmd)


if __name__ == "__main__":  # pragma: no cover
    main()
