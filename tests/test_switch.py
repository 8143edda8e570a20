"""Hybrid training (paper Appendix B): one method for the first part of the epochs, then another."""

import logging

import pytest
import torch

from msam import engine, runs


def metrics(cfg):
    return runs.read_metrics(runs.run_dir_for(cfg) / "metrics.jsonl")


@pytest.mark.parametrize("first, switch, second", [("msam", "to_vanilla", "vanilla"), ("vanilla", "to_msam", "msam")])
def test_the_switch_happens_at_the_logged_epoch(make_cfg, caplog, first, switch, second):
    cfg = make_cfg(f"method={first}", "method.m=4" if first == "msam" else "method.m=1", f"switch={switch}",
                   "switch.fraction=0.34", "epochs=3", "switch.then.m=4" if second == "msam" else "switch.then.m=1")
    with caplog.at_level(logging.INFO, logger="msam"):
        summary = engine.train(cfg)
    assert [row["method"] for row in metrics(cfg)] == [first, second, second]
    assert summary["derived"]["switch_epoch"] == 1 and summary["derived"]["switch_step"] == 22
    assert summary["switch_to"] == second and summary["switch_fraction"] == 0.34
    assert any(f"switching from {first} to {second} at epoch 1 (step 22)" in r.getMessage() for r in caplog.records)
    assert f"_to_{second}_at0.34_" in runs.run_dir_for(cfg).name


def test_before_the_switch_the_run_is_exactly_the_first_method(make_cfg):
    hybrid = make_cfg("method=msam", "method.m=4", "switch=to_vanilla", "switch.fraction=0.5", "epochs=2")
    pure = make_cfg("method=msam", "method.m=4", "epochs=2")
    engine.train(hybrid)
    engine.train(pure)
    assert metrics(hybrid)[0] | {"seconds": 0} == metrics(pure)[0] | {"seconds": 0}
    assert metrics(hybrid)[1]["train_loss"] != metrics(pure)[1]["train_loss"]


def test_resume_across_the_switch_is_bit_identical(make_cfg, tmp_path, train_interrupted):
    # the loop pinned after the switch too: with impl=auto two runs may time loop and vmap differently
    overrides = ("method=vanilla", "switch=to_msam", "switch.then.m=4", "switch.then.impl=loop", "switch.fraction=0.34",
                 "epochs=3")
    whole = make_cfg(*overrides)
    engine.train(whole)
    interrupted = make_cfg(*overrides)
    interrupted.paths.runs = str(tmp_path / "interrupted")
    train_interrupted(interrupted, in_epoch=3)  # dies after the switch
    a = torch.load(runs.run_dir_for(whole) / "last.pt", weights_only=True)["model"]
    b = torch.load(runs.run_dir_for(interrupted) / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [row["method"] for row in metrics(interrupted)] == ["vanilla", "msam", "msam"]
