"""NaN or inf in the loss or the update direction: stop with the last good checkpoint, or skip."""

import json
import math

import pytest
import torch

from msam import checkpoints, engine, runs
from msam.errors import RunError

SMALL = ("method=vanilla", "batch_size=32", "epochs=2", "checkpoint_every_steps=5")


def poison(monkeypatch, bad_steps, kind):
    """The loss function turns non-finite at the given (1-based) vanilla steps: vanilla calls it
    once per step. kind 'loss': a NaN loss; 'direction': a finite loss whose gradient is NaN."""
    real, calls = engine.per_sample_cross_entropy, {"n": 0}

    def make(label_smoothing):
        base = real(label_smoothing)

        def loss_fn(logits, targets):
            calls["n"] += 1
            losses = base(logits, targets)
            if calls["n"] not in bad_steps:
                return losses
            if kind == "loss":
                return losses * float("nan")
            return losses + 0.0 * (logits - logits.detach()).abs().sqrt().sum(1)  # value + 0, d/dx sqrt|0| = inf

        return loss_fn

    monkeypatch.setattr(engine, "per_sample_cross_entropy", make)


@pytest.mark.parametrize("kind,what", [("loss", "loss"), ("direction", "update direction")])
def test_a_non_finite_step_stops_the_run_and_keeps_the_last_good_checkpoint(make_cfg, monkeypatch, kind, what):
    cfg = make_cfg(*SMALL)
    poison(monkeypatch, {7}, kind)
    with pytest.raises(RunError, match=rf"non-finite {what} at step 7 \(epoch 1, batch 7\): the run stops"):
        engine.train(cfg)
    run_dir = runs.run_dir_for(cfg)
    state, _ = checkpoints.load(run_dir)
    assert state["step"] == 5 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and f"non-finite {what} at step 7" in summary["error"]


@pytest.mark.parametrize("kind", ["loss", "direction"])
def test_skip_keeps_the_weights_finite_and_counts_the_skipped_steps(make_cfg, monkeypatch, kind):
    poison(monkeypatch, {7, 8}, kind)
    cfg = make_cfg(*SMALL, "nonfinite=skip")
    summary = engine.train(cfg)
    assert summary["status"] == "finished"
    rows = runs.read_metrics(runs.run_dir_for(cfg) / "metrics.jsonl")
    assert rows[0]["skipped_steps"] == 2 and "skipped_steps" not in rows[1] and math.isfinite(rows[0]["train_loss"])
    state, _ = checkpoints.load(runs.run_dir_for(cfg))
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_without_the_guard_a_nan_reaches_the_weights(make_cfg, monkeypatch):
    """The guard is what keeps them finite: with nonfinite=off the same poison gets through."""
    poison(monkeypatch, {7}, "loss")
    cfg = make_cfg(*SMALL, "nonfinite=off")
    engine.train(cfg)
    state, _ = checkpoints.load(runs.run_dir_for(cfg))
    assert not all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
