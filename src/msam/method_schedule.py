"""Which method trains each epoch: cfg.method, and with a hybrid switch cfg.switch.then from the
switch epoch on; with method.impl=auto, which implementation (measured once, kept on resume)."""

from __future__ import annotations

import logging
from dataclasses import asdict

import torch
from omegaconf import DictConfig

from msam import dist
from msam.methods import build_step, fixed_choice, uses_auto
from msam.methods.autotune import Choice, choose
from msam.precision import Precision

log = logging.getLogger("msam")


class MethodSchedule:
    """The method of each epoch: cfg.method, or with a switch, cfg.switch.then from switch_epoch on.
    With impl=auto or compile.step=auto the implementation is measured once, on the first training
    batch (msam.methods.autotune), or taken from the checkpoint of a resumed run."""

    def __init__(self, cfg: DictConfig, derived: dict, processes: int, precision: Precision) -> None:
        self.cfg, self.processes, self.precision = cfg, processes, precision
        self.switch_epoch = derived.get("switch_epoch")
        total, switch = derived["total_steps"], derived.get("switch_step")
        self.planned_steps = {"method": total if switch is None else switch,
                              "switch.then": None if switch is None else total - switch}
        self.ran: dict[str, str] = {}  # config key -> the implementation that runs (mSAM / RW-SAM, or compiled)
        self.tuning: dict[str, dict] = {}  # config key -> each candidate's Timing, as measured when the run began

    def build(self, model, loss_fn, loader, state: dict | None, ctx: dist.DistContext) -> None:
        """state: the checkpoint a resumed run continues from (None for a new run)."""
        self.first = self._build("method", self.cfg.method, model, loss_fn, loader, state, ctx)
        self.then = (self._build("switch.then", self.cfg.switch.then, model, loss_fn, loader, state, ctx)
                     if self.cfg.switch.then is not None else None)

    def record(self) -> dict:
        """What a checkpoint keeps, so that a resumed run runs (and reports) the same."""
        return {**self.ran, **{f"{key}.tuning": table for key, table in self.tuning.items()}}

    def derived(self) -> dict:
        """The implementations and the tuning's measurements, for the run's log and summary.json."""
        values = {f"{key}.impl": label for key, label in self.ran.items()}
        values.update({f"{key}.tuning": table for key, table in self.tuning.items()})
        compiling = sum(t["compile_seconds"] for table in self.tuning.values() for t in table.values())
        if compiling:
            values["compile.tuning_seconds"] = compiling
        return values

    def _build(self, key: str, method_cfg: DictConfig, model, loss_fn, loader, state: dict | None, ctx):
        compile_step = self.cfg.compile.step

        def build(choice: Choice):
            return build_step(method_cfg, self.cfg.compile, self.processes, model, self.precision, choice)

        if not (uses_auto(method_cfg) or compile_step == "auto"):
            choice = fixed_choice(method_cfg, compiled=compile_step is True)
            if method_cfg.name in ("msam", "rwsam") or choice.compiled:  # recorded for resumes and reports (Table 5)
                self.ran[key] = choice.label
            return build(choice)
        recorded = None
        if state is not None:  # a checkpoint from before impl=auto measured ran the loop on a CPU
            implementations = state.get("implementations", {})
            recorded = implementations.get(key, "loop")
            if f"{key}.tuning" in implementations:
                self.tuning[key] = implementations[f"{key}.tuning"]
        recorded = dist.broadcast_object(recorded, ctx)  # rank 0's checkpoint decides for every process
        if recorded is not None:
            choice = Choice.from_label(recorded)
            log.info(f"{key}.impl=auto: {choice.label}, as measured when this run started")
            method = build(choice)
        else:
            inputs, targets = next(iter(loader.epoch(0)))
            if self.cfg.channels_last and isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            choice, method, table = choose(
                build, method_cfg.m // self.processes if method_cfg.name in ("msam", "rwsam") else None,
                model, self.precision, loss_fn, (inputs, targets),
                steps=self.cfg.impl_tuning.steps, max_seconds=self.cfg.impl_tuning.max_seconds,
                keep_within=self.cfg.impl_tuning.keep_within, ctx=ctx, compiled=self.cfg.compile.enabled,
                reweighting=method_cfg.name == "rwsam", chunk_size=method_cfg.get("chunk_size"),
                compile_step=compile_step, planned_steps=self.planned_steps[key],
                compile_seconds_guess=self.cfg.impl_tuning.compile_seconds_guess)
            if table:
                self.tuning[key] = {label: asdict(timing) for label, timing in table.items()}
        self.ran[key] = choice.label
        return method

    def for_epoch(self, epoch: int, step: int):
        if self.then is None or epoch < self.switch_epoch:
            return self.first
        if epoch == self.switch_epoch:
            log.info(f"switching from {self.first.name} to {self.then.name} at epoch {epoch} (step {step})")
        return self.then
