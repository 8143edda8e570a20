"""Vanilla training: d = grad L_S(w)."""

from __future__ import annotations

import torch

from msam.methods.base import LossFn, forward_loss
from msam.methods.params import trainable_parameters, zero_grads
from msam.precision import FP32, Precision


class Vanilla:
    name = "vanilla"
    m = 1

    def __init__(self, precision: Precision = FP32) -> None:
        self.precision = precision

    def __call__(self, model: torch.nn.Module, loss_fn: LossFn, batch):
        inputs, targets = batch
        zero_grads(trainable_parameters(model))
        with self.precision.forward():
            loss, logits = forward_loss(model, loss_fn, inputs, targets)
        self.precision.scale(loss).backward()  # fp16: .grad holds S d until the engine unscales it
        return loss.detach(), logits.detach()
