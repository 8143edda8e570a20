"""The Hessian of the mean per-sample training loss, as a hessian-eigenthings operator.

Why a wrapper: hessian-eigenthings 1.0.0a5's full-data HessianOperator averages the Hessians
of its batches, (1/B) sum_b H(loss_fn(batch_b)), so with a mean loss per batch and a short
last batch the samples of that batch weigh more than the others. Our loss_fn returns each
batch's *sum* of per-sample losses times (B / N): the average over batches is then exactly
(1/N) sum_i H_i whatever the batch sizes. tests/test_sharpness.py checks it against
torch.func.hessian with an unequal last batch.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from hessian_eigenthings import CurvatureOperator, HessianOperator
from torch import nn

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class CountingOperator(CurvatureOperator):
    """Counts the Hessian-vector products an algorithm asks for."""

    def __init__(self, inner: CurvatureOperator) -> None:
        self.inner, self.count = inner, 0

    @property
    def size(self) -> int:
        return self.inner.size

    @property
    def device(self) -> torch.device:
        return self.inner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.count += 1
        return self.inner.matvec(v)


class ReIterable:
    """Yields the same batches, in the same order, every time it is iterated."""

    def __init__(self, make_iterator: Callable[[], Iterable]) -> None:
        self.make_iterator = make_iterator

    def __iter__(self):
        return iter(self.make_iterator())


def training_loss_hessian(model: nn.Module, batches: ReIterable, num_batches: int, num_samples: int,
                          per_sample_loss: PerSampleLoss) -> CountingOperator:
    """H = (1/N) sum_i Hessian of loss_i at the model's weights, over all trainable parameters."""
    weight = num_batches / num_samples

    def loss_fn(model: nn.Module, batch) -> torch.Tensor:
        inputs, targets = batch
        return per_sample_loss(model(inputs), targets).sum() * weight

    return CountingOperator(HessianOperator(model, batches, loss_fn, full_dataset=True))
