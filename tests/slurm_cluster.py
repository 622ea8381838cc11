"""pytest fixture: a real single-node SLURM cluster for the whole test session.

Load it from a test module with ``pytest_plugins = ["tests.slurm_cluster"]`` and request
``slurm_cluster``. The fixture runs ``scripts/slurm-cluster start`` into a temporary folder, sets
``SLURM_CONF`` in ``os.environ`` while the cluster lives (so submitit's sbatch/sacct/scancel reach
it; restored at the end) and stops exactly the daemons it started at the end of the session, also
when tests failed. A watchdog started with the cluster stops it if the test process dies without
running the teardown (e.g. killed).

The SLURM packages are a hard requirement: without them the fixture fails (CI installs them with
``scripts/slurm-cluster install``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "slurm-cluster"
START_TIMEOUT_S = 300
STOP_TIMEOUT_S = 180
_SBIN_PATH = os.pathsep.join(["/usr/local/sbin", "/usr/sbin", "/sbin"])
REQUIRED_BINARIES = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct")


@dataclass
class SlurmCluster:
    """Handle on a running test cluster."""

    dir: Path
    conf_path: Path
    env: Dict[str, str]  # what a client needs on top of os.environ (SLURM_CONF)
    start_seconds: float = 0.0
    start_summary: str = ""  # the start command's last line (phase timings)
    stop_seconds: Optional[float] = None

    @property
    def pids(self) -> Dict[str, int]:
        """The daemons this cluster started (name -> pid), as recorded in DIR/pids."""
        out: Dict[str, int] = {}
        path = self.dir / "pids"
        if path.exists():
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2:
                    out[parts[0]] = int(parts[1])
        return out

    def client_env(self) -> Dict[str, str]:
        return {**os.environ, **self.env}

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Runs a slurm client command (sinfo, sacct, scontrol, ...) against this cluster."""
        return subprocess.run(
            list(args), env=self.client_env(), capture_output=True, text=True, check=check, timeout=timeout
        )

    def sacct_states(self, job_id: str, duplicates: bool = False) -> List[str]:
        """States of the allocation lines of job_id (one line per array task; with duplicates, one
        per run of a requeued job). Empty while slurmdbd does not know the job yet."""
        args = ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", str(job_id)]
        if duplicates:
            args.append("--duplicates")
        res = self.run(*args, check=False)
        if res.returncode != 0:
            return []
        return [line.split("|", 1)[1] for line in res.stdout.splitlines() if "|" in line]

    def sacct_state(self, job_id: str) -> Optional[str]:
        states = self.sacct_states(job_id)
        return states[-1] if states else None

    def wait_sacct_state(
        self, job_id: str, accept: Callable[[str], bool], timeout: float = 60, poll: float = 0.5
    ) -> str:
        """Polls sacct until the job's state satisfies accept (right after a job ends, sacct may
        still show PENDING/RUNNING for a few seconds); fails the test at the deadline."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.sacct_state(job_id)
            if state is not None and accept(state):
                return state
            time.sleep(poll)
        pytest.fail(f"sacct state of job {job_id} still {state!r} after {timeout:.0f}s\n{self.diagnostics()}")

    def job_fields(self, job_id: str) -> Dict[str, str]:
        """`scontrol show job` as a dict (JobState, Reason, Restarts, ...); empty once slurmctld forgot it."""
        res = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        fields: Dict[str, str] = {}
        for token in res.stdout.split():
            key, sep, value = token.partition("=")
            if sep and key not in fields:
                fields[key] = value
        return fields

    def release_requeued(self, job_id: str, timeout: float = 60) -> None:
        """Slurm holds a requeued job back for 121 s (a hard-coded BeginTime, not configurable).
        Waits until job_id has been requeued (Restarts >= 1) and is pending, then makes it eligible
        right away. Returns at once if the requeued job already runs again or ended."""
        deadline = time.monotonic() + timeout
        fields: Dict[str, str] = {}
        while time.monotonic() < deadline:
            fields = self.job_fields(job_id)
            if not fields:
                return
            if int(fields.get("Restarts", "0") or 0) >= 1:
                state = fields.get("JobState", "")
                if state == "PENDING":
                    if fields.get("Reason") == "BeginTime" or _in_future(fields.get("EligibleTime", "")):
                        # slurmd revoked the old run's credential; one issued within the same second
                        # counts as revoked too ("Job credential revoked", the job then FAILs), which
                        # is what the 121 s delay guards against: let a couple of seconds pass first.
                        time.sleep(2.5)
                        self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
                        return
                    if fields.get("Reason") not in ("None", "", None):
                        return  # pending for another reason (Resources, Priority, ...): not held back
                if state not in ("COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"):
                    return  # RUNNING again, or finished
            time.sleep(0.2)
        pytest.fail(
            f"job {job_id} was not requeued within {timeout:.0f}s "
            f"(JobState={fields.get('JobState')} Restarts={fields.get('Restarts')})\n{self.diagnostics()}"
        )

    def diagnostics(self) -> str:
        parts = []
        for args in (["sinfo", "-N", "-l"], ["squeue", "-l"], ["sacct", "-a", "-S", "now-1hour"]):
            try:
                res = self.run(*args, check=False, timeout=10)
                parts.append(f"$ {' '.join(args)}\n{res.stdout}{res.stderr}")
            except subprocess.TimeoutExpired:
                parts.append(f"$ {' '.join(args)}\n(timed out)")
        for name in ("slurmctld.log", "slurmd.log"):
            log = self.dir / "log" / name
            if log.exists():
                parts.append(f"---- tail {log} ----\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(parts)


def _in_future(stamp: str, margin_s: float = 5) -> bool:
    """A Slurm timestamp (local time, e.g. 2026-01-31T12:00:00) more than margin_s ahead of now."""
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return False
    return (when - datetime.now()).total_seconds() > margin_s


def _missing_binaries() -> List[str]:
    search = os.pathsep.join([os.environ.get("PATH", ""), _SBIN_PATH])
    return [b for b in REQUIRED_BINARIES if shutil.which(b, path=search) is None]


def _exe_of(pid: int) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return None


def _kill_recorded(cluster_dir: Path) -> None:
    """Last resort when `slurm-cluster stop` failed: SIGKILL exactly the recorded PIDs that still run
    the recorded executable."""
    path = cluster_dir / "pids"
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        pid, exe = int(parts[1]), parts[2]
        if _exe_of(pid) == exe:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def start_cluster(cluster_dir: Path, watch_pid: Optional[int] = None, nodes: int = 1) -> SlurmCluster:
    """Starts a cluster in cluster_dir (fails the test with the script's output if it cannot); ``nodes``
    > 1: that many node names (n1..nN), each its own slurmd on this host, the cores split between them."""
    if os.geteuid() != 0:
        pytest.fail("the SLURM test cluster must run as root (slurmd launches the jobs; SlurmUser=root)")
    missing = _missing_binaries()
    if missing:
        pytest.fail(
            f"SLURM packages are not installed (missing: {', '.join(missing)}). "
            f"Install them with: {SCRIPT.relative_to(REPO_ROOT)} install   (as root; needs apt)",
            pytrace=False,
        )
    env = {**os.environ, "PATH": os.pathsep.join([os.environ.get("PATH", ""), _SBIN_PATH])}
    if watch_pid is not None:
        env["SLURM_CLUSTER_WATCH_PID"] = str(watch_pid)
    env["SLURM_CLUSTER_NODES"] = str(nodes)
    t0 = time.monotonic()
    try:
        res = subprocess.run(
            [str(SCRIPT), "start", str(cluster_dir)],
            env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as e:
        subprocess.run([str(SCRIPT), "stop", str(cluster_dir)], env=env, capture_output=True, timeout=STOP_TIMEOUT_S)
        pytest.fail(f"`slurm-cluster start` did not finish within {START_TIMEOUT_S}s:\n{e.stderr}")
    elapsed = time.monotonic() - t0
    if res.returncode != 0:
        pytest.fail(f"`slurm-cluster start {cluster_dir}` failed (rc {res.returncode}):\n{res.stderr}{res.stdout}")
    client_env: Dict[str, str] = {}
    for line in res.stdout.splitlines():
        line = line.strip()
        if line.startswith("export ") and "=" in line:
            key, value = line[len("export "):].split("=", 1)
            client_env[key] = value
    conf = Path(client_env.get("SLURM_CONF", cluster_dir / "slurm.conf"))
    client_env["SLURM_CONF"] = str(conf)
    summary = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ""
    return SlurmCluster(dir=cluster_dir, conf_path=conf, env=client_env, start_seconds=elapsed, start_summary=summary)


def stop_cluster(cluster: SlurmCluster) -> None:
    t0 = time.monotonic()
    env = {**os.environ, "PATH": os.pathsep.join([os.environ.get("PATH", ""), _SBIN_PATH])}
    try:
        res = subprocess.run(
            [str(SCRIPT), "stop", str(cluster.dir)], env=env, capture_output=True, text=True, timeout=STOP_TIMEOUT_S
        )
        ok = res.returncode == 0
        detail = res.stderr
    except subprocess.TimeoutExpired:
        ok, detail = False, f"timed out after {STOP_TIMEOUT_S}s"
    if not ok:
        _kill_recorded(cluster.dir)
    cluster.stop_seconds = time.monotonic() - t0
    if not ok:
        raise RuntimeError(f"`slurm-cluster stop {cluster.dir}` failed ({detail}); recorded PIDs were SIGKILLed")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running single-node SLURM cluster (partition `debug`, accounting through slurmdbd).

    While it lives, os.environ["SLURM_CONF"] points at it, so submitit (and any slurm command run
    by the code under test) talks to this cluster."""
    cluster_dir = tmp_path_factory.mktemp("slurm", numbered=True)
    cluster = start_cluster(cluster_dir, watch_pid=os.getpid())
    sys.stderr.write(f"\n[slurm_cluster] started in {cluster.start_seconds:.1f}s at {cluster.dir}\n  {cluster.start_summary}\n")
    saved = {k: os.environ.get(k) for k in cluster.env}
    os.environ.update(cluster.env)
    try:
        yield cluster
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        stop_cluster(cluster)
        sys.stderr.write(f"\n[slurm_cluster] stopped in {cluster.stop_seconds:.1f}s\n")


@pytest.fixture
def slurm_cluster_2_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A second, separate cluster (its own ports and daemons) of two nodes, n1 and n2: two slurmd on this
    host (``slurmd -N``), one core each. os.environ is left alone: pass ``cluster.env`` to what runs."""
    cluster = start_cluster(tmp_path_factory.mktemp("slurm2", numbered=True), watch_pid=os.getpid(), nodes=2)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)
