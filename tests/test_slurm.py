"""Against a real SLURM (slurm/local/up.sh starts one; CI does): the submitit launcher runs a
multirun as a job array, the sbatch templates run, and a preempted job is requeued and resumes.
Skipped when no SLURM is up, unless MSAM_REQUIRE_SLURM=1 (CI), where that is a failure."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msam import runs

REPO = Path(__file__).resolve().parents[1]


def slurm_is_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return result.returncode == 0 and any(s in result.stdout for s in ("idle", "mixed", "allocated"))


if not slurm_is_up():
    if os.environ.get("MSAM_REQUIRE_SLURM") == "1":
        raise RuntimeError("MSAM_REQUIRE_SLURM=1 but no SLURM cluster answers (source slurm/local/up.sh)")
    pytestmark = [pytest.mark.slurm, pytest.mark.skip(reason="no SLURM cluster (source slurm/local/up.sh to start one)")]
else:
    pytestmark = pytest.mark.slurm

CPU_JOB = ["--gres=none", "--cpus-per-task=1", f"--export=ALL,MSAM_PYTHON={sys.executable}"]


def state_of(job_id: str) -> str:
    out = subprocess.run(["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", job_id],
                         capture_output=True, text=True).stdout.splitlines()[1:]
    return out[-1].split("|")[1] if out else "UNKNOWN"


def wait_for(job_id: str, timeout: float = 240) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = state_of(job_id)
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"):
            return state
        time.sleep(1)
    return state_of(job_id)


def finished_summaries(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("*/summary.json"))
            if json.loads(p.read_text())["status"] == "finished"]


def test_submitit_launcher_runs_a_multirun_as_slurm_jobs(tmp_path):
    command = [sys.executable, "-m", "msam.train", "-m", "launcher=slurm", "method=vanilla,sam", "epochs=1",
               "log_every_steps=0", "device=cpu", f"paths.runs={tmp_path}/runs", "hydra.launcher.partition=debug",
               "hydra.launcher.tasks_per_node=1", "hydra.launcher.gpus_per_node=null",
               "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = finished_summaries(tmp_path / "runs")
    assert sorted(s["method"] for s in summaries) == ["sam", "vanilla"]
    assert list((tmp_path / "runs" / "_submitit").iterdir())  # submitit's job folders: it really went through SLURM


def test_seeds_array_template_runs_each_seed(tmp_path):
    job = subprocess.run(["sbatch", "--parsable", f"--chdir={REPO}", *CPU_JOB, "--array=0-1",
                          f"--output={tmp_path}/%A_%a.out", "slurm/seeds_array.sbatch", "method=sam", "epochs=1",
                          "log_every_steps=0", "device=cpu", f"paths.runs={tmp_path}/runs"],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()
    for task in ("0", "1"):
        assert wait_for(f"{job}_{task}") == "COMPLETED"
    assert sorted(s["seed"] for s in finished_summaries(tmp_path / "runs")) == [0, 1]


def test_a_preempted_job_checkpoints_is_requeued_and_resumes(tmp_path):
    job = subprocess.run(["sbatch", "--parsable", f"--chdir={REPO}", *CPU_JOB, "--cpus-per-task=2",
                          f"--output={tmp_path}/job.out", "slurm/seeds_array.sbatch", "method=msam", "method.m=8",
                          "epochs=5", "log_every_steps=0", "device=cpu", f"paths.runs={tmp_path}/runs"],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()
    deadline = time.time() + 180
    while not list((tmp_path / "runs").glob("*/metrics.jsonl")) and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(0.5)
    # what SLURM does before a time limit with --signal=B:USR2@120, or on preemption
    subprocess.run(["scancel", "--batch", "--signal=USR2", job], check=True)
    assert wait_for(job, timeout=400) == "COMPLETED"
    log = (tmp_path / "job.out").read_text()
    assert "checkpointed at epoch" in log and "resuming" in log
    (summary,) = finished_summaries(tmp_path / "runs")
    rows = runs.read_metrics(Path(summary["run_dir"]) / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]


def test_sharpness_template_measures_a_run_with_two_processes(tmp_path):
    train = [sys.executable, "-m", "msam.train", "method=sam", "epochs=1", "log_every_steps=0", "device=cpu",
             f"paths.runs={tmp_path}/runs"]
    subprocess.run(train, capture_output=True, text=True, cwd=tmp_path, check=True, timeout=300)
    (run_dir,) = [p.parent for p in (tmp_path / "runs").glob("*/summary.json")]
    job = subprocess.run(["sbatch", "--parsable", f"--chdir={REPO}", *CPU_JOB[:2], "--cpus-per-task=2",
                          f"--export=ALL,MSAM_PYTHON={sys.executable},NPROC=2,OMP_NUM_THREADS=1",
                          f"--output={tmp_path}/job.out", "slurm/sharpness.sbatch", f"runs={tmp_path}/runs",
                          "max_iter=10", "tol=1e-2", "trace_probes=2", "max_samples=101", "device=cpu"],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()
    assert wait_for(job) == "COMPLETED", (tmp_path / "job.out").read_text()[-3000:]
    result = json.loads((run_dir / "sharpness.json").read_text())
    assert result["data"]["processes"] == 2 and result["data"]["samples"] == 101 and result["converged"]
