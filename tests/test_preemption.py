"""A stop signal (SLURM's SIGUSR2 before a time limit or preemption) checkpoints mid-epoch and
hands over; the resumed run ends bit-identical to one that was never stopped."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from msam import engine, runs


def weights(cfg):
    return torch.load(runs.run_dir_for(cfg) / "last.pt", weights_only=True)["model"]


def without_seconds(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def signal_at_step(monkeypatch, at_step):
    """Deliver SIGUSR2 to this process during the optimizer step number at_step."""
    real, calls = engine.MethodSchedule.for_epoch, {"steps": 0}

    class Counting:
        """The method, with a signal sent during one call; its attributes (name, m, a compiled
        step's counts) read through."""

        def __init__(self, method):
            self.method = method

        def __getattr__(self, name):
            return getattr(self.method, name)

        def __call__(self, model, loss_fn, batch):
            calls["steps"] += 1
            if calls["steps"] == at_step:
                os.kill(os.getpid(), signal.SIGUSR2)
            return self.method(model, loss_fn, batch)

    def wrapped(self, epoch, step):
        return Counting(real(self, epoch, step))

    monkeypatch.setattr(engine.MethodSchedule, "for_epoch", wrapped)


@pytest.mark.parametrize("method", ["msam", "vanilla"])
def test_signal_checkpoints_mid_epoch_and_the_resume_is_bit_identical(make_cfg, tmp_path, monkeypatch, method):
    overrides = (f"method={method}", "method.m=4" if method == "msam" else "method.m=1", "epochs=3")
    whole = make_cfg(*overrides)
    engine.train(whole)

    stopped = make_cfg(*overrides)
    stopped.paths.runs = str(tmp_path / "stopped")
    signal_at_step(monkeypatch, 30)  # epoch 2 (22 steps per epoch), batch 8
    with pytest.raises(SystemExit) as exit_info:
        engine.train(stopped)
    assert exit_info.value.code == 3
    state = torch.load(runs.run_dir_for(stopped) / "last.pt", weights_only=True)
    assert (state["epoch"], state["step"], state["partial_epoch"]["batches"]) == (1, 30, 8)
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL  # our handler is gone

    monkeypatch.undo()
    engine.train(stopped)
    a, b = weights(whole), weights(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert without_seconds(runs.read_metrics(runs.run_dir_for(stopped) / "metrics.jsonl")) == without_seconds(
        runs.read_metrics(runs.run_dir_for(whole) / "metrics.jsonl"))


def test_the_previous_handler_gets_the_signal_after_the_checkpoint(make_cfg, monkeypatch):
    """Under submitit the previous handler requeues the job; it must run after our checkpoint."""
    seen = {}

    def submitit_like(signum, frame):
        seen["checkpoint_existed"] = (runs.run_dir_for(cfg) / "last.pt").is_file()
        raise SystemExit(-1)

    cfg = make_cfg("method=sam", "epochs=2")
    previous = signal.signal(signal.SIGUSR2, submitit_like)
    try:
        signal_at_step(monkeypatch, 5)
        with pytest.raises(SystemExit) as exit_info:
            engine.train(cfg)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert exit_info.value.code == -1 and seen["checkpoint_existed"]


def test_a_signal_from_outside_stops_the_process_and_the_command_resumes(tmp_path):
    command = [sys.executable, "-m", "msam.train", "method=msam", "method.m=8", "epochs=4", "device=cpu",
               "log_every_steps=0", f"paths.runs={tmp_path}/runs"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 120
    while not list((tmp_path / "runs").glob("*/metrics.jsonl")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.3)
    process.send_signal(signal.SIGUSR2)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr[-2000:]
    assert "stopped on SIGUSR2 after checkpointing" in stderr
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout + resumed.stderr
    run_dir = next((tmp_path / "runs").glob("*/summary.json")).parent
    assert [r["epoch"] for r in runs.read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3, 4]
