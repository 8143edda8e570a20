"""BatchNorm running statistics under SAM-style methods (docs/methods.md, "BatchNorm").

Every pass normalises with its own micro-batch's statistics. The running statistics get
exactly one momentum update per optimizer step, computed from the mean of the ascent
(clean-weight) passes' micro-batch statistics; the perturbed passes never touch them.

Because a momentum update is linear in the batch statistic, "one update with the mean of
the m statistics" equals "the mean of m updates that each start from the same old value".
So each ascent pass updates the buffers as PyTorch normally does, we add the result to an
accumulator and reset the buffers to their value at the start of the step; at the end the
buffers become the accumulator's mean. For m = 1 this is PyTorch's usual update, untouched.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from msam.batchnorm_layers import tracking_batchnorms


@contextmanager
def running_stats_frozen(model: torch.nn.Module) -> Iterator[None]:
    """Batch statistics for normalisation, but no update of the running statistics.

    With track_running_stats off in training mode, PyTorch's BatchNorm passes no running
    buffers to F.batch_norm and does not count num_batches_tracked.
    """
    modules = tracking_batchnorms(model)
    for module in modules:
        module.track_running_stats = False
    try:
        yield
    finally:
        for module in modules:
            module.track_running_stats = True


class RunningStatsAverager:
    """Turns m per-micro-batch running-stat updates into one update from their mean."""

    def __init__(self, model: torch.nn.Module, m: int) -> None:
        self.model = model
        self.m = m
        self.float_buffers: list[torch.Tensor] = []
        self.count_buffers: list[torch.Tensor] = []
        for module in tracking_batchnorms(model):
            self.float_buffers += [module.running_mean, module.running_var]
            if module.num_batches_tracked is not None:
                self.count_buffers.append(module.num_batches_tracked)
        self.active = m > 1 and bool(self.float_buffers)
        if self.active:
            self.start = [torch.empty_like(b) for b in self.float_buffers]
            self.total = [torch.empty_like(b) for b in self.float_buffers]
            self.start_counts = [torch.empty_like(b) for b in self.count_buffers]

    @torch.no_grad()
    def begin_step(self) -> None:
        if not self.active:
            return
        torch._foreach_copy_(self.start, self.float_buffers)
        torch._foreach_zero_(self.total)
        for saved, count in zip(self.start_counts, self.count_buffers):
            saved.copy_(count)

    @torch.no_grad()
    def after_ascent_pass(self) -> None:
        """Collect the update this pass made and reset the buffers to the step's start."""
        if not self.active:
            return
        torch._foreach_add_(self.total, self.float_buffers)
        torch._foreach_copy_(self.float_buffers, self.start)
        for saved, count in zip(self.start_counts, self.count_buffers):
            count.copy_(saved)

    @torch.no_grad()
    def end_step(self) -> None:
        if not self.active:
            return
        torch._foreach_mul_(self.total, 1.0 / self.m)
        torch._foreach_copy_(self.float_buffers, self.total)
        for count in self.count_buffers:
            count.add_(1)
