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


COMPILED_PREFIX = "compiled:"
STEP = "step"  # the implementation of a method that has one (vanilla, SAM, ASAM, RW-SAM)


@dataclass(frozen=True)
class Choice:
    """One implementation: the loop, or vmap / vmap_ascent with an optional chunk size (mSAM), or
    `step` (a method with one implementation); eager or compiled (compile.step)."""

    impl: str
    chunk_size: int | None = None
    compiled: bool = False

    @property
    def label(self) -> str:
        label = self.impl if self.chunk_size is None else f"{self.impl}(chunk_size={self.chunk_size})"
        return COMPILED_PREFIX + label if self.compiled else label

    @classmethod
    def from_label(cls, label: str) -> "Choice":
        compiled = label.startswith(COMPILED_PREFIX)
        label = label.removeprefix(COMPILED_PREFIX)
        if "(" not in label:
            return cls(label, compiled=compiled)
        impl, rest = label.split("(", 1)
        return cls(impl, int(rest.rstrip(")").split("=")[1]), compiled)


def vmap_refused(model, precision) -> str | None:
    """Why vmap cannot run this model at this precision, or None."""
    if model is not None and precision.mixed and precision.device_type == "cpu" and batchnorms(model):
        return ("method.impl=vmap with bf16/fp16 autocast does not run BatchNorm models on a CPU; use "
                "method.impl=loop (or precision=fp32)")
    return None


def eager_candidates(m: int, model, precision, *, dict_inputs: bool = False, compiled: bool = False,
                     reweighting: bool = False, chunk_size: int | None = None) -> list[Choice]:
    """The mSAM implementations that can run this configuration. vmap and vmap_ascent (vmap's ascent,
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


def candidates(eager: list[Choice], compile_step) -> list[Choice]:
    """compile.step=false: the eager implementations; true: each one compiled; auto: both."""
    compiled = [Choice(c.impl, c.chunk_size, compiled=True) for c in eager]
    return {False: eager, True: compiled, "auto": eager + compiled}[compile_step]


@dataclass(frozen=True)
class Timing:
    """One candidate's measurement and what a run of `planned_steps` steps would cost with it."""

    ms: float  # its best round
    compile_seconds: float  # what compiling it cost in this process (0 eager; the largest over processes)
    estimate_seconds: float  # compile_seconds + planned_steps x ms


def tune(methods: dict[Choice, object], model, loss_fn, batch, *, steps: int, max_seconds: float,
         keep_within: float, ctx: dist.DistContext, planned_steps: int = 0,
         time_alone: bool = False) -> tuple[Choice, dict[str, Timing]]:
    """The candidate of `methods` that makes the run cheapest, and each one's Timing by label.

    Eager candidates only: the fastest. With compiled ones (compile.step=auto), the run's cost is
    estimated as compile seconds plus planned_steps times the step: a compiled step is chosen only
    where the steps it saves pay for compiling it. Its compile seconds are those of its first
    (untimed) call here, which a chosen compiled step does not pay again.

    One untimed warm-up round, then up to `steps` timed rounds, the candidates interleaved within
    each. A candidate's time is its fastest round: on a shared machine a step is only ever slowed
    down by other work, never sped up, so the minimum is the estimate least moved by that noise.
    After each round a candidate whose best is more than `keep_within` times the leader's is
    dropped, so the remaining rounds go to the close ones (and a clearly slower vmap costs one
    round, not all of them). Tuning stops after `max_seconds`. Each round's times are max-reduced
    over the processes before any decision, so every process keeps and drops the same candidates."""
    if len(methods) == 1 and not time_alone:
        return next(iter(methods)), {}
    from msam.methods.compiled import compile_counts
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
                    if choice.impl == "loop" and not choice.compiled:
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
    compile_seconds = torch.tensor([compile_counts(methods[c]).seconds for c in timed], dtype=torch.float64,
                                   device=ctx.device)
    dist.all_reduce_([compile_seconds], ctx, torch.distributed.ReduceOp.MAX)
    table = {c.label: Timing(best[c], seconds, seconds + planned_steps * best[c] / 1000)
             for c, seconds in zip(timed, compile_seconds.tolist())}
    # A dropped candidate's best is more than keep_within x the leader's: it can win only where
    # the leader's compile seconds outweigh the steps, which is what the estimate decides.
    chosen = min(timed, key=lambda c: (table[c.label].estimate_seconds, best[c]))
    log.info("impl=auto: " + ", ".join(
        f"{c.label} {best[c]:.1f} ms" + (f" + {table[c.label].compile_seconds:.1f} s compiling" if c.compiled else "")
        + (f" (dropped: {dropped[c]})" if c in dropped else "") for c in timed)
        + f" per step (best round)"
        + (f"; over {planned_steps} steps: " + ", ".join(f"{c.label} {table[c.label].estimate_seconds:.0f} s"
                                                         for c in timed) if any(c.compiled for c in timed) else "")
        + f" -> {chosen.label}")
    return chosen, table


