"""SAM and mSAM vectorised over the micro-batches with torch.func (method.impl=vmap).

The same direction as the loop (msam_loop.py) and the same BatchNorm semantics, computed with
two vmapped passes instead of 2m small ones: the ascent pass evaluates the m micro-batch
gradients g_j at the shared weights w, the descent pass the m gradients d_j at the m perturbed
weight sets w + e_j (stacked along a new leading dimension). vmap turns the m small passes into
batched matrix products and grouped convolutions, which keeps a device busy when micro-batches
are small.

BatchNorm: functional_call gets the running statistics as m stacked copies (in_dims=0), so each
micro-batch's ascent pass makes its own momentum update from the same start; their mean is the
single update of the BatchNorm rule (batchnorm.py). The descent pass gets throw-away copies, so it never
changes them. chunk_size bounds the memory of the stacked weights (vmap runs m / chunk_size
chunks one after another).

Under DistributedDataParallel the functional calls go to the wrapped module, so DDP's reducer
is not involved at all: each process computes its own micro-batch directions and the final
averaged direction is all-reduced here, once per step.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, grad_and_value, vmap

from msam import dist
from msam.methods.base import LossFn
from msam.batchnorm_layers import tracking_batchnorms
from msam.methods.perturbation import Perturbation
from msam.models.attention import fused_attention_off
from msam.precision import FP32, Precision


def running_stat_names(model: torch.nn.Module) -> list[str]:
    prefixes = {module: prefix for prefix, module in model.named_modules()}
    return [f"{prefixes[module]}.{b}" if prefixes[module] else b for module in tracking_batchnorms(model)
            for b in ("running_mean", "running_var", "num_batches_tracked")]


def to_micro_batches(tensor: torch.Tensor, m: int) -> torch.Tensor:
    return tensor.reshape(m, tensor.shape[0] // m, *tensor.shape[1:])


class SAMVmap:
    """The SAM-family step of SAMLoop (without RW-SAM's reweighting), vectorised over the micro-batches."""

    def __init__(self, m: int, rho: float, eps: float, chunk_size: int | None = None, name: str = "msam",
                 normalize: bool = True, adaptive: bool = False, eta: float = 0.01,
                 precision: Precision = FP32) -> None:
        self.name, self.m, self.rho, self.eps, self.chunk_size = name, m, rho, eps, chunk_size
        self.precision = precision
        self.perturbation = Perturbation(rho=rho, eps=eps, normalize=normalize, adaptive=adaptive, eta=eta)

    def __call__(self, model: torch.nn.Module, loss_fn: LossFn, batch):
        inputs, targets = batch
        if isinstance(inputs, dict):
            raise NotImplementedError("method.impl=vmap takes tensor inputs; use impl=loop for dict batches")
        network = dist.unwrap(model)
        with fused_attention_off(network):
            return self._step(model, network, loss_fn, inputs, targets)

    def _step(self, model, network, loss_fn, inputs, targets):
        names = [n for n, p in network.named_parameters() if p.requires_grad]
        params = {n: p.detach() for n, p in network.named_parameters() if p.requires_grad}
        frozen = {n: p.detach() for n, p in network.named_parameters() if not p.requires_grad}
        stat_names = running_stat_names(network)
        buffers = dict(network.named_buffers())
        shared = {**frozen, **{n: b for n, b in buffers.items() if n not in stat_names}}
        m = self.m
        xs, ys = to_micro_batches(inputs, m), to_micro_batches(targets, m)

        precision = self.precision

        def loss_at(trainable, stats, x, y):  # (the loss to differentiate: scaled under fp16, (loss, logits))
            with precision.forward():  # the weights are explicit inputs here: no autocast cache to go stale
                logits = functional_call(network, ({**trainable, **stats, **shared},), (x,))
                loss = loss_fn(logits, y).mean()
            return precision.scale(loss), (loss, logits)

        def stacked_stats():
            return {n: buffers[n].unsqueeze(0).repeat(m, *[1] * buffers[n].dim()) for n in stat_names}

        step = grad_and_value(loss_at, has_aux=True)
        ascent_stats = stacked_stats()
        grads, (_, (losses, logits)) = vmap(step, in_dims=(None, 0, 0, 0), randomness="different",
                                       chunk_size=self.chunk_size)(params, ascent_stats, xs, ys)
        precision.unscale_(list(grads.values()))  # fp16: e_j is built from g_j, not from S g_j
        perturbed = self.perturbation.stacked(params, grads, m)
        directions, _ = vmap(step, in_dims=(0, 0, 0, 0), randomness="different",
                             chunk_size=self.chunk_size)(perturbed, stacked_stats(), xs, ys)
        with torch.no_grad():
            for n, p in network.named_parameters():
                if p.requires_grad:
                    p.grad = directions[n].mean(0)
            if isinstance(model, torch.nn.parallel.DistributedDataParallel):
                dist.all_reduce_mean_([network.get_parameter(n).grad for n in names])
            for n in stat_names:  # the mean of the m ascent updates; num_batches_tracked counts one step
                stat = ascent_stats[n]
                buffers[n].copy_(stat[0] if n.endswith("num_batches_tracked") else stat.mean(0))
        return losses.mean().detach(), logits.reshape(-1, *logits.shape[2:]).detach()
