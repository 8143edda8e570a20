"""Which modules of a model are BatchNorm layers (one definition for the methods, dist and autotune)."""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorms(model: torch.nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def tracking_batchnorms(model: torch.nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers that keep running statistics."""
    return [m for m in batchnorms(model) if m.track_running_stats]
