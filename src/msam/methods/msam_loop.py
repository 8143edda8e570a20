"""SAM, mSAM and RW-SAM, looping over the m micro-batches (mSAM with m = 1 is SAM).

For each micro-batch S_j: g_j = grad L_Sj(w), e_j = rho * g_j / (||g_j|| + eps),
d_j = grad L_Sj(w + e_j); the direction is d = mean_j d_j, accumulated in .grad. The weights
are restored by copy after each perturbed pass. BatchNorm follows the rule in
batchnorm.py. The perturbation e(g) may be unnormalized or adaptive (perturbation.py). With a
reweighting (RW-SAM, reweight.py) the ascent gradient is that of sum_i p_i f_i over the
micro-batch instead of its mean loss; the descent pass is unchanged unless descent_loss is
`weighted`.

Mixed precision (msam/precision.py): each forward pass has its own autocast region and every
weight change happens outside one, so the perturbed pass sees w + e, not autocast's cached copy
of w; under fp16 the ascent gradient is unscaled before e is built from it.

Under DistributedDataParallel every pass but the last runs inside model.no_sync(), forward
and backward (DDP decides at forward time): each process perturbs with its own micro-batches,
and only the final accumulated direction is all-reduced, by the last backward. The ascent
gradient comes from torch.autograd.grad, which leaves .grad (the accumulating direction) alone
and never reaches DDP's reducer.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from msam.dist import unwrap
from msam.methods.base import LossFn, forward_per_sample
from msam.methods.batch import split_batch
from msam.methods.batchnorm import RunningStatsAverager, running_stats_frozen
from msam.methods.params import WeightSnapshot, trainable_parameters, zero_grads
from msam.methods.perturbation import Perturbation
from msam.methods.reweight import GibbsReweighting, rng_state
from msam.precision import FP32, Precision, weights_changed

DESCENT_LOSSES = ("mean", "weighted")


def no_sync(model: torch.nn.Module):
    """DDP's no_sync() for a wrapped model, a no-op context otherwise."""
    return model.no_sync() if hasattr(model, "no_sync") else nullcontext()


def gradients(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """grad of loss w.r.t. params without touching .grad; unreached params get zeros."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def descent_pass(model, loss_fn, inputs, targets, precision: Precision, m: int, last: bool,
                 weights: torch.Tensor | None = None) -> None:
    """One micro-batch's descent gradient at the perturbed weights the model holds, added to .grad
    as d_j / m (times S under fp16). The loss is the mean, or sum_i p_i f_i given RW-SAM's weights.
    The running statistics stay untouched; under DDP only the last pass all-reduces."""
    with nullcontext() if last else no_sync(model), running_stats_frozen(model):
        with precision.forward():  # a fresh autocast region: casts of the perturbed weights
            perturbed, _ = forward_per_sample(model, loss_fn, inputs, targets)
        descent = perturbed.mean() if weights is None else (weights * perturbed).sum()
        precision.scale(descent / m).backward()  # .grad accumulates mean_j d_j (times S)


class SAMLoop:
    """One step of any SAM-family method (SAM, mSAM, ASAM, unnormalized SAM, RW-SAM), one
    micro-batch after another; m = 1 is plain SAM."""

    def __init__(self, m: int, rho: float, eps: float, name: str = "msam", normalize: bool = True,
                 adaptive: bool = False, eta: float = 0.01, reweighting: GibbsReweighting | None = None,
                 descent_loss: str = "mean", precision: Precision = FP32) -> None:
        self.name = name
        self.precision = precision
        self.m = m
        self.rho = rho
        self.eps = eps
        self.perturbation = Perturbation(rho=rho, eps=eps, normalize=normalize, adaptive=adaptive, eta=eta)
        self.reweighting = reweighting
        self.descent_loss = descent_loss
        self.snapshot = WeightSnapshot()
        self.bn_stats: RunningStatsAverager | None = None

    def ascent_loss(self, model, loss_fn, inputs, targets):
        """(loss to ascend on, per-sample weights or None, clean mean loss, logits)."""
        randomness = rng_state(targets.device) if self.reweighting is not None else None
        with self.precision.forward():
            losses, logits = forward_per_sample(model, loss_fn, inputs, targets)
        if self.reweighting is None:
            return losses.mean(), None, losses.mean(), logits
        weights = self.reweighting.ascent_weights(unwrap(model), loss_fn, inputs, targets, losses, randomness,
                                                  self.precision)
        return (weights * losses).sum(), weights, losses.mean(), logits

    def prepare(self, model: torch.nn.Module) -> None:
        """The state kept between steps of one model: the BatchNorm averager and the weight copy's
        buffers. Built on the first call, or before it by compile.step (methods/compiled.py)."""
        if self.bn_stats is None or self.bn_stats.model is not model:
            self.bn_stats = RunningStatsAverager(model, self.m)
        self.snapshot.allocate(trainable_parameters(model))

    def __call__(self, model: torch.nn.Module, loss_fn: LossFn, batch):
        params = trainable_parameters(model)
        self.prepare(model)
        self.bn_stats.begin_step()
        self.snapshot.save(params)
        zero_grads(params)
        losses, all_logits = [], []
        micro_batches = split_batch(batch, self.m)
        for j, (inputs, targets) in enumerate(micro_batches):
            with no_sync(model):
                ascent_loss, weights, loss, logits = self.ascent_loss(model, loss_fn, inputs, targets)
                grads = gradients(self.precision.scale(ascent_loss), params)
            self.precision.unscale_(grads)  # fp16: e is built from g, not from S g
            self.bn_stats.after_ascent_pass()
            losses.append(loss.detach())
            all_logits.append(logits.detach())

            self.perturbation.ascend_(params, grads)
            weights_changed()
            descent_pass(model, loss_fn, inputs, targets, self.precision, self.m, last=j == len(micro_batches) - 1,
                         weights=weights if self.descent_loss == "weighted" else None)
            self.snapshot.restore(params)
            weights_changed()
        self.bn_stats.end_step()
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return torch.stack(losses).mean(), torch.cat(all_logits)
