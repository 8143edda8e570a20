"""Damaged checkpoints, a full disk, two processes on one run directory, a changed config."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from msam import checkpoints, engine, runs
from msam.errors import RunError
from msam.lock import RunLock
from helpers import assert_same_state

SMALL = ("method=msam", "method.m=4", "batch_size=32", "epochs=3")


def finished_and_reference(make_cfg, tmp_path):
    """A finished 3-epoch run and an identical one to damage and resume."""
    reference = make_cfg(*SMALL, f"paths.runs={tmp_path}/reference")
    engine.train(reference)
    cfg = make_cfg(*SMALL)
    engine.train(cfg)
    return runs.run_dir_for(cfg), runs.run_dir_for(reference), cfg


def reopen_after_epoch_two(run_dir):
    """Make the finished run look killed after its second epoch: previous.pt is epoch 2's checkpoint."""
    state, _ = checkpoints.load(run_dir)
    assert state["epoch"] == 3 and (run_dir / checkpoints.PREVIOUS).is_file()
    os.replace(run_dir / checkpoints.PREVIOUS, run_dir / checkpoints.LAST)
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "running"}))


def test_a_truncated_last_checkpoint_is_named_and_the_previous_one_used(make_cfg, tmp_path, caplog):
    run_dir, reference, cfg = finished_and_reference(make_cfg, tmp_path)
    reopen_after_epoch_two(run_dir)
    engine.train(cfg)  # epoch 3 again: last.pt (epoch 3) and previous.pt (epoch 2)
    reopen_after_epoch_two(run_dir)
    checkpoints.save(run_dir, checkpoints.read(run_dir / checkpoints.LAST))  # previous.pt = epoch 2 as well
    data = (run_dir / checkpoints.LAST).read_bytes()
    (run_dir / checkpoints.LAST).write_bytes(data[:len(data) // 2])  # torn: half a file
    with caplog.at_level("WARNING", logger="msam"):
        summary = engine.train(cfg)
    assert f"checkpoint {run_dir / 'last.pt'} is unreadable" in caplog.text
    assert summary["status"] == "finished"
    assert_same_state(run_dir, reference)


def test_killed_between_the_two_renames_resumes_from_previous(make_cfg, tmp_path):
    run_dir, reference, cfg = finished_and_reference(make_cfg, tmp_path)
    reopen_after_epoch_two(run_dir)
    os.replace(run_dir / checkpoints.LAST, run_dir / checkpoints.PREVIOUS)  # last.pt moved away, new one not yet in
    (run_dir / ".last.pt.tmp99999").write_bytes(b"half")
    assert engine.train(cfg)["status"] == "finished"
    assert not (run_dir / ".last.pt.tmp99999").exists()
    assert_same_state(run_dir, reference)


def test_two_damaged_checkpoints_are_one_clear_error(make_cfg, tmp_path):
    run_dir, _, cfg = finished_and_reference(make_cfg, tmp_path)
    reopen_after_epoch_two(run_dir)
    checkpoints.save(run_dir, checkpoints.read(run_dir / checkpoints.LAST))
    for name in (checkpoints.LAST, checkpoints.PREVIOUS):
        (run_dir / name).write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(RunError, match=r"no readable checkpoint in .* \(last.pt and previous.pt damaged\): resume=never"):
        engine.train(cfg)


def test_a_full_disk_stops_the_run_and_damages_nothing(make_cfg, monkeypatch):
    cfg = make_cfg(*SMALL)
    run_dir = runs.run_dir_for(cfg)
    real_fsync, calls = os.fsync, {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if (run_dir / "summary.json").is_file():  # the first epoch is fully written: now the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(runs.os, "fsync", fsync)
    with pytest.raises(RunError, match=r"could not write .*: No space left on device"):
        engine.train(cfg)
    monkeypatch.setattr(runs.os, "fsync", real_fsync)
    state, path = checkpoints.load(run_dir)
    assert path.name == "last.pt" and state["epoch"] == 1  # epoch 1's checkpoint, intact
    assert [r["epoch"] for r in runs.read_metrics(run_dir / "metrics.jsonl")] == [1]
    assert json.loads((run_dir / "summary.json").read_text())["epochs_completed"] == 1
    assert not list(run_dir.glob(".*.tmp*"))
    assert engine.train(cfg)["status"] == "finished"  # space is back: the same command finishes the run


def test_a_second_process_on_the_same_run_is_refused(make_cfg):
    cfg = make_cfg(*SMALL)
    run_dir = runs.run_dir_for(cfg)
    run_dir.mkdir(parents=True)
    owner = RunLock(run_dir).acquire()  # another process training this run
    with pytest.raises(RunError, match=rf"{run_dir} is in use by pid {os.getpid()} on .*: the same run was started twice"):
        engine.train(cfg)
    owner.release()
    assert engine.train(cfg)["status"] == "finished"


def test_the_lock_dies_with_its_process(make_cfg, tmp_path):
    cfg = make_cfg(*SMALL)
    run_dir = runs.run_dir_for(cfg)
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from msam.lock import RunLock; lock = RunLock(Path(sys.argv[1])).acquire(); "
                               "print('locked', flush=True); time.sleep(600)", str(run_dir)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunError, match="is in use by pid"):
        engine.train(cfg)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert engine.train(cfg)["status"] == "finished"  # no stale lock to clean up by hand


def test_a_checkpoint_from_another_config_is_refused_unless_forced(make_cfg):
    cfg = make_cfg(*SMALL)
    engine.train(cfg)
    run_dir = runs.run_dir_for(cfg)
    reopen_after_epoch_two(run_dir)
    state = checkpoints.read(run_dir / checkpoints.LAST)
    state["config"]["method"]["rho"] = 0.5
    state["config"]["model"]["width"] = 99
    checkpoints.save(run_dir, state)
    with pytest.raises(RunError, match=r"last.pt was written by another config \(method.rho, model.width differ\)"):
        engine.train(cfg)
    assert engine.train(make_cfg(*SMALL, "resume=force"))["status"] == "finished"


def test_cli_reports_a_run_error_in_one_line(make_cfg, tmp_path):
    cfg = make_cfg(*SMALL)
    run_dir = runs.run_dir_for(cfg)
    run_dir.mkdir(parents=True)
    owner = RunLock(run_dir).acquire()
    result = subprocess.run([sys.executable, "-m", "msam.train", *SMALL, "device=cpu", "method.impl=loop",
                             f"paths.runs={tmp_path}/runs"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    owner.release()
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("msam-train: error: ") and "is in use by pid" in lines[-1]
    assert "Traceback" not in result.stderr
