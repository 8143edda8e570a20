"""The ascent step e(g) shared by SAM, mSAM and RW-SAM, and its variants.

    SAM (Foret et al. 2021)          e = rho * g / (||g|| + eps)
    unnormalized SAM (USAM)          e = rho * g                          normalize=false
    ASAM (Kwon et al. 2021)          e = rho * T^2 g / (||T g|| + eps)    adaptive=true
    unnormalized ASAM                e = rho * T^2 g                      both

with T = |w| + eta elementwise, over every trainable parameter (the paper's definition; the
ASAM authors' code leaves biases out, i.e. T = 1 there). The norm is over all parameters
together. rho = 0 gives e = 0: vanilla training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from msam.methods.params import global_norm


@dataclass(frozen=True)
class Perturbation:
    rho: float
    eps: float = 1e-12
    normalize: bool = True
    adaptive: bool = False
    eta: float = 0.01

    @torch.no_grad()
    def ascend_(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """Move params in place to w + e(g). The grads are overwritten with e (callers discard
        them next), which spares a copy."""
        if self.adaptive:
            scales = torch._foreach_add(torch._foreach_abs(params), self.eta)  # T
            torch._foreach_mul_(grads, scales)  # T g
        if self.normalize:
            torch._foreach_mul_(grads, self.rho / (global_norm(grads) + self.eps))  # a tensor: no host sync
        else:
            torch._foreach_mul_(grads, self.rho)
        if self.adaptive:
            torch._foreach_mul_(grads, scales)  # T^2 g, scaled
        torch._foreach_add_(params, grads)

    @torch.no_grad()
    def stacked(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], m: int) -> dict:
        """The m perturbed weight sets w + e(g_j), stacked on a new leading dimension, from the
        m stacked micro-batch gradients g_j (the vmap implementation)."""
        scales = {n: params[n].abs() + self.eta for n in params} if self.adaptive else None
        scaled = {n: grads[n] * scales[n] for n in params} if self.adaptive else grads  # T g
        factor = torch.full((m,), float(self.rho), dtype=next(iter(params.values())).dtype,
                            device=next(iter(params.values())).device)
        if self.normalize:
            flat = torch.cat([scaled[n].reshape(m, -1) for n in params], dim=1)
            factor = factor / (torch.linalg.vector_norm(flat, dim=1) + self.eps)  # one per micro-batch
        perturbed = {}
        for n, w in params.items():
            e = factor.view(m, *[1] * w.dim()) * scaled[n]
            perturbed[n] = w.unsqueeze(0) + (e * scales[n] if self.adaptive else e)
        return perturbed
