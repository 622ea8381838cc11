"""Adversarial inputs (issue 17): recipes and result folders are data, one run trains once, nothing is
lost or killed by mistake. Each test reproduced its defect on the code before the fix.

Hostile recipes, hostile result folders, concurrent runs, a full disk (a real 2 MiB tmpfs), killed
parents and killed jobs. Everything runs on the real parts: the real CLI, real `bench run` processes
(the tiny smoke variant) where a defect only shows in them, real signals, real mounts.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import REPO, TEST_RECIPES, TINY_SCALE, bench_env, bench_exe

TABLE = "pipeline-test/table-1"
RESUME_SCALE = REPO / "tests" / "data" / "smoke-resume.yaml"  # 24 iterations: long enough to kill mid-run


def cli(*args: str, env: dict[str, str]):
    """`bench ARGS` in this process (a crash shows as ``res.exception``, not as a test error)."""
    from bench.cli import main

    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=True)


def assert_no_crash(res) -> None:
    assert res.exception is None or isinstance(res.exception, SystemExit), (
        f"crashed: {type(res.exception).__name__}: {res.exception}\n{res.output}")
    assert "Traceback" not in res.output, res.output


# ============================================================================== hostile recipes
HEAD = """
include: _paper.yaml
table: table-ii
number: II
title: t
columns: [{key: csr, label: CSR}, {key: mask_AP, label: AP}]
rows:
  - id: base
    label: Baseline
    position: 1
    factors: {csr: false}
    model: {config: bench::csr_d2s/kernel_fpn_r50_1x.py}
"""


def _row(extra: str) -> str:
    return HEAD + textwrap.indent(textwrap.dedent(extra).strip() + "\n", "    ")


def _refused(recipe_dir, body: str) -> str:
    from bench.recipes import RecipeError, load_table

    path = recipe_dir(body)
    with pytest.raises(RecipeError) as e:
        load_table(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    return msg


@pytest.mark.parametrize("extra, field", [
    ("published: {mask_AP: .nan}", "published.mask_AP"),
    ("published: {mask_AP: .inf}", "published.mask_AP"),
    ("published: {mask_AP: 30.0}\ntolerance: {mask_AP: .nan}", "tolerance.mask_AP"),
    ("published: {mask_AP: 30.0}\ntolerance: {mask_AP: -1.0}", "tolerance"),
    ("published: {mask_AP: 30.0}\ntrain: {epochs: -1}", "train.epochs"),
    ("published: {mask_AP: 30.0}\ntrain: {epochs: 1.0e+18}", "train.epochs"),
    ("published: {mask_AP: 30.0}\ntrain: {batch_size: -16}", "train.batch_size"),
    ("published: {mask_AP: 30.0}\ntrain: {gpus: -8}", "train.gpus"),
    ("published: {mask_AP: 30.0}\ntrain: {lr: -0.01}", "train.lr"),
    ("published: {mask_AP: 30.0}\ntrain: {lr: .nan}", "train.lr"),
])
def test_schema_refuses_nonsense_numbers_naming_file_row_and_field(recipe_dir, extra, field):
    msg = _refused(recipe_dir, _row(extra))
    assert "row 1 (id 'base')" in msg and field in msg, msg


def test_show_json_never_prints_nan(tmp_path, recipe_dir):
    recipe_dir(_row("published: {mask_AP: .nan}"))
    res = cli("--recipes", str(recipe_dir.root), "show", "csr-d2s/table-ii", "--json",
              env={"BENCH_RESULTS": str(tmp_path / "results")})
    assert_no_crash(res)
    assert res.exit_code == 1 and "NaN" not in res.output and "published.mask_AP" in res.output


def test_row_id_length_is_limited(recipe_dir):
    msg = _refused(recipe_dir, HEAD.replace("id: base", "id: " + "a" * 240) + "    published: {mask_AP: 1.0}\n")
    assert "at most 64" in msg and "row 1" in msg


def test_deeply_nested_yaml_is_a_recipe_error_not_a_recursion_error(recipe_dir):
    msg = _refused(recipe_dir, _row("published: {mask_AP: 1.0}\nnotes: " + "[" * 5000 + "]" * 5000))
    assert "nested too deeply" in msg


def test_yaml_alias_bomb_is_refused_by_size(recipe_dir):
    levels = ["l0: &l0 [" + ", ".join(["x"] * 10) + "]"]
    for i in range(1, 8):  # 10**8 values once expanded, from a 1 KiB file
        levels.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    body = _row("published: {mask_AP: 1.0}") + "    model:\n      config: bench::csr_d2s/kernel_fpn_r50_1x.py\n" \
        "      overrides:\n" + "".join(f"        {ln}\n" for ln in levels)
    body = body.replace("    model: {config: bench::csr_d2s/kernel_fpn_r50_1x.py}\n", "", 1)
    t0 = time.monotonic()
    msg = _refused(recipe_dir, body)
    assert "more than" in msg and "values" in msg and time.monotonic() - t0 < 10


def test_a_row_that_cannot_be_built_is_reported_not_a_traceback(tmp_path, recipe_dir):
    """mmengine refuses the merged config (an override indexes into an int): `bench show` and `bench
    list` report the row as 'cannot resolve: <reason>' instead of crashing with mmengine's traceback."""
    recipe_dir(HEAD.replace("model: {config: bench::csr_d2s/kernel_fpn_r50_1x.py}",
                            "model: {config: bench::csr_d2s/kernel_fpn_r50_1x.py, "
                            "overrides: {model.backbone.depth.foo: 1}}") + "    published: {mask_AP: 1.0}\n")
    env = {"BENCH_RESULTS": str(tmp_path / "results")}
    for args in (("show", "csr-d2s/table-ii"), ("show", "csr-d2s/table-ii", "--json"), ("list",),
                 ("status", "csr-d2s/table-ii")):
        res = cli("--recipes", str(recipe_dir.root), *args, env=env)
        assert_no_crash(res)
        assert res.exit_code == 0, res.output
        if args[0] == "show":
            assert "cannot resolve: TypeError" in res.output, res.output


