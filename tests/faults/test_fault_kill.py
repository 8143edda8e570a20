"""kill -9 from outside at random moments, mid-step and mid-write: the rerun ends bit-identical."""

import json
import os
import random
import signal
import subprocess
import time

import pytest

from msam import checkpoints
from helpers import assert_same_state, command, environment, the_run

KILLS = int(os.environ.get("MSAM_FAULT_KILLS", "3"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same run, never interrupted."""
    runs_dir = tmp_path_factory.mktemp("reference")
    subprocess.run(command(runs_dir), env=environment(), check=True, capture_output=True, timeout=600)
    return the_run(runs_dir)


def metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["epoch"], r["step"], r["train_loss"], r["test_loss"], r["test_acc"]) for r in rows]


def checkpoint_mtime(runs_dir):
    """last.pt's modification time, None while there is none (it may be renamed under our feet)."""
    try:
        return next(runs_dir.glob("*/last.pt")).stat().st_mtime_ns
    except (StopIteration, FileNotFoundError):
        return None


def kill_when(process, ready, timeout=120):
    """SIGKILL the process once ready() holds (or report that it finished first)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.01)
    process.wait()
    return False


def test_kill_at_random_steps_then_rerun_is_bit_identical(tmp_path, reference):
    runs_dir, rng, kills = tmp_path / "runs", random.Random(os.environ.get("MSAM_FAULT_SEED", "0")), 0
    for _ in range(KILLS):
        before = checkpoint_mtime(runs_dir) if runs_dir.exists() else None
        process = subprocess.Popen(command(runs_dir), env=environment(), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        delay = rng.uniform(0.0, 2.0)
        started = {}

        def training_for_a_while():  # this process has written a checkpoint, then `delay` seconds more
            if "at" not in started and runs_dir.exists() and checkpoint_mtime(runs_dir) not in (None, before):
                started["at"] = time.monotonic()
            return "at" in started and time.monotonic() - started["at"] >= delay

        if not kill_when(process, training_for_a_while):
            break  # the run finished before this kill: nothing left to interrupt
        kills += 1
        state, _ = checkpoints.load(the_run(runs_dir))
        print(f"kill {kills}: {delay:.2f} s after its first checkpoint; resumes from step {state['step']}")
    assert kills >= min(3, KILLS)
    subprocess.run(command(runs_dir), env=environment(), check=True, capture_output=True, timeout=600)
    assert_same_state(the_run(runs_dir), reference)
    assert metrics(the_run(runs_dir)) == metrics(reference)


def test_kill_during_a_checkpoint_write_then_rerun_is_bit_identical(tmp_path, reference):
    runs_dir = tmp_path / "runs"
    for _ in range(2):  # every write pauses halfway: a window to kill in
        process = subprocess.Popen(command(runs_dir, slow_writes=True), env=environment(), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        assert kill_when(process, lambda: any(runs_dir.glob("*/.last.pt.tmp*")))
    run_dir = the_run(runs_dir)
    assert list(run_dir.glob(".last.pt.tmp*"))  # a half-written checkpoint is left behind
    result = subprocess.run(command(runs_dir), env=environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "removed unfinished writes of a killed process: .last.pt.tmp" in result.stdout + result.stderr
    assert not list(run_dir.glob(".*.tmp*"))
    assert_same_state(run_dir, reference)
    assert metrics(run_dir) == metrics(reference)
