"""What every measure shares: the timing of a forward+backward and of one product, and the
refusal of an eigenvalue that did not converge (msam.sharpness.measures runs the measures).

The operator is deterministic: the model is in eval mode (BatchNorm uses its running
statistics, dropout is off), the batches come in a fixed order without augmentation, and no
autocast is active. The model's mode is restored afterwards; its weights are never written.
Weight decay is not part of the loss.
"""

from __future__ import annotations

import logging
import statistics

import torch
from torch import nn

from msam import timing
from msam.errors import ConfigError
from msam.methods.base import model_output
from msam.sharpness.operator import PerSampleLoss, ReIterable, TrainingLossHessian

log = logging.getLogger("msam")


class NotConverged(ConfigError):
    """The eigenvalue did not converge and the user did not ask to keep such a result."""


def seconds_per_gradient(model: nn.Module, batches: ReIterable, per_sample_loss: PerSampleLoss,
                         passes: int) -> float:
    """One forward+backward over the same batches, the unit a Hessian-vector product costs: the
    median of `passes` timed passes, so that one pass slowed by other work on the machine does not
    make the products look cheap (a single pass gave 1.3x to 5.9x for the same model)."""
    device = next(model.parameters()).device
    times = []
    for _ in range(passes):
        start = timing.now(device)
        for inputs, targets in batches:
            per_sample_loss(model_output(model, inputs), targets).sum().backward()
        times.append(timing.now(device) - start)
    model.zero_grad(set_to_none=True)
    return statistics.median(times)


def timed_product(op: TrainingLossHessian, seed: int) -> float:
    """Seconds of one product (not counted), to announce the cost before the algorithms run."""
    vector = torch.randn(op.size, generator=torch.Generator().manual_seed(seed), dtype=op.dtype).to(op.device)
    start = timing.now(op.device)
    op.matvec(vector)
    op.count -= 1
    return timing.now(op.device) - start