# ======================================================================== hostile result folders
def _run_key_dir(results: Path, key: str = "0123456789ab") -> Path:
    work = results / "smoke" / "runs" / key
    work.mkdir(parents=True)
    return work


def _pending(results: Path, row: str, rec: dict) -> Path:
    path = results / "smoke" / TABLE / f"{row}.pending.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return path


def _fixture_result(results: Path, row: str, measured_text: str) -> Path:
    """A valid result file (a test fixture, not a measurement) whose measured block is replaced by
    ``measured_text`` verbatim (JSON text someone else wrote)."""
    from bench.results import Measurement, Result, result_path, write_result

    res = Result(status="done", table=TABLE, row=row, label="Tiny Mask R-CNN", run_key="fixture", config_hash="f",
                 measured={"mask_AP": 1.5}, measurement=Measurement(
                     scale="smoke", dataset="test fixture", eval_split="val", iterations=6, batch_size=2, gpus=0,
                     pretrained=False, seed=0, device="test fixture (not a measurement)"))
    path = result_path(results, "smoke", TABLE, row)
    write_result(path, res)
    path.write_text(path.read_text().replace('"mask_AP": 1.5', measured_text))
    return path


def _env(tmp_path) -> dict[str, str]:
    return {"BENCH_RECIPES": str(TEST_RECIPES), "BENCH_RESULTS": str(tmp_path / "results")}


def test_infinity_metric_is_a_reported_problem_not_a_report_crash(tmp_path):
    results = tmp_path / "results"
    path = _fixture_result(results, "tiny", '"mask_AP": Infinity, "box_AP": 1e999')
    res = cli("report", TABLE, "--out", str(tmp_path / "reports"), env=_env(tmp_path))
    assert_no_crash(res)
    assert res.exit_code == 0 and f"{path}: unreadable result file" in res.output, res.output
    res = cli("status", TABLE, "--json", env=_env(tmp_path))
    assert_no_crash(res)
    assert "Infinity" not in res.output.split("problem")[0]


