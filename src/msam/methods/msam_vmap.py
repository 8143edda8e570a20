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
changes them. chunk_size bounds the activations of the vmapped passes (vmap runs m / chunk_size
chunks one after another); the stacked gradients g_j, weight sets w + e_j and directions d_j
(each m times the weights' size, about 3m of them alive during the descent) are built whole.

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
        ascent = self.ascent(network, loss_fn, inputs, targets)
        perturbed = self.perturbation.stacked(ascent.params, ascent.grads, self.m)
        directions, _ = vmap(ascent.step, in_dims=(0, 0, 0, 0), randomness="different",
                             chunk_size=self.chunk_size)(perturbed, ascent.fresh_stats(), ascent.xs, ascent.ys)
        with torch.no_grad():
            for n, p in network.named_parameters():
                if p.requires_grad:
                    p.grad = directions[n].mean(0)
            if isinstance(model, torch.nn.parallel.DistributedDataParallel):
                dist.all_reduce_mean_([network.get_parameter(n).grad for n in ascent.params])
        ascent.write_running_stats()
        return ascent.losses.mean().detach(), ascent.logits.reshape(-1, *ascent.logits.shape[2:]).detach()

    def ascent(self, network, loss_fn, inputs, targets) -> "VmappedAscent":
        """The m micro-batch gradients g_j at the shared weights in one vmapped call (unscaled under
        fp16), each micro-batch's BatchNorm update made from the same start."""
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

        ascent = VmappedAscent(params, buffers, stat_names, xs, ys, grad_and_value(loss_at, has_aux=True))
        ascent.stats = ascent.fresh_stats()
        ascent.grads, (_, (ascent.losses, ascent.logits)) = vmap(
            ascent.step, in_dims=(None, 0, 0, 0), randomness="different",
            chunk_size=self.chunk_size)(params, ascent.stats, xs, ys)
        precision.unscale_(list(ascent.grads.values()))  # fp16: e_j is built from g_j, not from S g_j
        return ascent


class VmappedAscent:
    """What the vmapped ascent leaves for the descent: the weights, the stacked gradients g_j, the
    micro-batches, the per-micro-batch losses and logits, and the m BatchNorm updates."""

    def __init__(self, params, buffers, stat_names, xs, ys, step) -> None:
        self.params, self.buffers, self.stat_names, self.xs, self.ys, self.step = (
            params, buffers, stat_names, xs, ys, step)
        self.stats: dict = {}
        self.grads: dict = {}
        self.losses = self.logits = None

    def fresh_stats(self) -> dict:
        """m stacked copies of the running statistics (the descent's are thrown away)."""
        m = self.xs.shape[0]
        return {n: self.buffers[n].unsqueeze(0).repeat(m, *[1] * self.buffers[n].dim()) for n in self.stat_names}

    @torch.no_grad()
    def write_running_stats(self) -> None:
        """The mean of the m ascent updates; num_batches_tracked counts one step."""
        for n in self.stat_names:
            stat = self.stats[n]
            self.buffers[n].copy_(stat[0] if n.endswith("num_batches_tracked") else stat.mean(0))
