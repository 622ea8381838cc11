"""SLURM: cluster profiles, submission through submitit (one job array per resource shape),
SLURM job states for `bench status`, cancellation, and requeue-on-preemption.

A profile (``slurm/<name>.yaml``) says where and how jobs run; a run's GPU count comes from its recipe
(the paper's setup) unless the profile's ``gpus_per_node`` or ``bench run --gpus`` overrides it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench.launch import mark_pending
from bench.plan import RunSpec


class ClusterError(RuntimeError):
    pass


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    gpus_per_node: int = 0
    nodes: int = 1
    cpus_per_gpu: Optional[int] = None
    cpus_per_task: Optional[int] = None
    mem_per_gpu_gb: Optional[float] = None
    mem_gb: Optional[float] = None
    time_limit_min: int = 60
    constraint: Optional[str] = None
    setup: list[str] = []
    sbatch_extra: dict[str, Any] = {}
    array_parallelism: int = 8
    max_requeues: int = 3
    slurm_conf: Optional[str] = Field(None, description="path of slurm.conf (sets SLURM_CONF for the client commands)")


def load_profile(path: Path) -> Profile:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ClusterError(f"{path}: cannot read cluster profile: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ClusterError(f"{path}: not valid YAML: {e}") from None
    try:
        return Profile.model_validate(data or {})
    except ValidationError as err:
        import difflib

        lines = []
        for e in err.errors():
            field = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                close = difflib.get_close_matches(field, list(Profile.model_fields), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                lines.append(f"{path}: field {field}: unknown key{hint}")
            else:
                lines.append(f"{path}: field {field}: {e['msg']}")
        raise ClusterError("\n".join(lines)) from None


def _env(profile: Optional[Profile] = None) -> dict[str, str]:
    env = dict(os.environ)
    if profile and profile.slurm_conf:
        env["SLURM_CONF"] = profile.slurm_conf
    return env


def check_cluster(profile: Profile) -> None:
    """Clear errors before anything is submitted: no SLURM, controller down, unknown partition."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise ClusterError("SLURM client commands (sbatch, sinfo) are not on PATH: run on a login node, "
                           "or install slurm-client")
    if profile.slurm_conf:
        if not Path(profile.slurm_conf).is_file():
            raise ClusterError(f"profile {profile.name!r}: slurm_conf {profile.slurm_conf} does not exist")
        os.environ["SLURM_CONF"] = profile.slurm_conf  # submitit's own sbatch/sacct calls read it
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=30, env=_env(profile))
    except subprocess.TimeoutExpired:
        raise ClusterError("the SLURM controller did not answer `sinfo` within 30 s") from None
    if out.returncode != 0:
        raise ClusterError(f"the SLURM controller is unreachable: {out.stderr.strip() or out.stdout.strip()}")
    partitions = {p.strip().rstrip("*") for p in out.stdout.split()}
    if profile.partition and profile.partition not in partitions:
        raise ClusterError(f"profile {profile.name!r}: unknown partition {profile.partition!r} "
                           f"(the cluster has: {', '.join(sorted(partitions)) or 'none'})")


class CheckpointableRun:
    """The SLURM job callable: on preemption or time-out, submitit calls ``checkpoint`` and requeues
    the job; the rerun resumes from the run's last mmengine checkpoint."""

    def __call__(self, spec: RunSpec) -> list[str]:
        from bench.launch import _job_entry

        return _job_entry(spec)

    def checkpoint(self, spec: RunSpec):
        import submitit

        return submitit.helpers.DelayedSubmission(CheckpointableRun(), spec)


