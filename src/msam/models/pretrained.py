"""ImageNet models from torchvision and timm; pretrained weights only from a local file."""

from __future__ import annotations

import os
import pickle
from contextlib import contextmanager

import torch
from torch import nn

from msam.errors import ConfigError

# What torch.load, load_state_dict, timm and transformers raise for a file of another model or none
LOAD_ERRORS = (RuntimeError, KeyError, ValueError, OSError, EOFError, pickle.UnpicklingError, AttributeError)


@contextmanager
def loading_checkpoint(cfg):
    """A model.checkpoint of another architecture (or not a checkpoint) is one line, not torch's
    list of every missing key. Without a checkpoint, errors pass unchanged."""
    try:
        yield
    except LOAD_ERRORS as error:
        if cfg.get("checkpoint") is None:
            raise
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = " ".join(lines)[:300] or type(error).__name__
        raise ConfigError(f"model.checkpoint={cfg.checkpoint} does not load into model={cfg.name} ({detail}); give "
                          "that model's own weights") from None


def check_checkpoint(path: str | None) -> None:
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"model.checkpoint not found: {os.path.abspath(path)}")


def torchvision_model(name: str, num_classes: int, checkpoint: str | None) -> nn.Module:
    from torchvision import models as tv_models  # imported here: seconds at start-up for every other model

    model = tv_models.get_model(name, weights=None, num_classes=num_classes)
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state))
    return model


def timm_vit(cfg, num_classes: int, image_size: int, channels: int) -> nn.Module:
    """A timm ViT; with model.checkpoint, timm loads that local file and adapts the head and
    position embeddings to num_classes and image_size. Never downloads from the hub."""
    import timm  # imported here: seconds at start-up for every other model

    kwargs = dict(num_classes=num_classes, img_size=image_size, in_chans=channels, drop_rate=cfg.dropout)
    if cfg.get("patch_size") is not None:
        kwargs["patch_size"] = cfg.patch_size
    if cfg.checkpoint is None:
        return timm.create_model(cfg.timm_name, pretrained=False, **kwargs)
    model = timm.create_model(
        cfg.timm_name, pretrained=True, pretrained_cfg_overlay={"file": os.path.abspath(cfg.checkpoint)}, **kwargs
    )
    check_every_weight_loaded(model, cfg.checkpoint)
    return model


def check_every_weight_loaded(model: nn.Module, path: str) -> None:
    """timm loads a pretrained file without strictness (it adapts heads) and only logs the weights
    it did not find: a checkpoint of another model would leave a randomly initialised ViT. Every
    weight but the classifier must come from the file. (An .npz is read by timm's strict reader.)"""
    if path.endswith(".npz"):
        return
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    found = checkpoint_filter_fn(timm.models.load_state_dict(path), model)
    head = model.pretrained_cfg.get("classifier", "head")
    missing = [k for k in model.state_dict() if k not in found and not k.startswith(head)]
    if missing:
        raise ConfigError(f"model.checkpoint={path} lacks {len(missing)} of the model's weights (first: {missing[0]}): "
                          f"it is not a {model.pretrained_cfg.get('architecture', 'ViT')} checkpoint")