def choose(build, m: int | None, model, precision, loss_fn, batch, *, steps: int, max_seconds: float,
           keep_within: float, ctx: dist.DistContext, compiled: bool = False, reweighting: bool = False,
           chunk_size: int | None = None, compile_step=False, planned_steps: int = 0,
           compile_seconds_guess: float = 0.0) -> tuple[Choice, object, dict[str, Timing]]:
    """impl=auto (and compile.step=auto) in one call: the candidates for this configuration, each
    built by build(choice), tuned on `batch`; returns the choice, its method and the timings.
    m=None: a method with one implementation (vanilla, SAM, ASAM), tuned eager against compiled."""
    eager = [Choice(STEP)] if m is None else eager_candidates(
        m, dist.unwrap(model), precision, dict_inputs=isinstance(batch[0], dict), compiled=compiled,
        reweighting=reweighting, chunk_size=chunk_size)
    settings = dict(steps=steps, max_seconds=max_seconds, keep_within=keep_within, ctx=ctx,
                    planned_steps=planned_steps)
    if compile_step == "auto":
        return choose_compiled(build, eager, model, loss_fn, batch, settings, compile_seconds_guess)
    options = candidates(eager, compile_step)
    methods = {choice: build(choice) for choice in options}
    choice, table = tune(methods, model, loss_fn, batch, **settings)
    if len(options) == 1:
        log.info(f"impl=auto: {choice.label} (the only implementation for this configuration)")
    return choice, methods[choice], table


def choose_compiled(build, eager: list[Choice], model, loss_fn, batch, settings: dict,
                    compile_seconds_guess: float) -> tuple[Choice, object, dict[str, Timing]]:
    """compile.step=auto: the eager implementations first, then their compiled forms, fastest eager
    first, each timed against the leader so far. Compiling one costs tens of seconds, so a
    compiled candidate is compiled only where it could still make the run cheaper than the best
    estimate so far, assuming it compiles no faster than the quickest compile measured so far
    (before the first: compile_seconds_guess, impl_tuning's) and steps no faster than the fastest
    compiled step measured so far. Each candidate not compiled is logged with its reason."""
    methods = {c: build(c) for c in eager}
    leader, table = tune(methods, model, loss_fn, batch, **settings, time_alone=True)
    planned = settings["planned_steps"]
    for choice in sorted(eager, key=lambda c: table[c.label].ms if c.label in table else math.inf):
        if choice.label not in table:
            continue  # it failed eager; compiled it would fail too
        compiled = Choice(choice.impl, choice.chunk_size, compiled=True)
        measured = [t for label, t in table.items() if label.startswith(COMPILED_PREFIX)]
        guess = min((t.compile_seconds for t in measured), default=compile_seconds_guess)
        floor_ms = min((t.ms for t in measured), default=0.0)
        best = table[leader.label].estimate_seconds
        if guess + planned * floor_ms / 1000 >= best:
            log.info(f"impl=auto: {compiled.label} not compiled: at {guess:.1f} s compiling and "
                     f"{floor_ms:.1f} ms per step it could not beat {leader.label}'s {best:.0f} s over "
                     f"{planned} steps")
            continue
        methods[compiled] = build(compiled)
        winner, pair = tune({leader: methods[leader], compiled: methods[compiled]}, model, loss_fn, batch,
                            **settings)
        if compiled.label not in pair:  # it failed compiled: tune warned
            continue
        ms = min(table[leader.label].ms, pair[leader.label].ms)
        table[leader.label] = Timing(ms, table[leader.label].compile_seconds,
                                     table[leader.label].compile_seconds + planned * ms / 1000)
        table[compiled.label] = pair[compiled.label]
        leader = min((Choice.from_label(label) for label in table),
                     key=lambda c: (table[c.label].estimate_seconds, table[c.label].ms))
    log.info(f"impl=auto: {leader.label} (estimated {table[leader.label].estimate_seconds:.0f} s over {planned} "
             "steps, compiling included)")
    return leader, methods[leader], table
