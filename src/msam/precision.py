"""Mixed precision: autocast dtypes, and fp16 loss scaling around the two-pass step."""

from __future__ import annotations

import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES.get(precision, torch.bfloat16),
                          enabled=precision in AUTOCAST_DTYPES)


class LossScaling:
    """fp16: a GradScaler used correctly around a two-pass step. The method sees a loss scaled by
    S, so its ascent gradient is S g: SAM's normalised perturbation rho S g / (||S g|| + eps) does
    not depend on S (up to eps), and an overflow makes the step non-finite, which the scaler skips
    (the weights are restored by copy either way). The accumulated direction is unscaled once
    before clipping; one scaler step and one update per optimizer step."""

    def __init__(self, cfg, device: torch.device) -> None:
        self.scaler = None
        if cfg.precision == "fp16":
            self.scaler = torch.amp.GradScaler(device.type, init_scale=cfg.fp16_scaler.init_scale,
                                               growth_interval=cfg.fp16_scaler.growth_interval)

    def loss_fn(self, loss_fn):
        if self.scaler is None:
            return loss_fn
        return lambda logits, targets: self.scaler.scale(loss_fn(logits.float(), targets))

    def unscale(self, optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