def _executor(profile: Profile, folder: Path, gpus: int, dependency: Optional[str] = None, tasks: int = 1):
    """One job per run: ``gpus`` GPUs and one task per GPU on each node, or (no GPU) ``tasks`` CPU tasks
    spread over the profile's nodes (gloo)."""
    import submitit

    # max_num_timeout caps how often a preempted / timed-out job requeues itself
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm", slurm_max_num_timeout=profile.max_requeues)
    if gpus:
        per_node = max(1, gpus)
    else:
        if tasks % max(1, profile.nodes):
            raise ClusterError(f"--tasks {tasks} does not split evenly over the profile's {profile.nodes} node(s)")
        per_node = max(1, tasks // max(1, profile.nodes))
    params: dict[str, Any] = dict(
        timeout_min=profile.time_limit_min, nodes=profile.nodes, tasks_per_node=per_node,
        slurm_array_parallelism=profile.array_parallelism, slurm_setup=list(profile.setup))
    if gpus:
        params["gpus_per_node"] = gpus
        if profile.cpus_per_gpu:
            params["cpus_per_task"] = profile.cpus_per_gpu
        if profile.mem_per_gpu_gb:
            params["mem_gb"] = profile.mem_per_gpu_gb * gpus
    else:
        if profile.cpus_per_task:
            params["cpus_per_task"] = profile.cpus_per_task
    if profile.mem_gb:
        params["mem_gb"] = profile.mem_gb
    if profile.partition:
        params["slurm_partition"] = profile.partition
    extra = dict(profile.sbatch_extra)
    if profile.account:
        extra["account"] = profile.account
    if profile.qos:
        extra["qos"] = profile.qos
    if profile.constraint:
        params["slurm_constraint"] = profile.constraint
    if dependency:
        extra["dependency"] = dependency
    if extra:
        params["slurm_additional_parameters"] = extra
    ex.update_parameters(**params)
    return ex


def submit_slurm(runs: list[RunSpec], profile_path: Optional[Path]) -> list[str]:
    """Submit runs as job arrays, one per resource shape; record job ids; return a line per array."""
    if profile_path is None:
        raise ClusterError("--cluster slurm needs --profile slurm/<name>.yaml")
    profile = load_profile(profile_path)
    check_cluster(profile)
    from bench.launch import skip_locked

    runs, skipped = skip_locked(runs)  # another live job owns the run key: not submitted again
    lines: list[str] = [f"{', '.join(t['table'] + '/' + t['row'] for t in o.spec.targets)}: {o.detail}" for o in skipped]
    for spec in runs:
        if getattr(spec, "tasks", 1) > 1 and not spec.gpus and profile.gpus_per_node:
            raise ClusterError(f"--tasks plans CPU processes (gloo), and profile {profile.name!r} gives each job "
                               f"{profile.gpus_per_node} GPU(s): use --gpus for GPU runs")
        gpus = profile.gpus_per_node if profile.gpus_per_node else spec.gpus
        if gpus != spec.gpus:
            spec.gpus = gpus
            spec.tasks = max(1, gpus)
            spec.overlay["gpus_overridden_by_profile"] = profile.name
    # runs that differ from an earlier one only at test time go in later arrays that wait for it
    first: dict[str, RunSpec] = {}
    followers: list[RunSpec] = []
    for spec in runs:
        if spec.train_key and spec.train_key in first:
            followers.append(spec)
        else:
            first.setdefault(spec.train_key or spec.run_key, spec)
    leaders = [s for s in runs if s not in followers]
    job_of: dict[str, str] = {}
    for group, dependency in ((leaders, None), (followers, "")):
        shapes: dict[tuple[int, int], list[RunSpec]] = defaultdict(list)
        for spec in group:
            shapes[(spec.gpus, 1 if spec.gpus else getattr(spec, "tasks", 1))].append(spec)
        for (gpus, tasks), specs in shapes.items():
            dep = None
            if dependency is not None:
                dep = "afterany:" + ":".join(sorted({job_of[s.train_key] for s in specs}))
            root = Path(specs[0].work_dir).parent.parent / "slurm" / (f"gpus{gpus}" if gpus or tasks == 1 else f"cpu{tasks}")
            ex = _executor(profile, root, gpus, dep, tasks=tasks)
            jobs = ex.map_array(CheckpointableRun(), specs)
            for spec, job in zip(specs, jobs):
                mark_pending(spec, "slurm", str(job.job_id), str(root))
                if dependency is None and spec.train_key:
                    job_of[spec.train_key] = str(job.job_id)
            array_id = str(jobs[0].job_id).split("_")[0] if jobs else "?"
            shape = f"{gpus} GPU(s)" if gpus or tasks == 1 else f"{tasks} CPU tasks (gloo)"
            lines.append(f"job array {array_id}: {len(specs)} run(s), {shape} each, partition "
                         f"{profile.partition or '(default)'}"
                         + (f", after {dep.split(':', 1)[1]} (evaluates their trainings)" if dep else ""))
    return lines


def slurm_state(job_id: str, conf: Optional[str] = None) -> Optional[str]:
    """The SLURM state of a job (sacct), e.g. 'RUNNING', 'PENDING', 'CANCELLED by 0'; None if unknown
    (or if ``job_id``, read from a results folder, is not a SLURM job id at all)."""
    import re

    if shutil.which("sacct") is None or not re.match(r"^\d{1,12}(_\d{1,9})?$", str(job_id)):
        return None
    try:
        out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State"], capture_output=True,
                             text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return None
    for line in out.stdout.splitlines():
        jid, _, state = line.partition("|")
        if jid.strip() == job_id:
            return state.strip()
    return None


def cancel(job_ids: list[str]) -> None:
    import re

    job_ids = [j for j in job_ids if re.match(r"^\d{1,12}(_\d{1,9})?$", str(j))]  # never an option to scancel
    if not job_ids:
        return
    if shutil.which("scancel") is None:
        raise ClusterError("scancel is not on PATH")
    subprocess.run(["scancel", *job_ids], check=True, capture_output=True, text=True, timeout=30)
