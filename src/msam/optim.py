"""The base optimizer (SGD or AdamW): weight decay and momentum live here, not in the methods."""

from __future__ import annotations

import torch
from torch import nn

from msam.errors import ConfigError

OPTIMIZER_NAMES = ("sgd", "adamw")


def parameter_groups(model: nn.Module, weight_decay: float, exclude_1d: bool) -> list[dict]:
    """All trainable parameters; with exclude_1d, biases and norm scales get no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_1d:
        return [{"params": params, "weight_decay": weight_decay}]
    decayed = [p for p in params if p.ndim > 1]
    plain = [p for p in params if p.ndim <= 1]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.weight_decay, cfg.weight_decay_exclude_1d)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               dampening=cfg.dampening, foreach=True)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, foreach=True)
    raise ConfigError(f"unknown optim '{cfg.name}'; valid: {', '.join(OPTIMIZER_NAMES)}")
