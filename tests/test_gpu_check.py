"""scripts/gpu_check.sh cannot run here (no GPU); what it is made of can: its report from a
finished set of results, and its refusal to start without CUDA."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU: run the script")
def test_the_script_stops_at_once_without_a_gpu():
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "MSAM_PYTHON": sys.executable})
    assert result.returncode == 2 and "no CUDA device" in result.stderr


def test_the_report_collects_tests_training_and_bench(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    (work / "tests.log").write_text("...")
    (work / "tests_compile.log").write_text("collected 1 item\n")  # stopped by its limit: no report
    (work / "tests.xml").write_text('<testsuites><testsuite name="pytest" tests="5" failures="1" errors="0" '
                                    'skipped="1" time="12.5"><testcase name="test_a"/><testcase name="test_b">'
                                    '<failure message="x"/></testcase></testsuite></testsuites>')
    run = [sys.executable, "-m", "msam.train", "method=sam", "dataset=synthetic", "dataset.image_shape=[1,8,8]",
           "dataset.mean=[0.5]", "dataset.std=[0.2887]", "dataset.train_size=64", "dataset.test_size=32",
           "batch_size=32", "epochs=1", "device=cpu", "log_every_steps=0", f"paths.runs={work}/runs"]
    subprocess.run(run, check=True, capture_output=True, timeout=300, cwd=tmp_path)
    bench = [sys.executable, "-m", "msam.bench", "models=[small_cnn]", "image_size=8", "batch_sizes=[4]", "ms=[1,2]", "repeats=1",
             "warmup=0", f"out={work}", "name=gpu_bench_eager", "device=cpu"]
    subprocess.run(bench, check=True, capture_output=True, timeout=300, cwd=tmp_path)
    subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_report.py"), "--device", "test", "--work", str(work),
                    "--out", str(out), "--seconds", "42"], check=True, timeout=120)
    payload = json.loads((out / "gpu_test.json").read_text())
    assert payload["tests"]["passed"] == 3 and payload["tests"]["failed_tests"] == ["test_b"]
    assert [(r["method"], r["status"]) for r in payload["training"]] == [("sam", "finished")]
    assert {r["impl"] for r in payload["bench"]["rows"]} == {"vanilla", "sam", "rwsam", "loop", "vmap", "vmap_ascent",
                                                      "auto"}
    text = (out / "gpu_test.md").read_text()
    assert "3 passed, 1 failed, 1 skipped" in text and "- failed: `test_b`" in text
    assert "- `tests_compile` did not finish within its time limit" in text
    assert "| sam | 1 | - |" in text and "| small_cnn | 4 | 2 | vmap |" in text