@pytest.mark.parametrize("state", [
    [1, 2, 3],                                                      # not a mapping
    {"state": "running", "pid": "abc", "host": socket.gethostname()},  # a PID that is no number
    {"state": {"x": 1}, "reason": ["r"]},
])
def test_malformed_state_json_never_crashes_status_report_or_cancel(tmp_path, state):
    results = tmp_path / "results"
    work = _run_key_dir(results)
    (work / "state.json").write_text(json.dumps(state))
    _pending(results, "tiny", {"run_key": work.name, "work_dir": str(work), "executor": "local", "job_id": "123"})
    for args in (("status", TABLE), ("status", TABLE, "--json"), ("report", TABLE, "--out", str(tmp_path / "r")),
                 ("cancel", TABLE)):
        res = cli(*args, env=_env(tmp_path))
        assert_no_crash(res)
        assert res.exit_code == 0, (args, res.output)


@pytest.mark.parametrize("name", ["tiny.json", "tiny.pending.json"])
def test_deeply_nested_json_is_a_problem_not_a_recursion_error(tmp_path, name):
    results = tmp_path / "results"
    work = _run_key_dir(results)
    _pending(results, "tiny", {"run_key": work.name, "executor": "local", "job_id": None})
    target = work / name if name == "state.json" else results / "smoke" / TABLE / name
    target.write_text("[" * 200000 + "]" * 200000)
    for args in (("status", TABLE, "--json"), ("report", TABLE, "--out", str(tmp_path / "r")), ("cancel", TABLE)):
        res = cli(*args, env=_env(tmp_path))
        assert_no_crash(res)


@pytest.fixture
def kill_spy(monkeypatch):
    """Records every os.kill; forwards only signals to processes this test started (never to -1)."""
    calls: list[tuple[int, int]] = []
    mine: set[int] = set()
    real = os.kill

    def spy(pid, sig):
        calls.append((pid, sig))
        if pid in mine:
            real(pid, sig)

    monkeypatch.setattr(os, "kill", spy)
    spy.calls, spy.mine = calls, mine
    return spy


def _sleeper(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *argv])


def test_cancel_signals_no_pid_a_results_folder_names(tmp_path, kill_spy):
    """pid -1 (every process), and the PID of an unrelated live process (a stale record after PID
    reuse): neither is signalled; the rows are still marked cancelled."""
    results = tmp_path / "results"
    victim = _sleeper()
    kill_spy.mine.add(victim.pid)
    try:
        for i, (pid, job_id) in enumerate(((-1, "-1"), (victim.pid, str(victim.pid)))):
            work = _run_key_dir(results, f"{i:012d}")
            (work / "state.json").write_text(json.dumps({"state": "running", "pid": pid, "host": socket.gethostname()}))
            _pending(results, ["tiny", "tiny-nan"][i],
                     {"run_key": work.name, "work_dir": str(work), "executor": "local", "job_id": job_id})
        res = cli("cancel", TABLE, env=_env(tmp_path))
        assert_no_crash(res)
        assert "pipeline-test/table-1/tiny: cancelled" in res.output and "not signalled" in res.output, res.output
        assert all(pid not in (-1, 0, 1) for pid, _ in kill_spy.calls), kill_spy.calls
        assert victim.pid not in [p for p, _ in kill_spy.calls]
        time.sleep(0.2)
        assert victim.poll() is None, "an unrelated process was killed"
    finally:
        victim.kill()
        victim.wait()


