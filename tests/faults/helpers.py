"""Shared by the fault-injection tests: the training command and exact comparison of run states."""

import os
import sys

import torch

from msam import checkpoints

# digits, mSAM with 4 micro-batches of 4, 3 epochs of 89 steps: a few seconds of training on CPU
# (MSAM_FAULT_EPOCHS: more epochs, room for more kills)
TRAIN = ["method=msam", "method.m=4", "method.impl=loop", "batch_size=16", f"epochs={os.environ.get('MSAM_FAULT_EPOCHS', '3')}", "device=cpu", "log_every_steps=0",
         "checkpoint_every_steps=5"]


SLOW_WRITES = os.path.join(os.path.dirname(__file__), "slow_writes.py")


def command(runs_dir, *extra, slow_writes=False):
    """msam-train on TRAIN; slow_writes: every run-directory write pauses halfway (slow_writes.py)."""
    launcher = [SLOW_WRITES] if slow_writes else ["-m", "msam.train"]
    return [sys.executable, *launcher, *TRAIN, f"paths.runs={runs_dir}", *extra]


def environment(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def the_run(runs_dir):
    (run_dir,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    return run_dir


def assert_same_state(a_dir, b_dir):
    """Weights, BatchNorm buffers, optimizer state, schedule position, RNG and step: bit for bit."""
    a, _ = checkpoints.load(a_dir)
    b, _ = checkpoints.load(b_dir)
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            other = b["optimizer"]["state"][index][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, (index, key)
    assert a["scheduler"] == b["scheduler"]
    assert torch.equal(a["rng_cpu"], b["rng_cpu"])
