"""The ascent step shared by SAM and mSAM: w <- w + e with e = rho * g / (||g|| + eps)."""

from __future__ import annotations

import torch

from msam.methods.params import global_norm


@torch.no_grad()
def ascend_(params: list[torch.Tensor], grads: list[torch.Tensor], rho: float, eps: float) -> None:
    """Move params in place to w + rho * g / (||g|| + eps); the norm is over all params together.

    The grads are scaled in place into e (callers discard them next) to spare a copy.
    """
    scale = rho / (global_norm(grads) + eps)  # a tensor: no host sync
    torch._foreach_mul_(grads, scale)
    torch._foreach_add_(params, grads)
