"""The Hessian of the mean per-sample training loss, as a hessian-eigenthings operator.

    H v = (1/N) sum_i  d^2 loss_i / dw^2  v,   over the N samples of every process

Why our own operator and not the library's: hessian-eigenthings' HessianOperator averages
per-batch Hessians, (1/B) sum_b H(loss_b), so with mean losses and a short last batch those
samples weigh more; its DDPHessianOperator all-reduces every parameter tensor twice per batch
and takes the mean over processes, which is wrong for unequal shards. Here each process sums
sum_i loss_i / N over its own batches and the partial products are summed with one all-reduce
of one flat vector per product (msam.dist). Lanczos, power iteration and Hutchinson come from
the library and draw their vectors on the CPU from a seed, so every process runs them on the
same numbers. tests/test_sharpness.py checks the operator against torch.func.hessian.

Two ways to compute a product (sharpness.product), equal to rounding:
  double_backward       g = grad(L) with create_graph, then grad(g . v): reverse over reverse
  forward_over_reverse  jvp(grad(L), v) (torch.func): forward mode through the gradient
The measured costs are in results/bench/hvp_*.md and docs/sharpness.md. The third
order, reverse over forward (grad of jvp(L, v)), is left out on purpose: in torch 2.14 it is
wrong through LayerNorm (a 3-layer MLP with one LayerNorm: grad-of-jvp and jvp-of-grad differ
by 3.9 in float64; on the small ViT the product is 7% off a finite difference).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from hessian_eigenthings import CurvatureOperator
from torch import nn
from torch.func import grad, jvp

from msam import dist
from msam.methods.base import functional_output, model_output
from msam.models.attention import math_attention

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PRODUCTS = ("double_backward", "forward_over_reverse")


class ReIterable:
    """Yields the same batches, in the same order, every time it is iterated."""

    def __init__(self, make_iterator: Callable[[], Iterable]) -> None:
        self.make_iterator = make_iterator

    def __iter__(self):
        return iter(self.make_iterator())


class TrainingLossHessian(CurvatureOperator):
    """H = (1/N) sum_i Hessian of loss_i at the model's weights, over all trainable parameters.
    Counts the products the algorithms ask for."""

    def __init__(self, model: nn.Module, batches: ReIterable, num_samples: int, per_sample_loss: PerSampleLoss,
                 product: str = "double_backward", ctx: dist.DistContext | None = None) -> None:
        if product not in PRODUCTS:
            raise ValueError(f"unknown Hessian-vector product '{product}'; valid: {', '.join(PRODUCTS)}")
        self.model, self.batches, self.num_samples = model, batches, num_samples
        self.per_sample_loss, self.product = per_sample_loss, product
        self.ctx = ctx or dist.DistContext(device=next(model.parameters()).device)
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.count = 0

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.params)

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        return [part.view_as(p) for part, p in zip(v.split([p.numel() for p in self.params]), self.params)]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.count += 1
        vs = self.split(v)
        total = [torch.zeros_like(p) for p in self.params]
        with math_attention(self.model):  # fused attention kernels lack forward-mode rules
            for inputs, targets in self.batches:
                torch._foreach_add_(total, getattr(self, self.product)(inputs, targets, vs))
        flat = torch.cat([t.reshape(-1) for t in total])
        dist.all_reduce_sum([flat], self.ctx)  # the other processes' samples
        return flat

    def summed_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.per_sample_loss(outputs, targets).sum() / self.num_samples

    def double_backward(self, inputs, targets, vs: list[torch.Tensor]) -> list[torch.Tensor]:
        loss = self.summed_loss(model_output(self.model, inputs), targets)
        grads = torch.autograd.grad(loss, self.params, create_graph=True)
        return list(torch.autograd.grad(grads, self.params, grad_outputs=vs))

    def functional_loss(self, inputs, targets):
        """(loss as a function of the trainable parameters, their current values)."""
        fixed = {n: t.detach() for n, t in self.model.named_buffers()}
        fixed.update({n: p.detach() for n, p in self.model.named_parameters() if not p.requires_grad})

        def loss_at(params: dict) -> torch.Tensor:
            return self.summed_loss(functional_output(self.model, {**fixed, **params}, inputs), targets)

        return loss_at, {n: p.detach() for n, p in zip(self.names, self.params)}

    def forward_over_reverse(self, inputs, targets, vs: list[torch.Tensor]) -> list[torch.Tensor]:
        loss_at, primals = self.functional_loss(inputs, targets)
        _, product = jvp(grad(loss_at), (primals,), (dict(zip(self.names, vs)),))
        return [product[n] for n in self.names]
