"""SAM and mSAM, looping over the m micro-batches (mSAM with m = 1 is SAM).

For each micro-batch S_j: g_j = grad L_Sj(w), e_j = rho * g_j / (||g_j|| + eps),
d_j = grad L_Sj(w + e_j); the direction is d = mean_j d_j. The weights are restored by
copy after each perturbed pass. BatchNorm follows DESIGN.md invariant 4 (see batchnorm.py).
"""

from __future__ import annotations

import torch

from msam.methods.base import LossFn, forward_loss
from msam.methods.batch import split_batch
from msam.methods.batchnorm import RunningStatsAverager, running_stats_frozen
from msam.methods.params import WeightSnapshot, grads_of, trainable_parameters, zero_grads
from msam.methods.perturbation import ascend_


class MicroBatchSAMLoop:
    def __init__(self, m: int, rho: float, eps: float, name: str = "msam") -> None:
        self.name = name
        self.m = m
        self.rho = rho
        self.eps = eps
        self.snapshot = WeightSnapshot()
        self.bn_stats: RunningStatsAverager | None = None

    def __call__(self, model: torch.nn.Module, loss_fn: LossFn, batch):
        params = trainable_parameters(model)
        if self.bn_stats is None or self.bn_stats.model is not model:
            self.bn_stats = RunningStatsAverager(model, self.m)
        bn_stats = self.bn_stats
        bn_stats.begin_step()
        self.snapshot.save(params)
        direction = None
        losses, all_logits = [], []
        for inputs, targets in split_batch(batch, self.m):
            zero_grads(params)
            loss, logits = forward_loss(model, loss_fn, inputs, targets)
            loss.backward()
            bn_stats.after_ascent_pass()
            losses.append(loss.detach())
            all_logits.append(logits.detach())

            ascend_(params, grads_of(params), self.rho, self.eps)
            zero_grads(params)
            with running_stats_frozen(model):
                perturbed_loss, _ = forward_loss(model, loss_fn, inputs, targets)
            perturbed_loss.backward()
            self.snapshot.restore(params)

            grads = grads_of(params)
            if direction is None:
                direction = grads  # zero_grads detaches them from the params: no copy needed
            else:
                torch._foreach_add_(direction, grads)
        bn_stats.end_step()
        if self.m > 1:
            torch._foreach_mul_(direction, 1.0 / self.m)
        for p, d in zip(params, direction):
            p.grad = d
        return torch.stack(losses).mean(), torch.cat(all_logits)
