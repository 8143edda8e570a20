"""The method contract: fill .grad with the update direction, return (clean loss, logits).

Every method holds a `precision` (msam.precision.Precision): forward passes run in its autocast
region, backward passes on its scaled loss. Under fp16 .grad holds S d (S: the loss scale) and
the caller unscales it, exactly as for a plain GradScaler loop; the returned loss is unscaled.

A loss function maps (logits, targets) to per-sample losses; methods take the mean.
Methods never step the optimizer and never touch weight decay, clipping or the learning
rate: those belong to the base optimizer and the engine, exactly as for vanilla training.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch.func import functional_call

from msam.methods.batch import Inputs

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Method(Protocol):
    name: str
    m: int

    def __call__(
        self, model: torch.nn.Module, loss_fn: LossFn, batch: tuple[Inputs, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill each trainable parameter's .grad; return the detached clean mean loss and logits."""
        ...


def logits_of(outputs) -> torch.Tensor:
    """The logits of a model's output: transformers' output objects carry them in .logits."""
    return outputs.logits if hasattr(outputs, "logits") else outputs


def model_output(model: torch.nn.Module, inputs: Inputs) -> torch.Tensor:
    """The logits of one pass; dict inputs (token batches) are passed as keyword arguments."""
    return logits_of(model(**inputs) if isinstance(inputs, dict) else model(inputs))


def functional_output(model: torch.nn.Module, state: dict, inputs: Inputs) -> torch.Tensor:
    """model_output with the given parameters and buffers (torch.func.functional_call)."""
    if isinstance(inputs, dict):
        return logits_of(functional_call(model, state, (), inputs))
    return logits_of(functional_call(model, state, (inputs,)))


def forward_per_sample(model: torch.nn.Module, loss_fn: LossFn, inputs: Inputs, targets: torch.Tensor):
    """Per-sample losses and logits of one pass."""
    logits = model_output(model, inputs)
    return loss_fn(logits, targets), logits


def forward_loss(model: torch.nn.Module, loss_fn: LossFn, inputs: Inputs, targets: torch.Tensor):
    """Mean loss and logits of one pass."""
    losses, logits = forward_per_sample(model, loss_fn, inputs, targets)
    return losses.mean(), logits