def test_cancel_signals_the_verified_job_process(tmp_path, kill_spy):
    """A live process whose identity matches the record and whose command line runs the run's job
    (its submitit folder) is the job: it gets SIGTERM."""
    from bench import proc

    results = tmp_path / "results"
    work = _run_key_dir(results)
    job = _sleeper(str(work / "submitit"))
    kill_spy.mine.add(job.pid)
    try:
        time.sleep(0.3)  # let the interpreter replace the fork's command line
        (work / "state.json").write_text(json.dumps({"state": "running", "pid": job.pid, "host": socket.gethostname(),
                                                     "proc": proc.identity(job.pid)}))
        _pending(results, "tiny", {"run_key": work.name, "work_dir": str(work), "executor": "local", "job_id": "7"})
        res = cli("cancel", TABLE, "tiny", env=_env(tmp_path))
        assert_no_crash(res)
        assert f"sent SIGTERM to PID {job.pid}" in res.output, res.output
        assert job.wait(timeout=10) == -signal.SIGTERM
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()


def test_a_queued_row_whose_launcher_died_is_not_queued_forever(tmp_path):
    from bench import proc

    results = tmp_path / "results"
    work = _run_key_dir(results)
    launcher = _sleeper()
    time.sleep(0.3)
    ident = proc.identity(launcher.pid)
    launcher.kill()
    launcher.wait()
    _pending(results, "tiny", {"run_key": work.name, "work_dir": str(work), "executor": "local", "job_id": None,
                               "launcher": ident})
    res = cli("status", TABLE, "--json", env=_env(tmp_path))
    assert_no_crash(res)
    row = next(r for r in json.loads(res.output) if r["row"] == "tiny")
    assert row["run_status"] == "not run" and "ended before starting it" in row["progress"], row


# ======================================================================== checkpoints (unit level)
class _Hostile:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_checkpoint_is_refused_without_running_it(tmp_path):
    import torch

    from bench.job import pickles_only_allowed, safe_checkpoint_loading

    marker = tmp_path / "pwned"
    bomb = _Hostile()
    bomb.marker = str(marker)
    path = tmp_path / "iter_9.pth"
    torch.save({"meta": {"iter": 9}, "state_dict": {}, "x": bomb}, path)
    ok, why = pickles_only_allowed(path)
    assert not ok and "system" in why
    with safe_checkpoint_loading(), pytest.raises(Exception, match="Unsupported global|Weights only load failed"):
        torch.load(path)
    with safe_checkpoint_loading(), pytest.raises(Exception):
        torch.load(path, weights_only=False)  # forced safe even when a caller asks otherwise
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # the context restored the environment


# ==================================================================================== synth data
def test_data_root_holding_another_synthetic_set_is_refused_not_deleted(tmp_path):
    from bench.data import synth

    root = tmp_path / "mydata"
    synth.generate(root, synth.SynthSpec(train_images=2, val_images=1, width=64, height=64))
    (root / "thesis-notes.txt").write_text("not bench's")
    with pytest.raises(FileExistsError, match="another synthetic dataset"):
        synth.generate(root, synth.SynthSpec(train_images=3, val_images=1, width=64, height=64))
    assert (root / "thesis-notes.txt").read_text() == "not bench's"
    with pytest.raises(FileExistsError, match="thesis-notes.txt"):  # --force would delete it: refused too
        synth.generate(root, synth.SynthSpec(train_images=2, val_images=1, width=64, height=64), force=True)
    assert (root / "thesis-notes.txt").exists()
    (root / "thesis-notes.txt").unlink()
    m = synth.generate(root, synth.SynthSpec(train_images=2, val_images=1, width=64, height=64), force=True)
    assert m["splits"]["train"]["images"] == 2  # a folder holding only the generated set is rewritten


def test_run_with_a_foreign_data_root_is_refused_cleanly(tmp_path):
    from bench.data import synth

    root = tmp_path / "mydata"
    synth.generate(root, synth.SynthSpec(train_images=2, val_images=1, width=64, height=64))
    (root / "keep.txt").write_text("mine")
    res = cli("run", TABLE, "tiny", "--scale", str(TINY_SCALE), "--data-root", str(root), "--cluster", "inline",
              env=_env(tmp_path))
    assert_no_crash(res)
    assert (root / "keep.txt").read_text() == "mine"
    assert res.exit_code != 0 and "another synthetic dataset" in res.output, res.output


