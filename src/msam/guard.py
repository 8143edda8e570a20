"""The non-finite guard: a NaN or inf in the loss or the update direction stops the run (or,
with nonfinite=skip, skips that step) before the optimizer applies it.

One device-to-host sync per step (a flag of two values, agreed across processes). With
nonfinite=skip the floating buffers (BatchNorm's running statistics) are restored too, since
the step's forward passes already updated them. Under fp16 the GradScaler does this job (it
skips steps whose gradients overflow), so the guard is off there.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist

from msam.dist import DistContext

MODES = ("stop", "skip", "off")


class NonFiniteGuard:
    def __init__(self, mode: str, model: torch.nn.Module, ctx: DistContext) -> None:
        self.mode, self.ctx = mode, ctx
        self.buffers = [b for b in model.buffers() if b.is_floating_point()] if mode == "skip" else []
        self.saved = [torch.empty_like(b) for b in self.buffers]

    def before_step(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)

    def non_finite(self, loss: torch.Tensor, params: list[torch.Tensor]) -> str | None:
        """'loss' or 'update direction' when one of them holds a NaN or an inf, else None."""
        grads = [p.grad for p in params if p.grad is not None]
        direction = torch.stack(torch._foreach_norm(grads)) if grads else torch.zeros(1, device=loss.device)
        flags = torch.stack([(~torch.isfinite(loss.detach().float())).any(),
                             (~torch.isfinite(direction)).any()]).float()
        if self.ctx.enabled:
            torch_dist.all_reduce(flags, op=torch_dist.ReduceOp.MAX)
        loss_bad, direction_bad = flags.tolist()
        return "loss" if loss_bad else "update direction" if direction_bad else None

    def undo(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.saved)
