"""`bench status` and `bench logs` read the results folder from a separate process."""
import json
import subprocess

from tests.conftest import bench_env, bench_exe


def test_status_after_a_run(pipeline_run):
    results, data, _ = pipeline_run
    p = subprocess.run([bench_exe(), "status", "pipeline-test/table-1", "--json"], env=bench_env(results, data),
                       capture_output=True, text=True, timeout=120)
    rows = {r["row"]: r for r in json.loads(p.stdout)}
    assert rows["tiny"]["run_status"] == "done"
    assert rows["tiny-nan"]["run_status"] == "failed" and "NaN" in rows["tiny-nan"]["failure"]
    assert rows["missing"]["run_status"] == "not run" and rows["missing"]["row_status"] == "model missing"
    assert rows["reference"]["row_status"] == "reference only"
    p = subprocess.run([bench_exe(), "status", "pipeline-test/table-1"], env=bench_env(results, data),
                       capture_output=True, text=True, timeout=120)
    assert "done" in p.stdout and "failed" in p.stdout and "smoke scale, 6 it" in p.stdout


def test_logs(pipeline_run):
    results, data, _ = pipeline_run
    p = subprocess.run([bench_exe(), "logs", "pipeline-test/table-1", "tiny", "-n", "0"], env=bench_env(results, data),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "Iter(train)" in p.stdout and "coco/segm_mAP" in p.stdout
    p = subprocess.run([bench_exe(), "logs", "pipeline-test/table-1", "missing"], env=bench_env(results, data),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "has not run" in p.stderr
