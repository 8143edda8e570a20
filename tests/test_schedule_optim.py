"""Schedules hit their configured shape; optimizers take their values from the config."""

import pytest
import torch

from msam.optim import build_optimizer
from msam.schedule import build_schedule


def lrs(cfg, total_steps):
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(cfg.optim, model)
    schedule = build_schedule(cfg.schedule, optimizer, total_steps)
    values = []
    for _ in range(total_steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return values, optimizer


def test_onecycle_warms_up_for_its_fraction_then_anneals(make_cfg):
    cfg = make_cfg("schedule=onecycle", "schedule.warmup_fraction=0.05", "optim.lr=0.5")
    values, optimizer = lrs(cfg, 200)
    peak = max(range(200), key=values.__getitem__)
    assert peak == round(0.05 * 200) - 1 and values[peak] == pytest.approx(0.5)
    assert values[0] == pytest.approx(0.5 / 25)
    assert values[-1] < 1e-3 and all(a >= b for a, b in zip(values[peak:], values[peak + 1:]))
    assert optimizer.param_groups[0]["momentum"] == 0.9  # not cycled


def test_step_schedule_drops_at_its_milestones(make_cfg):
    cfg = make_cfg("schedule=step", "schedule.milestones=[0.5,0.75]", "schedule.gamma=0.1", "optim.lr=1.0")
    values, _ = lrs(cfg, 100)
    assert values[49] == 1.0 and values[50] == pytest.approx(0.1) and values[75] == pytest.approx(0.01)


def test_constant_schedule_with_warmup(make_cfg):
    cfg = make_cfg("schedule=constant", "schedule.warmup_fraction=0.1", "optim.lr=1.0")
    values, _ = lrs(cfg, 50)
    assert values[0] == pytest.approx(0.2) and values[4:] == [1.0] * 46


def test_sgd_and_adamw_take_their_values_from_the_config(make_cfg):
    model = torch.nn.Linear(2, 2)
    sgd = build_optimizer(make_cfg("optim=sgd", "optim.nesterov=true", "optim.momentum=0.8").optim, model)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8
    adamw = build_optimizer(make_cfg("optim=adamw", "optim.weight_decay=0.3").optim, model)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.3


def test_weight_decay_can_skip_biases_and_norm_scales(make_cfg):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    optimizer = build_optimizer(make_cfg("optim.weight_decay_exclude_1d=true").optim, model)
    decayed, plain = optimizer.param_groups
    assert len(decayed["params"]) == 1 and len(plain["params"]) == 3 and plain["weight_decay"] == 0.0
