"""mSAM with vmap's ascent and the loop's descent (method.impl=vmap_ascent).

The two halves of an mSAM step ask different things of a device. The ascent evaluates the m
micro-batch gradients g_j at the same weights w: vmap runs them as one call whose kernels see the
whole batch (weights shared, as in a full-batch pass). The descent evaluates d_j at m different
weight sets w + e_j: vmap has to run those as batched matrix products and grouped convolutions,
the loop as m ordinary passes over B/m samples. On a 2-core CPU, for the small ViT at B = 128,
m = 32, vmap's ascent measured 1.16x one full-batch pass against the loop's 1.38x; for ResNet-18
the loop's ascent was the cheaper one (docs/performance.md). Which half is cheaper under vmap
moves with the model, the day and the device, so this implementation (vmap's ascent, the loop's
descent) is one more candidate that impl=auto measures.

The direction, the BatchNorm rule (batchnorm.py) and the mixed-precision rules are those of the
two halves: the ascent is SAMVmap.ascent (each micro-batch's running-statistics update from the
same start, their mean written once), the descent is the loop's descent_pass with the weights
moved to w + e(g_j) by the same Perturbation.ascend_ and restored by copy. Under DDP the ascent's
functional calls never reach the reducer; the descent passes run inside no_sync() but the last,
whose backward all-reduces the accumulated direction, as in the loop.
"""

from __future__ import annotations

import torch

from msam import dist
from msam.methods.base import LossFn
from msam.methods.msam_loop import descent_pass
from msam.methods.msam_vmap import SAMVmap
from msam.methods.params import WeightSnapshot, trainable_parameters, zero_grads
from msam.models.attention import fused_attention_off
from msam.precision import weights_changed


class SAMVmapAscent(SAMVmap):
    """SAMVmap's ascent, then the m perturbed passes one micro-batch after another."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.snapshot = WeightSnapshot()

    def prepare(self, model: torch.nn.Module) -> None:
        """The weight copy's buffers, kept between steps. Built on the first call, or before it by
        compile.step (methods/compiled.py), where a guard on them would recompile the second call."""
        self.snapshot.allocate(trainable_parameters(dist.unwrap(model)))

    def __call__(self, model: torch.nn.Module, loss_fn: LossFn, batch):
        inputs, targets = batch
        if isinstance(inputs, dict):
            raise NotImplementedError("method.impl=vmap_ascent takes tensor inputs; use impl=loop for dict batches")
        network = dist.unwrap(model)
        params = trainable_parameters(network)
        self.prepare(network)
        self.snapshot.save(params)
        zero_grads(params)
        with fused_attention_off(network):  # for vmap only: the descent passes keep fused attention
            ascent = self.ascent(network, loss_fn, inputs, targets)
        grads = list(ascent.grads.values())  # in the order of params (named_parameters, trainable)
        for j in range(self.m):
            self.perturbation.ascend_(params, [g[j] for g in grads])  # overwrites g_j with e_j: not needed again
            weights_changed()
            descent_pass(model, loss_fn, ascent.xs[j], ascent.ys[j], self.precision, self.m, last=j == self.m - 1)
            self.snapshot.restore(params)
            weights_changed()
        ascent.write_running_stats()
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return ascent.losses.mean().detach(), ascent.logits.reshape(-1, *ascent.logits.shape[2:]).detach()
