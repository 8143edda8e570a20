"""Mixed precision for two-pass methods: where autocast goes, fp16's loss scale, and TF32.

Two rules that a SAM-style step must follow and a plain training loop need not:

- Autocast covers forward passes only. Autocast caches the low-precision copy of each weight for
  as long as its region is open, so a perturbed pass inside the same region as the ascent pass
  would run on the clean weights' cached copy (SAM silently becomes vanilla). The methods open
  one region per forward (`Precision.forward`), run every backward and every in-place weight
  change outside it, and clear the cache after changing weights (in case a caller wrapped the
  whole step in its own autocast region).
- Under fp16 the backward passes run on a loss multiplied by the GradScaler's scale S (so that
  small gradients do not underflow), but what the method computes from a gradient must not
  depend on S: the ascent gradient is divided by S before the perturbation is built from it
  (unnormalised SAM would otherwise use e = rho S g), and RW-SAM's weights are computed from
  unscaled losses. The descent direction stays scaled in .grad; the engine unscales it once,
  before clipping, and the scaler skips a step whose direction overflowed.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """The precision of a training step: an autocast dtype (or none: fp32) and, for fp16, a
    GradScaler. Methods use forward(), scale() and unscale_(); the engine uses the rest."""

    def __init__(self, device_type: str = "cpu", dtype: torch.dtype | None = None,
                 scaler: torch.amp.GradScaler | None = None) -> None:
        self.device_type, self.dtype, self.scaler = device_type, dtype, scaler

    @classmethod
    def from_config(cls, cfg, device: torch.device) -> "Precision":
        scaler = None
        if cfg.precision == "fp16":
            scaler = torch.amp.GradScaler(device.type, init_scale=cfg.fp16_scaler.init_scale,
                                          growth_interval=cfg.fp16_scaler.growth_interval)
        return cls(device.type, AUTOCAST_DTYPES.get(cfg.precision), scaler)

    @property
    def mixed(self) -> bool:
        return self.dtype is not None

    def forward(self):
        """The autocast region of one forward pass (nothing under fp32)."""
        return torch.autocast(self.device_type, dtype=self.dtype) if self.mixed else nullcontext()

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss a backward pass runs on: S * loss under fp16, the loss otherwise."""
        return self.scaler.scale(loss) if self.scaler is not None else loss

    @torch.no_grad()
    def unscale_(self, grads: list[torch.Tensor]) -> None:
        """Divide gradients of a scaled loss by S, in place, without a host sync."""
        if self.scaler is not None and grads:
            scale = self.scaler.scale(torch.ones((), device=grads[0].device, dtype=torch.float32))
            torch._foreach_div_(grads, scale.to(grads[0].dtype))

    # The engine's side: one unscale of the direction and one scaler step per optimizer step.
    def unscale_optimizer_(self, optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()

    def skip_step(self) -> None:
        """A step the NaN guard skips after unscaling: close the scaler's step (update() without
        step(): the scale backs off if the direction overflowed), or the next unscale_ refuses."""
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


FP32 = Precision()


def weights_changed() -> None:
    """Drop autocast's cached low-precision weights: they are stale once weights change in place."""
    torch.clear_autocast_cache()


@contextmanager
def exact_fp32(device_type: str):
    """A region in true fp32: no autocast and, on CUDA, no TF32 (a finite difference of losses
    needs every bit float32 has; TF32 keeps 10 mantissa bits)."""
    with torch.autocast(device_type, enabled=False):
        if device_type != "cuda":
            yield
            return
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def set_tf32(enabled: bool) -> None:
    """TF32 for float32 matrix products and cuDNN convolutions (Ampere and newer GPUs), both set
    from the config: PyTorch's own defaults differ (off for matmul, on for convolutions)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def settings(cfg) -> dict:
    """The precision settings in effect, read back from torch, for provenance.json."""
    return {
        "precision": cfg.precision,
        "autocast_dtype": str(AUTOCAST_DTYPES[cfg.precision]) if cfg.precision in AUTOCAST_DTYPES else None,
        "fp16_loss_scaling": cfg.precision == "fp16",
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "channels_last": bool(cfg.channels_last),
    }
