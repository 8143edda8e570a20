"""Which method trains each epoch: cfg.method, and with a hybrid switch cfg.switch.then from the
switch epoch on; with method.impl=auto, which implementation (measured once, kept on resume)."""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig

from msam import dist
from msam.methods import build_method, uses_auto
from msam.methods.autotune import Choice, choose
from msam.precision import Precision

log = logging.getLogger("msam")


class MethodSchedule:
    """The method of each epoch: cfg.method, or with a switch, cfg.switch.then from switch_epoch on.
    With impl=auto the implementation is measured once, on the first training batch
    (msam.methods.autotune), or taken from the checkpoint of a resumed run."""

    def __init__(self, cfg: DictConfig, derived: dict, processes: int, precision: Precision) -> None:
        self.cfg, self.processes, self.precision = cfg, processes, precision
        self.switch_epoch = derived.get("switch_epoch")
        self.ran: dict[str, str] = {}  # config key -> the implementation of every mSAM / RW-SAM method

    def build(self, model, loss_fn, loader, state: dict | None, ctx: dist.DistContext) -> None:
        """state: the checkpoint a resumed run continues from (None for a new run)."""
        self.first = self._build("method", self.cfg.method, model, loss_fn, loader, state, ctx)
        self.then = (self._build("switch.then", self.cfg.switch.then, model, loss_fn, loader, state, ctx)
                     if self.cfg.switch.then is not None else None)

    def _build(self, key: str, method_cfg: DictConfig, model, loss_fn, loader, state: dict | None, ctx):
        if not uses_auto(method_cfg):
            if method_cfg.name in ("msam", "rwsam"):  # recorded for resumes and reports (Table 5)
                self.ran[key] = Choice(method_cfg.get("impl", "loop"), method_cfg.get("chunk_size")).label
            return build_method(method_cfg, self.processes, model, self.precision)
        recorded = None
        if state is not None:  # a checkpoint from before impl=auto measured ran the loop on a CPU
            recorded = state.get("implementations", {}).get(key, "loop")
        recorded = dist.broadcast_object(recorded, ctx)  # rank 0's checkpoint decides for every process
        if recorded is not None:
            choice = Choice.from_label(recorded)
            log.info(f"{key}.impl=auto: {choice.label}, as measured when this run started")
        else:
            inputs, targets = next(iter(loader.epoch(0)))
            if self.cfg.channels_last and isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            choice, _ = choose(lambda c: build_method(method_cfg, self.processes, model, self.precision, c),
                               method_cfg.m // self.processes, model, self.precision, loss_fn, (inputs, targets),
                               steps=self.cfg.impl_tuning.steps, max_seconds=self.cfg.impl_tuning.max_seconds,
                               keep_within=self.cfg.impl_tuning.keep_within,
                               ctx=ctx, compiled=self.cfg.compile.enabled, reweighting=method_cfg.name == "rwsam",
                               chunk_size=method_cfg.get("chunk_size"))
        self.ran[key] = choice.label
        return build_method(method_cfg, self.processes, model, self.precision, choice)

    def for_epoch(self, epoch: int, step: int):
        if self.then is None or epoch < self.switch_epoch:
            return self.first
        if epoch == self.switch_epoch:
            log.info(f"switching from {self.first.name} to {self.then.name} at epoch {epoch} (step {step})")
        return self.then
