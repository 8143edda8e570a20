"""Models by name: model.name in the config picks one; shapes come from the data set."""

from __future__ import annotations

from torch import nn

from msam.errors import ConfigError
from msam.models.cifar_resnet import cifar_resnet
from msam.models.pretrained import TORCHVISION, check_checkpoint, timm_vit, torchvision_model
from msam.models.small_cnn import small_cnn
from msam.models.wide_resnet import WideResNet

MODEL_NAMES = ("small_cnn", "resnet18", "resnet50", "wrn", "imagenet_resnet50", "imagenet_wrn50_2", "vit")


def check_model(cfg) -> None:
    if cfg.name not in MODEL_NAMES:
        raise ConfigError(f"unknown model '{cfg.name}'; valid: {', '.join(MODEL_NAMES)}")
    check_checkpoint(cfg.get("checkpoint"))


def build_model(cfg, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    check_model(cfg)
    channels = input_shape[0]
    if cfg.name == "small_cnn":
        return small_cnn(channels, num_classes, cfg.width)
    if cfg.name in ("resnet18", "resnet50"):
        return cifar_resnet(int(cfg.name[len("resnet"):]), channels, num_classes)
    if cfg.name == "wrn":
        return WideResNet(cfg.depth, cfg.width, channels, num_classes, cfg.dropout)
    if cfg.name in TORCHVISION:
        return torchvision_model(cfg.name, num_classes, cfg.checkpoint)
    return timm_vit(cfg, num_classes, input_shape[-1])