# ======================================================================================== exports
def test_exports_escape_per_format(tmp_path):
    """Markup, NUL and U+202E in a label: escaped in Markdown (no raw HTML), defused in CSV (no
    formula, no control characters), shown visibly in HTML and TeX."""
    root = tmp_path / "recipes"
    shutil.copytree(TEST_RECIPES, root)
    path = root / "pipeline-test" / "table-1.yaml"
    hostile = '<img src=x onerror=alert(1)> \\0 \\u202egpj.exe'
    path.write_text(path.read_text().replace("label: Tiny Mask R-CNN\n", f'label: "{hostile}"\n', 1))
    hostile2 = "=HYPERLINK(1)"
    path.write_text(path.read_text().replace("label: Reference only\n", f'label: "{hostile2}"\n', 1))
    out = tmp_path / "reports"
    res = cli("--recipes", str(root), "report", TABLE, "--out", str(out), env={"BENCH_RESULTS": str(tmp_path / "res")})
    assert_no_crash(res)
    base = out / "smoke" / "pipeline-test" / "table-1"
    md = base.with_suffix(".md").read_text()
    assert "<img" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md
    csv = base.with_suffix(".csv").read_text()
    assert "'=HYPERLINK(1)" in csv and ",=HYPERLINK" not in csv
    html = base.with_suffix(".html").read_text()
    tex = base.with_suffix(".tex").read_text()
    shown = {"md": "&lt;U+202E&gt;", "csv": "<U+202E>", "html": "&lt;U+202E&gt;", "tex": r"\textless{}U+202E\textgreater{}"}
    for name, text in (("md", md), ("csv", csv), ("html", html), ("tex", tex)):
        assert "\x00" not in text and "\u202e" not in text, name
        assert shown[name] in text and shown[name].replace("202E", "0000") in text, name
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


