"""Vanilla training: d = grad L_S(w)."""

from __future__ import annotations

import torch

from msam.methods.base import LossFn, forward_loss
from msam.methods.params import trainable_parameters, zero_grads


class Vanilla:
    name = "vanilla"
    m = 1

    def __call__(self, model: torch.nn.Module, loss_fn: LossFn, batch):
        inputs, targets = batch
        zero_grads(trainable_parameters(model))
        loss, logits = forward_loss(model, loss_fn, inputs, targets)
        loss.backward()
        return loss.detach(), logits.detach()
