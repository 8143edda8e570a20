"""Models by architecture: model.arch picks the builder, model.name names the row in reports."""

from __future__ import annotations

import importlib.util

from torch import nn

from msam.errors import ConfigError
from msam.models.cifar_resnet import cifar_resnet
from msam.models.pretrained import check_checkpoint, timm_vit, torchvision_model
from msam.models.small_cnn import small_cnn
from msam.models.text import check_text_checkpoint, text_classifier
from msam.models.wide_resnet import WideResNet

ARCHITECTURES = ("small_cnn", "cifar_resnet", "wide_resnet", "torchvision", "timm", "transformers")


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_model(cfg) -> None:
    if cfg.arch not in ARCHITECTURES:
        raise ConfigError(f"unknown model.arch '{cfg.arch}'; valid: {', '.join(ARCHITECTURES)}")
    if cfg.arch == "transformers":
        if not installed("transformers"):
            raise ConfigError(f"model={cfg.name} needs the GLUE extra (transformers, datasets, tokenizers): "
                              "pip install 'msam[glue]'")
        check_text_checkpoint(cfg.get("checkpoint"))
    else:
        check_checkpoint(cfg.get("checkpoint"))
    if cfg.get("pretrained_required") and cfg.get("checkpoint") is None:
        raise ConfigError(f"model {cfg.name} is fine-tuned from pretrained weights here: give "
                          f"model.checkpoint=PATH (docs/training.md, 'Models', says how to get them)")


def build_model(cfg, num_classes: int, input_shape: tuple[int, ...], smoke=None) -> nn.Module:
    check_model(cfg)
    if cfg.arch == "transformers":
        return text_classifier(cfg, num_classes, smoke)
    channels = input_shape[0]
    if cfg.arch == "small_cnn":
        return small_cnn(channels, num_classes, cfg.width)
    if cfg.arch == "cifar_resnet":
        return cifar_resnet(cfg.depth, channels, num_classes)
    if cfg.arch == "wide_resnet":
        return WideResNet(cfg.depth, cfg.width, channels, num_classes, cfg.dropout)
    if cfg.arch == "torchvision":
        return torchvision_model(cfg.torchvision_name, num_classes, cfg.checkpoint)
    return timm_vit(cfg, num_classes, input_shape[-1])
