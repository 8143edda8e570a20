"""The non-finite guard: a NaN or inf in the loss or the update direction stops the run (or,
with nonfinite=skip, skips that step).

stop (the default) keeps the step free of host synchronisation: each step records on the device
the first step whose loss or direction was non-finite, and the flag is read every
nonfinite_check_every steps and before anything is saved (periodic checkpoint, epoch end), so
a non-finite state never reaches a checkpoint and the message names the exact step. skip has
to decide before the optimizer step, so it reads the flag at every step (one small sync), and
restores the floating buffers (BatchNorm's running statistics), which the step's forward passes
already updated. Under fp16 the GradScaler owns the direction (it skips steps whose gradients
overflow and lowers its scale), so there the guard watches the loss only: a non-finite loss is
a broken forward pass, which no loss scale repairs.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist

from msam import dist
from msam.dist import DistContext
from msam.errors import RunError

MODES = ("stop", "skip", "off")
KINDS = {1: "loss", 2: "update direction"}
NEVER = 2**62


class NonFiniteGuard:
    def __init__(self, mode: str, model: torch.nn.Module, ctx: DistContext, device: torch.device,
                 watch_direction: bool = True) -> None:
        self.mode, self.ctx, self.watch_direction = mode, ctx, watch_direction
        self.first_bad = torch.full((), NEVER, dtype=torch.long, device=device)  # global step, 1-based
        self.kind = torch.zeros((), dtype=torch.long, device=device)
        self.buffers = [b for b in model.buffers() if b.is_floating_point()] if mode == "skip" else []
        self.saved = [torch.empty_like(b) for b in self.buffers]

    def flags(self, loss: torch.Tensor, params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        grads = [p.grad for p in params if p.grad is not None] if self.watch_direction else []
        direction = torch.stack(torch._foreach_norm(grads)) if grads else torch.zeros(1, device=loss.device)
        return (~torch.isfinite(loss.detach().float())).any(), (~torch.isfinite(direction)).any()

    def record(self, loss: torch.Tensor, params: list[torch.Tensor], step: int) -> None:
        """stop mode: remember the first non-finite step on the device (no host sync)."""
        loss_bad, direction_bad = self.flags(loss, params)
        first = (self.first_bad == NEVER) & (loss_bad | direction_bad)
        self.first_bad = torch.where(first, step, self.first_bad)
        self.kind = torch.where(first, torch.where(loss_bad, 1, 2), self.kind)

    def raise_if_recorded(self, epoch: int, epoch_start_step: int) -> None:
        """One host sync (and, under DDP, one all-reduce): RunError if a step was non-finite."""
        values = torch.stack([self.first_bad, -self.kind])
        dist.all_reduce_([values], self.ctx, torch_dist.ReduceOp.MIN)
        step, kind = values.tolist()
        if step != NEVER:
            raise self.error(KINDS[-kind], step, epoch, step - epoch_start_step)

    def non_finite_now(self, loss: torch.Tensor, params: list[torch.Tensor]) -> str | None:
        """skip mode: 'loss' or 'update direction' if this step is non-finite (one host sync)."""
        flags = torch.stack(self.flags(loss, params)).float()
        dist.all_reduce_([flags], self.ctx, torch_dist.ReduceOp.MAX)
        loss_bad, direction_bad = flags.tolist()
        return "loss" if loss_bad else "update direction" if direction_bad else None

    def before_step(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)

    def undo(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.saved)

    @staticmethod
    def error(kind: str, step: int, epoch: int, batch: int) -> RunError:
        return RunError(f"non-finite {kind} at step {step} (epoch {epoch + 1}, batch {batch}): the run stops, its "
                        "last good checkpoint kept (nonfinite=skip skips such steps instead)")
