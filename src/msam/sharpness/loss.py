"""The training loss at displaced weights, for sharpness on batches and the loss landscape.

    L(w + delta) = (1/N) sum_i loss_i(w + delta),  over the N samples of every process

Same loss, data and model mode as the Hessian operator (msam.sharpness.operator): eval mode
(BatchNorm's running statistics, no dropout), no autocast, no weight decay. The model's weights
are never written: every point is evaluated with torch.func.functional_call on a state dict of
its own. A process sums its own batches; the processes' partial sums travel in one all-reduce per
call (per gradient, or per set of landscape points).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from msam import dist
from msam.methods.base import functional_output
from msam.sharpness.operator import PerSampleLoss, ReIterable


class TrainingLoss:
    """The mean loss over `num_samples` samples as a function of the trainable parameters, flat.
    Counts its work in passes over those samples: `forward_backward` and `forward`."""

    def __init__(self, model: nn.Module, batches: ReIterable, num_samples: int, per_sample_loss: PerSampleLoss,
                 ctx: dist.DistContext | None = None) -> None:
        self.model, self.batches, self.num_samples = model, batches, num_samples
        self.per_sample_loss = per_sample_loss
        self.ctx = ctx or dist.DistContext(device=next(model.parameters()).device)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.weights = [p.detach() for _, p in named]
        self.fixed = {n: t.detach() for n, t in model.named_buffers()}
        self.fixed.update({n: p.detach() for n, p in model.named_parameters() if not p.requires_grad})
        self.forward_backward = 0
        self.forward = 0

    @property
    def flat_weights(self) -> torch.Tensor:
        return torch.cat([w.reshape(-1) for w in self.weights])

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [part.view_as(w) for part, w in zip(flat.split([w.numel() for w in self.weights]), self.weights)]

    def displaced(self, delta: torch.Tensor | None) -> list[torch.Tensor]:
        """The parameters w + delta (delta flat; None = 0)."""
        return self.weights if delta is None else [w + d for w, d in zip(self.weights, self.split(delta))]

    def state(self, delta: torch.Tensor | None) -> dict:
        return {**self.fixed, **dict(zip(self.names, self.displaced(delta)))}

    def summed_loss(self, state: dict, inputs, targets) -> torch.Tensor:
        return self.per_sample_loss(functional_output(self.model, state, inputs), targets).sum() / self.num_samples

    def value_and_grad(self, delta: torch.Tensor | None) -> tuple[float, torch.Tensor]:
        """L(w + delta) and its gradient (flat), summed over the processes in one all-reduce."""
        leaves = [p.detach().clone().requires_grad_(True) for p in self.displaced(delta)]
        state = {**self.fixed, **dict(zip(self.names, leaves))}
        total = [torch.zeros_like(w) for w in self.weights]
        # the loss summed in float64, as values() does: a rise is a difference of two such sums
        loss = torch.zeros(1, dtype=torch.float64, device=self.weights[0].device)
        for inputs, targets in self.batches:
            part = self.summed_loss(state, inputs, targets)
            torch._foreach_add_(total, torch.autograd.grad(part, leaves))
            loss += part.detach().to(torch.float64)
        flat = torch.cat([t.reshape(-1) for t in total])
        dist.all_reduce_sum([flat, loss], self.ctx)
        self.forward_backward += 1
        return float(loss), flat

    @torch.no_grad()
    def values(self, points: list[Callable[[], dict]]) -> list[float]:
        """L at each point (a callable that builds its full state dict), reading the data once; one
        all-reduce for all. A point's state is built when it is evaluated and dropped after, so a
        121-point plane holds one displaced copy of the weights at a time, not 121."""
        sums = torch.zeros(len(points), dtype=torch.float64, device=self.weights[0].device)
        for inputs, targets in self.batches:
            for i, point in enumerate(points):
                sums[i] += self.summed_loss(point(), inputs, targets).to(torch.float64)
        dist.all_reduce_sum([sums], self.ctx)
        self.forward += len(points)
        return sums.tolist()

    def value(self, delta: torch.Tensor | None) -> float:
        return self.values([lambda: self.state(delta)])[0]
