"""Learning-rate schedules, stepped once per optimizer step.

onecycle: torch's OneCycleLR (warm-up for warmup_fraction of the steps from lr/div_factor to
the peak lr, then annealing to lr/(div_factor*final_div_factor)); momentum cycling is off
unless the config turns it on, so SGD keeps its configured momentum.
constant / step: optional linear warm-up, then constant or multiplied by gamma at each
milestone (fractions of training).
"""

from __future__ import annotations

import bisect

import torch

from msam.errors import ConfigError

SCHEDULE_NAMES = ("onecycle", "constant", "step")


def schedule_steps(cfg, total_steps: int) -> dict:
    """The schedule's positions in optimizer steps: the derived values the run logs."""
    steps = {"total_steps": total_steps, "warmup_steps": round(cfg.warmup_fraction * total_steps)}
    if cfg.name == "step":
        steps["milestone_steps"] = [round(f * total_steps) for f in cfg.milestones]
    return steps


class WarmupThenSteps:
    """LambdaLR factor: linear warm-up to 1, then gamma ** (milestones passed)."""

    def __init__(self, warmup_steps: int, milestone_steps: list[int], gamma: float) -> None:
        self.warmup_steps, self.milestone_steps, self.gamma = warmup_steps, milestone_steps, gamma

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return self.gamma ** bisect.bisect_right(self.milestone_steps, step)


def build_schedule(cfg, optimizer: torch.optim.Optimizer, total_steps: int):
    steps = schedule_steps(cfg, total_steps)
    if cfg.name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total_steps,
            pct_start=cfg.warmup_fraction, anneal_strategy=cfg.anneal, div_factor=cfg.div_factor,
            final_div_factor=cfg.final_div_factor, cycle_momentum=cfg.cycle_momentum,
            three_phase=False,
        )
    if cfg.name in ("constant", "step"):
        milestones = steps.get("milestone_steps", [])
        factor = WarmupThenSteps(steps["warmup_steps"], milestones, cfg.get("gamma", 1.0))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    raise ConfigError(f"unknown schedule '{cfg.name}'; valid: {', '.join(SCHEDULE_NAMES)}")
