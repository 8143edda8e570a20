"""mSAM (and SAM, ASAM, USAM, RW-SAM) as one call in your own training loop.

    import msam
    rule = msam.MSAM(model, m=8, rho=0.05)              # m=1: SAM; adaptive=True: ASAM
    for inputs, targets in loader:
        loss, logits = rule(per_sample_loss, inputs, targets)   # fills every .grad
        optimizer.step()                                 # your optimizer: weight decay, momentum, lr
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

`per_sample_loss(logits, targets)` must return one loss per sample (e.g. cross_entropy with
reduction="none"): the methods average it themselves, and RW-SAM weighs the samples. The call
fills .grad with the update direction d (the same code msam-train runs) and returns the clean
mean loss and the logits, detached; clipping, weight decay and the step stay yours.

- Mixed precision: pass `autocast_dtype=torch.bfloat16` (each forward pass gets its own autocast
  region; do not wrap the call in your own), and for fp16 also `grad_scaler=` your GradScaler:
  .grad then holds the scaled direction, so call scaler.unscale_(optimizer) before clipping and
  scaler.step(optimizer); scaler.update() as usual.
- DistributedDataParallel: pass the wrapped model. Each process splits its own batch into m
  micro-batches and perturbs with them; only the final direction is all-reduced, and BatchNorm
  running statistics are averaged across processes after the call. K processes with m each
  equal one process with m * K on the whole batch.
- impl: "loop", "vmap" (torch.func: all micro-batches at once), "vmap_ascent" (vmap's ascent,
  the loop's descent; it holds the m ascent gradients, m times the weights, whatever chunk_size)
  or "auto" (the candidates timed on your first batch, state and random streams restored, the
  fastest kept: see `.implementation`).
- The DDP model's default process group is the one used (subgroups are not supported).
"""

from __future__ import annotations

import torch

from msam import dist
from msam.methods import MSAM_IMPLEMENTATIONS, VMAP_IMPLEMENTATIONS
from msam.methods.autotune import Choice, choose, vmap_refused
from msam.methods.batch import batch_size_of
from msam.methods.msam_loop import DESCENT_LOSSES, SAMLoop
from msam.methods.msam_vmap import SAMVmap
from msam.methods.msam_vmap_ascent import SAMVmapAscent
from msam.methods.reweight import GibbsReweighting
from msam.precision import Precision


class UsageError(ValueError):
    """A misuse of the library API, reported before any compute."""


