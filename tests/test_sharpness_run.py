"""msam-sharpness on real runs: sharpness.json, refusal of unfinished runs, a folder sweep."""

import json
import subprocess
import sys

import pytest
import torch

from msam import engine, runs
from msam.errors import ConfigError
from msam.sharpness import measure_run


@pytest.fixture
def finished_run(make_cfg):
    cfg = make_cfg("method=sam", "epochs=1")
    engine.train(cfg)
    return runs.run_dir_for(cfg)


def test_measure_run_writes_sharpness_json(finished_run):
    result = measure_run(finished_run, max_iter=30, tol=1e-3, trace_probes=8, max_samples=256,
                         batch_size=100, dtype="float64")
    stored = json.loads((finished_run / "sharpness.json").read_text())
    assert stored["lambda_max"] == result["lambda_max"] > 0 and stored["converged"]
    assert stored["data"] == {"dataset": "digits", "split": "train", "samples": 256, "batch_size": 100,
                              "max_samples": 256, "augmentation": "none", "order": "fixed"}
    assert stored["hvp_count"] == 30 + 8 and stored["trace_stderr"] > 0
    assert "weight decay is not included" in stored["loss"] and stored["dtype"] == "float64"
    assert stored["hvp_cost_vs_gradient"] > 0 and stored["checkpoint_epoch"] == 1


def test_float32_and_float64_agree(finished_run):
    options = dict(max_iter=40, tol=1e-4, trace_probes=0, max_samples=128)
    single = measure_run(finished_run, dtype="float32", **options)["lambda_max"]
    double = measure_run(finished_run, dtype="float64", **options)["lambda_max"]
    assert single == pytest.approx(double, rel=1e-3)


def test_an_unfinished_run_is_refused(finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    summary["status"] = "running"
    (finished_run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ConfigError, match="run is not finished"):
        measure_run(finished_run)


def test_cli_measures_every_run_in_a_folder_once(make_cfg, tmp_path):
    for method in ("vanilla", "sam"):
        engine.train(make_cfg(f"method={method}", "epochs=1"))
    command = [sys.executable, "-m", "msam.sharpness.cli", f"runs={tmp_path / 'runs'}", "max_iter=15",
               "tol=1e-2", "trace_probes=2", "max_samples=64", "device=cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    measured = sorted((tmp_path / "runs").glob("*/sharpness.json"))
    assert len(measured) == 2
    stamp = [p.stat().st_mtime_ns for p in measured]
    subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, check=True)
    assert [p.stat().st_mtime_ns for p in measured] == stamp  # already measured: left alone


def test_cli_error_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "msam.sharpness.cli", f"run={tmp_path}/nothing"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "not a run directory" in result.stderr
