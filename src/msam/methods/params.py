"""Parameter-wide arithmetic for the methods, with torch._foreach_* over the parameter list."""

from __future__ import annotations

import torch


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm over all tensors together, as a 0-d tensor (no host sync)."""
    norms = torch._foreach_norm(tensors, 2)
    return torch.linalg.vector_norm(torch.stack(norms), 2)


def zero_grads(params: list[torch.Tensor]) -> None:
    for p in params:
        p.grad = None


class WeightSnapshot:
    """A copy of the weights in buffers allocated once, restored by copy (never by subtraction)."""

    def __init__(self) -> None:
        self.buffers: list[torch.Tensor] | None = None

    def allocate(self, params: list[torch.Tensor]) -> None:
        if self.buffers is None or len(self.buffers) != len(params):
            self.buffers = [torch.empty_like(p) for p in params]

    def save(self, params: list[torch.Tensor]) -> None:
        self.allocate(params)
        with torch.no_grad():
            torch._foreach_copy_(self.buffers, params)

    def restore(self, params: list[torch.Tensor]) -> None:
        with torch.no_grad():
            torch._foreach_copy_(params, self.buffers)