class MSAM:
    def __init__(self, model: torch.nn.Module, *, m: int = 1, rho: float = 0.05, normalize: bool = True,
                 adaptive: bool = False, eta: float = 0.01, eps: float = 1e-12,
                 reweighting: GibbsReweighting | None = None, descent_loss: str = "mean", impl: str = "loop",
                 chunk_size: int | None = None, autocast_dtype: torch.dtype | None = None,
                 grad_scaler: torch.amp.GradScaler | None = None, tune_steps: int = 5,
                 tune_max_seconds: float = 60.0, tune_keep_within: float = 1.3) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise UsageError("the model has no trainable parameters (requires_grad=True): nothing to compute a "
                             "direction for")
        if not (isinstance(m, int) and m >= 1):
            raise UsageError(f"m must be an integer >= 1, got {m!r}")
        if not rho >= 0:
            raise UsageError(f"rho must be >= 0, got {rho!r}")
        if impl not in MSAM_IMPLEMENTATIONS:
            raise UsageError(f"impl must be one of {', '.join(MSAM_IMPLEMENTATIONS)}, got {impl!r}")
        if descent_loss not in DESCENT_LOSSES:
            raise UsageError(f"descent_loss must be one of {', '.join(DESCENT_LOSSES)}, got {descent_loss!r}")
        if grad_scaler is not None and not grad_scaler.is_enabled():
            grad_scaler = None  # GradScaler(enabled=False): the common "fp16 or not" switch
        if grad_scaler is not None and autocast_dtype != torch.float16:
            raise UsageError("grad_scaler goes with autocast_dtype=torch.float16")
        if not (isinstance(tune_steps, int) and tune_steps >= 1):
            raise UsageError(f"tune_steps must be an integer >= 1, got {tune_steps!r}")
        if not tune_keep_within >= 1:
            raise UsageError(f"tune_keep_within must be >= 1, got {tune_keep_within!r}")
        device = params[0].device
        self.model, self.m = model, m
        self.precision = Precision(device.type, autocast_dtype, grad_scaler)
        if impl in VMAP_IMPLEMENTATIONS:
            if reweighting is not None:
                raise UsageError(f"RW-SAM's reweighting runs with impl='loop' (or 'auto'), not {impl!r}")
            reason = vmap_refused(dist.unwrap(model), self.precision)
            if reason is not None:
                raise UsageError(reason.replace("method.impl", "impl"))
        self.options = dict(m=m, rho=rho, eps=eps, normalize=normalize, adaptive=adaptive, eta=eta)
        self.reweighting, self.descent_loss, self.impl = reweighting, descent_loss, impl
        self.tune_steps, self.tune_max_seconds, self.chunk_size = tune_steps, tune_max_seconds, chunk_size
        self.tune_keep_within = tune_keep_within
        # torch.compile'd (torch.compile(model) or model.compile()): torch.func cannot swap its weights
        self.compiled = hasattr(model, "_orig_mod") or getattr(dist.unwrap(model), "_compiled_call_impl", None) is not None
        self.method = None if impl == "auto" else self._build(Choice(impl, chunk_size))
        self.implementation = None if impl == "auto" else Choice(impl, chunk_size).label

    def _build(self, choice: Choice):
        if choice.impl in VMAP_IMPLEMENTATIONS:
            vmapped = SAMVmap if choice.impl == "vmap" else SAMVmapAscent
            return vmapped(chunk_size=choice.chunk_size, name="msam", precision=self.precision, **self.options)
        return SAMLoop(name="rwsam" if self.reweighting else "msam", reweighting=self.reweighting,
                                 descent_loss=self.descent_loss, precision=self.precision, **self.options)

    def context(self) -> dist.DistContext:
        """Several processes only for a DDP-wrapped model (whose direction DDP all-reduces)."""
        device = next(p for p in self.model.parameters() if p.requires_grad).device
        if not isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            return dist.DistContext(device=device)
        return dist.DistContext(torch.distributed.get_rank(), torch.distributed.get_world_size(), 0, device)

    def __call__(self, loss_fn, inputs, targets) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill .grad with the direction; return the clean mean loss and the logits (detached)."""
        size = batch_size_of(inputs)
        if size % self.m != 0:
            raise UsageError(f"a batch of {size} samples cannot be split into m={self.m} equal micro-batches")
        checked = per_sample_checked(loss_fn)
        ctx = self.context()
        if self.method is None:  # impl="auto": measured once, on this first batch
            choice, self.method, _ = choose(self._build, self.m, self.model, self.precision, checked, (inputs, targets),
                                         steps=self.tune_steps, max_seconds=self.tune_max_seconds,
                                         keep_within=self.tune_keep_within, ctx=ctx,
                                         compiled=self.compiled, reweighting=self.reweighting is not None,
                                         chunk_size=self.chunk_size)
            self.implementation = choice.label
        loss, logits = self.method(self.model, checked, (inputs, targets))
        dist.average_batchnorm(self.model, ctx)
        return loss, logits

    backward = __call__


def per_sample_checked(loss_fn):
    """loss_fn, refusing a reduced loss in one line (a mean would silently break RW-SAM's weights
    and the micro-batch bookkeeping)."""

    def checked(logits, targets):
        losses = loss_fn(logits, targets)
        if losses.dim() != 1 or losses.shape[0] != targets.shape[0]:
            raise UsageError(f"loss_fn returned shape {tuple(losses.shape)} for {targets.shape[0]} samples: it must "
                             "return one loss per sample (e.g. cross_entropy(..., reduction='none'))")
        return losses

    return checked
