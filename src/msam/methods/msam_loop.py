"""SAM and mSAM, looping over the m micro-batches (mSAM with m = 1 is SAM).

For each micro-batch S_j: g_j = grad L_Sj(w), e_j = rho * g_j / (||g_j|| + eps),
d_j = grad L_Sj(w + e_j); the direction is d = mean_j d_j, accumulated in .grad. The weights
are restored by copy after each perturbed pass. BatchNorm follows DESIGN.md invariant 4 (see
batchnorm.py).

Under DistributedDataParallel every pass but the last runs inside model.no_sync(), forward
and backward (DDP decides at forward time): each process perturbs with its own micro-batches,
and only the final accumulated direction is all-reduced, by the last backward. The ascent
gradient comes from torch.autograd.grad, which leaves .grad (the accumulating direction) alone
and never reaches DDP's reducer.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from msam.methods.base import LossFn, forward_loss
from msam.methods.batch import split_batch
from msam.methods.batchnorm import RunningStatsAverager, running_stats_frozen
from msam.methods.params import WeightSnapshot, trainable_parameters, zero_grads
from msam.methods.perturbation import ascend_


def no_sync(model: torch.nn.Module):
    """DDP's no_sync() for a wrapped model, a no-op context otherwise."""
    return model.no_sync() if hasattr(model, "no_sync") else nullcontext()


def gradients(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """grad of loss w.r.t. params without touching .grad; unreached params get zeros."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


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
        self.bn_stats.begin_step()
        self.snapshot.save(params)
        zero_grads(params)
        losses, all_logits = [], []
        micro_batches = split_batch(batch, self.m)
        for j, (inputs, targets) in enumerate(micro_batches):
            with no_sync(model):
                loss, logits = forward_loss(model, loss_fn, inputs, targets)
                grads = gradients(loss, params)
            self.bn_stats.after_ascent_pass()
            losses.append(loss.detach())
            all_logits.append(logits.detach())

            ascend_(params, grads, self.rho, self.eps)
            last = j == len(micro_batches) - 1
            with nullcontext() if last else no_sync(model), running_stats_frozen(model):
                perturbed_loss, _ = forward_loss(model, loss_fn, inputs, targets)
                (perturbed_loss / self.m).backward()  # .grad accumulates mean_j d_j
            self.snapshot.restore(params)
        self.bn_stats.end_step()
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return torch.stack(losses).mean(), torch.cat(all_logits)
