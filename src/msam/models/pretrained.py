"""ImageNet models from torchvision and timm; pretrained weights only from a local file."""

from __future__ import annotations

import os

import timm
import torch
from torch import nn
from torchvision import models as tv_models

from msam.errors import ConfigError

def check_checkpoint(path: str | None) -> None:
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"model.checkpoint not found: {os.path.abspath(path)}")


def torchvision_model(name: str, num_classes: int, checkpoint: str | None) -> nn.Module:
    model = tv_models.get_model(name, weights=None, num_classes=num_classes)
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state))
    return model


def timm_vit(cfg, num_classes: int, image_size: int) -> nn.Module:
    """A timm ViT; with model.checkpoint, timm loads that local file and adapts the head and
    position embeddings to num_classes and image_size. Never downloads from the hub."""
    kwargs = dict(num_classes=num_classes, img_size=image_size, drop_rate=cfg.dropout)
    if cfg.get("patch_size") is not None:
        kwargs["patch_size"] = cfg.patch_size
    if cfg.checkpoint is None:
        return timm.create_model(cfg.timm_name, pretrained=False, **kwargs)
    return timm.create_model(
        cfg.timm_name, pretrained=True, pretrained_cfg_overlay={"file": os.path.abspath(cfg.checkpoint)}, **kwargs
    )
