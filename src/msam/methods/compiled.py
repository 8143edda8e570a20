"""compile.step: a method's whole step (ascent, perturbation, descent) under torch.compile.

Where an mSAM step calls the model on micro-batches of a few samples, the fixed cost of each
call (dispatch, vmap's batching rules, allocations, and on a GPU kernel launches) dominates;
compiling the step removes most of it (docs/performance.md). The compiled step computes the
same direction as the eager one, to float32 rounding: the method's Python is the same, dynamo
traces its tensor work into graphs and runs what it cannot trace (backward, torch.autograd.grad)
eagerly in between (graph breaks).

What a compiled step costs beyond its steps is the compilation, paid on the first call in each
process (less with a warm inductor cache, `compile.cache_dir`) and again on every recompilation.
CompiledStep keeps account of both: the seconds of every call during which dynamo compiled
something, the graphs and graph breaks of the first call, and the frames compiled on any later
call (a recompilation: a guard failed, e.g. a shape or a Python attribute changed). The engine
keeps these seconds apart from the training seconds, so per-epoch times and their ratios stay
the steady-state cost, and records the counts in each epoch row and in summary.json.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch._inductor.config

from msam import timing

CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"  # inductor's on-disk cache; Triton's lives inside it by default


@dataclass
class CompileCounts:
    """What compiling a step has cost so far in this process."""

    seconds: float = 0.0  # wall time of the calls that compiled (their step included: negligible beside it)
    graphs: int = 0  # graphs dynamo made on the first call
    breaks: int = 0  # graph breaks on the first call
    recompiles: int = 0  # frames compiled on any later call

    def minus(self, earlier: "CompileCounts") -> "CompileCounts":
        return CompileCounts(self.seconds - earlier.seconds, self.graphs - earlier.graphs,
                             self.breaks - earlier.breaks, self.recompiles - earlier.recompiles)

    def plus(self, other: "CompileCounts") -> "CompileCounts":
        return CompileCounts(self.seconds + other.seconds, self.graphs + other.graphs,
                             self.breaks + other.breaks, self.recompiles + other.recompiles)


def dynamo_counts() -> tuple[int, int, int]:
    """dynamo's process-wide running counts: frames compiled, graphs made, graph breaks."""
    from torch._dynamo.utils import counters

    return (counters["frames"]["total"], counters["stats"]["unique_graphs"],
            sum(counters["graph_break"].values()))


@contextmanager
def inductor_cache(cache_dir: str | None):
    """Compile with inductor's cache in cache_dir (None: torch's default, /tmp/torchinductor_<user>).
    Set around every compiling call, so that a process running several configurations uses the
    cache its configuration names."""
    if cache_dir is None:
        yield
        return
    previous = os.environ.get(CACHE_VARIABLE)
    os.environ[CACHE_VARIABLE] = str(cache_dir)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(CACHE_VARIABLE, None)
        else:
            os.environ[CACHE_VARIABLE] = previous


class CompiledStep:
    """A method whose call runs under torch.compile; the same contract as the method (base.py)."""

    def __init__(self, method, backend: str = "inductor", mode: str | None = None, dynamic: bool | None = None,
                 cache_dir: str | None = None, fallback_random: bool = True) -> None:
        self.method = method
        self.name, self.m, self.precision = method.name, method.m, method.precision
        self.cache_dir, self.fallback_random = cache_dir, fallback_random
        self.compiled = torch.compile(method, backend=backend, mode=mode, dynamic=dynamic)
        self.counts = CompileCounts()
        self.calls = 0

    def __call__(self, model, loss_fn, batch):
        prepare = getattr(self.method, "prepare", None)
        if prepare is not None:  # lazy state built outside the graph: a guard on it would recompile the second call
            prepare(model)
        frames, graphs, breaks = dynamo_counts()
        start = time.perf_counter()  # no device sync on a step that compiles nothing
        with inductor_cache(self.cache_dir), torch._inductor.config.patch(fallback_random=self.fallback_random):
            out = self.compiled(model, loss_fn, batch)
        after = dynamo_counts()
        if after[0] > frames:  # dynamo compiled something in this call
            self.counts.seconds += timing.now(next(model.parameters()).device) - start
            if self.calls == 0:
                self.counts.graphs += after[1] - graphs
                self.counts.breaks += after[2] - breaks
            else:
                self.counts.recompiles += after[0] - frames
        self.calls += 1
        return out


def is_compiled(method) -> bool:
    return isinstance(getattr(method, "counts", None), CompileCounts)


def compile_counts(method) -> CompileCounts:
    """A copy of a method's compile counts so far (zero for an eager method)."""
    counts = getattr(method, "counts", None)
    return replace(counts) if isinstance(counts, CompileCounts) else CompileCounts()