# ===================================================================================== run locks
LOCK_HOLDER = """
import sys, time
from bench.lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_run_lock_is_owned_by_one_live_process_and_a_dead_owner_is_stale(tmp_path):
    from bench.lock import RunLock, RunLocked, holder

    work = tmp_path / "runs" / "0123456789ab"
    owner = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(work)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "locked"
        held = holder(work)
        assert held and held["pid"] == owner.pid and held["host"] == socket.gethostname()
        with pytest.raises(RunLocked, match=f"running in PID {owner.pid} on {socket.gethostname()}"):
            RunLock(work, wait_s=0.2).acquire()
        owner.kill()
        owner.wait()
        assert holder(work) is None  # the record is still in the file: stale, not trusted
        with RunLock(work) as lock:
            assert lock.stale and lock.stale["pid"] == owner.pid
            assert holder(work)["pid"] == os.getpid()
        assert holder(work) is None
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


# ================================================ real `bench run` processes: concurrency and kills
def _wait_for_state(runs: Path, pred, timeout: float = 600, proc: subprocess.Popen | None = None) -> tuple[Path, dict]:
    deadline = time.time() + timeout
    last: dict = {}
    while time.time() < deadline:
        for path in runs.glob("*/state.json"):
            try:
                last = json.loads(path.read_text())
            except ValueError:
                continue
            if pred(last):
                return path.parent, last
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"bench run ended early (exit {proc.returncode}): {proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.3)
    raise AssertionError(f"state never reached: {last}")


def _running(min_iter: int):
    return lambda s: s.get("state") == "running" and (s.get("iter") or 0) >= min_iter


def _alive(pid: int) -> bool:
    from bench import proc

    return proc.start_ticks(pid) is not None and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_two_concurrent_runs_of_the_same_row_train_it_once(tmp_path):
    env = bench_env(tmp_path / "results", tmp_path / "data")
    cmd = [bench_exe(), "run", TABLE, "tiny", "--scale", str(TINY_SCALE)]
    a = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    b = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out_a, _ = a.communicate(timeout=900)
    out_b, _ = b.communicate(timeout=900)
    outs = sorted([out_a, out_b], key=lambda o: "skipped" in o)
    assert "1 run(s) done, 0 failed" in outs[0], outs[0]
    assert "0 run(s) done, 0 failed, 1 skipped (running elsewhere)" in outs[1], outs[1]
    assert f"on {socket.gethostname()}" in outs[1] and "running in PID" in outs[1]
    work = next((tmp_path / "results" / "smoke" / "runs").iterdir())
    assert len([d for d in (work / "train").iterdir() if d.is_dir()]) == 1  # one mmengine run: trained once
    res = json.loads((tmp_path / "results" / "smoke" / TABLE / "tiny.json").read_text())
    assert res["status"] == "done" and res["measurement"]["resumed_from"] is None


def test_a_rerun_after_kill_9_of_the_parent_does_not_train_beside_the_orphan(tmp_path):
    env = bench_env(tmp_path / "results", tmp_path / "data")
    runs = tmp_path / "results" / "smoke" / "runs"
    cmd = [bench_exe(), "run", TABLE, "tiny", "--scale", str(RESUME_SCALE)]
    parent = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trainer = None
    try:
        work, state = _wait_for_state(runs, _running(2), proc=parent)
        trainer = state["pid"]
        parent.kill()  # kill -9 of `bench run`: its job keeps training, an orphan
        parent.wait()
        assert _alive(trainer)
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stdout + second.stderr
        assert f"skipped: running in PID {trainer} on {socket.gethostname()}" in second.stdout, second.stdout
        assert len([d for d in (work / "train").iterdir() if d.is_dir()]) == 1  # no second trainer started
        assert _alive(trainer)
        os.kill(trainer, signal.SIGKILL)  # now the orphan dies too, with nobody left to record it
        deadline = time.time() + 60
        while _alive(trainer) and time.time() < deadline:
            time.sleep(0.2)
        status = subprocess.run([bench_exe(), "status", TABLE, "--json"], env=env, capture_output=True, text=True,
                                timeout=120)
        row = next(r for r in json.loads(status.stdout) if r["row"] == "tiny")
        assert row["run_status"] == "failed" and "process gone" in row["progress"], row
    finally:
        if trainer and _alive(trainer):
            os.kill(trainer, signal.SIGKILL)


def test_a_killed_job_is_recorded_as_killed_by_its_signal(tmp_path):
    env = bench_env(tmp_path / "results", tmp_path / "data")
    runs = tmp_path / "results" / "smoke" / "runs"
    cmd = [bench_exe(), "run", TABLE, "tiny", "--scale", str(RESUME_SCALE)]
    parent = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, state = _wait_for_state(runs, _running(2), proc=parent)
    os.kill(state["pid"], signal.SIGKILL)  # the training process, as the OOM killer would
    out, _ = parent.communicate(timeout=300)
    assert parent.returncode == 1 and "killed (signal 9: SIGKILL)" in out, out
    res = json.loads((tmp_path / "results" / "smoke" / TABLE / "tiny.json").read_text())
    assert res["status"] == "failed" and "killed (signal 9: SIGKILL)" in res["failure"], res["failure"]


# =========================================================================== a full disk (tmpfs)
@pytest.fixture
def tiny_disk(tmp_path):
    """A real 2 MiB tmpfs (root may mount one); skipped with the reason where mounting is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small tmpfs")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs here (needs root / CAP_SYS_ADMIN): {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_fails_each_row_with_its_reason_and_the_batch_goes_on(tmp_path, tiny_disk):
    """The results folder's disk is full before anything starts: no raw OSError, every row of the
    batch is reported with where its record could not be written."""
    with open(tiny_disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    env = bench_env(tiny_disk / "results", tmp_path / "data")
    p = subprocess.run([bench_exe(), "run", TABLE, "tiny", "tiny-nan", "--scale", str(TINY_SCALE)], env=env,
                       capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 1 and "Traceback" not in out, out
    for row in ("tiny", "tiny-nan"):
        assert f"failed: {TABLE}/{row}: not started: could not write its job record" in out, out
    assert "No space left on device" in out
    assert not list(tiny_disk.rglob("*.tmp"))


def test_a_disk_filling_up_during_training_records_the_failure_and_removes_the_partial_checkpoint(tmp_path, tiny_disk):
    env = bench_env(tiny_disk / "results", tmp_path / "data")
    p = subprocess.run([bench_exe(), "run", TABLE, "tiny", "--scale", str(TINY_SCALE)], env=env,
                       capture_output=True, text=True, timeout=900)
    out = p.stdout + p.stderr
    assert p.returncode == 1 and "No space left on device" in out, out
    assert not list(tiny_disk.rglob("*.pth")), "a partial checkpoint was left on the full disk"
    res = json.loads((tiny_disk / "results" / "smoke" / TABLE / "tiny.json").read_text())
    assert res["status"] == "failed" and "No space left on device" in res["failure"]
    assert "partial checkpoint removed: iter_3.pth" in res["failure"]


# ===================================================== checkpoints: hostile, corrupted, --force
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_resume_refuses_hostile_and_corrupted_checkpoints_and_force_starts_clean(tmp_path, pipeline_run):
    """In a copy of a finished run's results: a newer checkpoint whose pickle would run a command
    (with a matching checksum: integrity is not trust), the newest real one zero-filled in the middle
    (its zip directory intact, so it still "loads"). The rerun resumes from the older intact
    checkpoint, runs nothing and says why it refused the others; `--force` then starts from scratch
    with the old work dir moved aside, not deleted."""
    import torch

    src, data, first = pipeline_run
    assert first.returncode in (0, 1), first.stdout + first.stderr
    results = tmp_path / "results"
    shutil.copytree(src, results)
    row_file = results / "smoke" / TABLE / "tiny.json"
    work = results / "smoke" / "runs" / Path(json.loads(row_file.read_text())["work_dir"]).name
    train = work / "train"
    assert (train / "iter_3.pth").exists() and (train / "iter_6.pth").exists()
    blob = bytearray((train / "iter_6.pth").read_bytes())
    mid = len(blob) // 2
    blob[mid:mid + 4096] = bytes(4096)
    (train / "iter_6.pth").write_bytes(bytes(blob))
    marker = tmp_path / "pwned"
    bomb = _Hostile()
    bomb.marker = str(marker)
    torch.save({"meta": {"iter": 9}, "state_dict": {}, "x": bomb}, train / "iter_9.pth")
    (train / "iter_9.pth.sha256").write_text(json.dumps({"sha256": _sha(train / "iter_9.pth"),
                                                         "size": (train / "iter_9.pth").stat().st_size}))
    row_file.unlink()
    (work / "result.json").unlink()

    env = bench_env(results, data)
    cmd = [bench_exe(), "run", TABLE, "tiny", "--scale", str(TINY_SCALE), "--cluster", "inline"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert not marker.exists(), "the checkpoint's pickle ran a command"
    assert p.returncode == 0, p.stdout + p.stderr
    m = json.loads(row_file.read_text())["measurement"]
    assert m["resumed_from"].endswith("iter_3.pth"), m["resumed_from"]
    refused = " ".join(m["resume_refused"])
    assert "iter_9.pth: refused" in refused and "system" in refused
    assert "iter_6.pth: checksum mismatch" in refused

    p = subprocess.run(cmd + ["--force"], env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "--force: moved the old work dir" in p.stdout
    m = json.loads(row_file.read_text())["measurement"]
    assert m["resumed_from"] is None and not m["resume_refused"]
    aside = [d for d in work.parent.iterdir() if d.name.startswith(work.name + ".replaced-")]
    assert len(aside) == 1 and (aside[0] / "train" / "iter_3.pth").exists()  # moved, not deleted
