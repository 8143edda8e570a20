"""method.impl=auto: time the implementations that compute the same direction on the run's own
model, batch and device, and keep the fastest.

Which of the loop, vmap and vmap_ascent wins depends on the model, the micro-batch size and the device (the
loop wins for ResNet-18 at B = 128 on a 2-core CPU, vmap for the small CNN on digits): a rule
cannot know, a measurement of a few steps does. The tuning leaves no trace: weights, BatchNorm
buffers, .grad and the random streams are restored afterwards and the optimizer is not touched,
so a run with auto equals, bit for bit, a run with the implementation auto chose. A candidate that
fails (vmap out of memory, an operation vmap lacks) is dropped with a warning. Under torchrun
every process runs the same candidates for the same number of rounds (failures and the time cap
are agreed on) and the timings are max-reduced, so all processes take the same choice. The engine
keeps the choice in the checkpoint: a resumed run does not tune again.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from msam import dist, timing
from msam.batchnorm_layers import batchnorms

log = logging.getLogger("msam")


@dataclass(frozen=True)
class Choice:
    """One implementation: the loop, or vmap / vmap_ascent with an optional chunk size."""

    impl: str
    chunk_size: int | None = None

    @property
    def label(self) -> str:
        return self.impl if self.chunk_size is None else f"{self.impl}(chunk_size={self.chunk_size})"

    @classmethod
    def from_label(cls, label: str) -> "Choice":
        if "(" not in label:
            return cls(label)
        impl, rest = label.split("(", 1)
        return cls(impl, int(rest.rstrip(")").split("=")[1]))


def vmap_refused(model, precision) -> str | None:
    """Why vmap cannot run this model at this precision, or None."""
    if model is not None and precision.mixed and precision.device_type == "cpu" and batchnorms(model):
        return ("method.impl=vmap with bf16/fp16 autocast does not run BatchNorm models on a CPU; use "
                "method.impl=loop (or precision=fp32)")
    return None


def candidates(m: int, model, precision, *, dict_inputs: bool = False, compiled: bool = False,
               reweighting: bool = False, chunk_size: int | None = None) -> list[Choice]:
    """The implementations that can run this configuration. vmap and vmap_ascent (vmap's ascent,
    the loop's descent) need tensor inputs, an uncompiled model and no reweighting (RW-SAM's probe
    runs in the loop only). A chunk_size the user set is the only chunking tried (it bounds the activations);
    otherwise vmap runs all m at once and, for m >= 8, a quarter of them at a time."""
    choices = [Choice("loop")]
    if m == 1 or dict_inputs or compiled or reweighting or vmap_refused(model, precision):
        return choices
    if chunk_size is not None:
        return choices + [Choice("vmap", chunk_size), Choice("vmap_ascent", chunk_size)]
    choices.append(Choice("vmap"))
    if m >= 8:
        choices.append(Choice("vmap", m // 4))
    return choices + [Choice("vmap_ascent")]


def tune(methods: dict[Choice, object], model, loss_fn, batch, *, steps: int, max_seconds: float,
         keep_within: float, ctx: dist.DistContext) -> tuple[Choice, dict[str, float]]:
    """The fastest of `methods` and the table of their best times (ms per step).

    One untimed warm-up round, then up to `steps` timed rounds, the candidates interleaved within
    each. A candidate's time is its fastest round: on a shared machine a step is only ever slowed
    down by other work, never sped up, so the minimum is the estimate least moved by that noise.
    After each round a candidate whose best is more than `keep_within` times the leader's is
    dropped, so the remaining rounds go to the close ones (and a clearly slower vmap costs one
    round, not all of them). Tuning stops after `max_seconds`. Each round's times are max-reduced
    over the processes before any decision, so every process keeps and drops the same candidates."""
    if len(methods) == 1:
        return next(iter(methods)), {}
    network = dist.unwrap(model)
    params = [p for p in network.parameters() if p.requires_grad]
    tensors = [*network.parameters(), *network.buffers()]  # non-persistent buffers too
    saved = [t.detach().clone() for t in tensors]
    saved_grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    device = params[0].device
    saved_rng = torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    order = list(methods)
    best = {choice: math.inf for choice in order}
    failed: dict[Choice, str] = {}
    dropped: dict[Choice, str] = {}
    start = time.perf_counter()
    try:
        for round_ in range(steps + 1):
            elapsed = torch.zeros(len(order), dtype=torch.float64, device=ctx.device)
            for i, choice in enumerate(order):
                if choice in failed or choice in dropped:
                    continue
                before = timing.now(device)
                error = None
                try:
                    methods[choice](model, loss_fn, batch)
                except (RuntimeError, NotImplementedError) as caught:  # out of memory, an op vmap lacks
                    if choice.impl == "loop":
                        raise  # the reference implementation: the run could not train at all
                    error = f"{type(caught).__name__}: {str(caught).splitlines()[0][:200]}"
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                elapsed[i] = 1000 * (timing.now(device) - before)
                if dist.any_flag(error is not None, ctx):  # dropped on every process, or on none
                    failed[choice] = error or "failed on another process"
            if round_ == 0:
                continue  # warm-up: allocations, kernel selection, caches
            dist.all_reduce_([elapsed], ctx, torch.distributed.ReduceOp.MAX)  # the slowest process counts
            live = [c for c in order if c not in failed and c not in dropped]
            for i, choice in enumerate(order):
                if choice in live:
                    best[choice] = min(best[choice], elapsed[i].item())
            leader = min(best[c] for c in live)
            for choice in live:
                if best[choice] > keep_within * leader:
                    dropped[choice] = f"{best[choice] / leader:.2f}x the fastest after {round_} round(s)"
            if sum(c not in dropped for c in live) <= 1:
                break
            if dist.any_flag(time.perf_counter() - start > max_seconds, ctx):
                break
    finally:
        with torch.no_grad():
            torch._foreach_copy_(tensors, saved)
        for p, grad in zip(params, saved_grads):
            p.grad = grad
        torch.set_rng_state(saved_rng[0])
        if saved_rng[1]:
            torch.cuda.set_rng_state_all(saved_rng[1])
    for choice, reason in failed.items():
        log.warning(f"impl=auto: {choice.label} cannot run this configuration ({reason}); not a candidate")
    timed = [c for c in order if c not in failed]
    table = {choice.label: best[choice] for choice in timed}
    chosen = min((c for c in timed if c not in dropped), key=lambda c: best[c])
    log.info("impl=auto: " + ", ".join(f"{choice.label} {best[choice]:.1f} ms"
                                       + (f" (dropped: {dropped[choice]})" if choice in dropped else "")
                                       for choice in timed)
             + f" per step (best round) -> {chosen.label}")
    return chosen, table


def choose(build, m: int, model, precision, loss_fn, batch, *, steps: int, max_seconds: float,
           keep_within: float, ctx: dist.DistContext, compiled: bool = False, reweighting: bool = False,
           chunk_size: int | None = None) -> tuple[Choice, object]:
    """impl=auto in one call: the candidates for this configuration, each built by build(choice),
    tuned on `batch`; returns the choice and its method."""
    options = candidates(m, dist.unwrap(model), precision, dict_inputs=isinstance(batch[0], dict),
                         compiled=compiled, reweighting=reweighting, chunk_size=chunk_size)
    methods = {choice: build(choice) for choice in options}
    choice, _ = tune(methods, model, loss_fn, batch, steps=steps, max_seconds=max_seconds,
                     keep_within=keep_within, ctx=ctx)
    if len(options) == 1:
        log.info(f"impl=auto: {choice.label} (the only implementation for this configuration)")
    return choice, methods[choice]
