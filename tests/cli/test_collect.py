"""`bench collect`: published vs measured in one frame; corrupt files are reported, never crash it."""
import io
import json
import subprocess

import pandas as pd

from tests.conftest import bench_env, bench_exe


def _collect(results, data, *args):
    return subprocess.run([bench_exe(), "collect", "pipeline-test/table-1", *args], env=bench_env(results, data),
                          capture_output=True, text=True, timeout=120)


def test_collect_formats(pipeline_run):
    results, data, _ = pipeline_run
    df = pd.read_csv(io.StringIO(_collect(results, data, "--format", "csv").stdout))
    tiny = df[df.row == "tiny"].iloc[0]
    assert tiny["run_status"] == "done" and tiny["mask_AP:published"] == 30.0
    assert tiny["mask_AP:delta"] == tiny["mask_AP:measured"] - 30.0
    assert df[df.row == "missing"].iloc[0]["row_status"] == "model missing"
    long = json.loads(_collect(results, data, "--format", "json", "--long").stdout)
    assert any(r["metric"] == "fps" and r["row"] == "tiny" and r["measured"] for r in long)
    md = _collect(results, data, "--format", "md").stdout
    assert md.startswith("|") and "tiny-nan" in md


def test_collect_reports_corrupt_files(pipeline_run, tmp_path):
    import shutil

    results, data, _ = pipeline_run
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    (copy / "smoke" / "pipeline-test" / "table-1" / "tiny.json").write_text('{"status": "do')
    p = _collect(copy, data, "--format", "csv")
    assert p.returncode == 0
    assert "unreadable result file" in p.stderr and "tiny.json" in p.stderr
