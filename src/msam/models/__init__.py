"""Models by architecture: model.arch picks the builder, model.name names the row in reports."""

from __future__ import annotations

import importlib.util
import re

from torch import nn

from msam.errors import ConfigError
from msam.models.cifar_resnet import DEPTHS, cifar_resnet
from msam.models.pretrained import check_checkpoint, loading_checkpoint, timm_vit, torchvision_model
from msam.models.small_cnn import small_cnn
from msam.models.text import check_text_checkpoint, text_classifier
from msam.models.wide_resnet import WideResNet
from msam.targets import call_target, has_target, locate

CIFAR_DEPTHS = tuple(DEPTHS)
# The keys each architecture's builder reads (conf/model/*.yaml give them).
ARCH_KEYS = {"small_cnn": ("width",), "cifar_resnet": ("depth",), "wide_resnet": ("depth", "width", "dropout"),
             "torchvision": ("torchvision_name", "checkpoint"), "timm": ("timm_name", "dropout", "checkpoint"),
             "transformers": ("model_type", "checkpoint", "config")}
ARCHITECTURES = tuple(ARCH_KEYS)
# How much each BatchNorm architecture shrinks an image's side before its last BatchNorm.
BATCHNORM_STRIDE = {"small_cnn": 2, "cifar_resnet": 8, "wide_resnet": 4, "torchvision": 32}
# A model given by _target_: msam's own keys, read by msam and not passed to the callable (the
# smoke overlay sets pretrained_required on every model).
TARGET_MODEL_KEYS = ("name", "pretrained_required")


def last_batchnorm_side(arch: str, side: int) -> int:
    """Strided convolutions (padding 1) round a side up; the small CNN's 2x2 max-pool rounds down."""
    stride = BATCHNORM_STRIDE[arch]
    return side // stride if arch == "small_cnn" else -(-side // stride)


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# timm and torchvision are imported by the models that need them: together they cost seconds at
# every start of a tool that trains the small CNN.
def is_timm_model(name: str) -> bool:
    import timm

    return timm.is_model(name)


def torchvision_models() -> list[str]:
    from torchvision import models

    return models.list_models()


def check_target_model(cfg) -> None:
    """A model of the user's own (model._target_): the name runs are filed under, and a callable
    that imports. What it builds is checked once built (check_built_model)."""
    if "name" not in cfg:
        raise ConfigError("a model given by _target_ needs model.name (the name its runs and report rows carry)")
    if "arch" in cfg:
        raise ConfigError(f"model {cfg.name} has both _target_ and arch: a model is built from one of them "
                          "(remove model.arch, or ~model._target_)")
    locate(cfg, "model")


def check_model(cfg) -> None:
    if has_target(cfg):
        check_target_model(cfg)
        return
    if cfg.arch not in ARCHITECTURES:
        raise ConfigError(f"unknown model.arch '{cfg.arch}'; valid: {', '.join(ARCHITECTURES)}")
    if cfg.arch == "transformers":
        if not installed("transformers"):
            raise ConfigError(f"model={cfg.name} needs the GLUE extra (transformers, datasets, tokenizers): "
                              "pip install 'msam[glue]'")
        check_text_checkpoint(cfg.get("checkpoint"))
    else:
        check_checkpoint(cfg.get("checkpoint"))
    missing = [key for key in ARCH_KEYS[cfg.arch] if key not in cfg]
    if missing:
        raise ConfigError(f"model.arch={cfg.arch} needs model.{missing[0]}: choose the architecture with model=<name> "
                          "(conf/model/), not model.arch")
    if cfg.arch == "timm" and not is_timm_model(cfg.timm_name):
        raise ConfigError(f"model.timm_name={cfg.timm_name} is not a timm model (timm.list_models() lists them)")
    if cfg.arch == "torchvision" and cfg.torchvision_name not in torchvision_models():
        raise ConfigError(f"model.torchvision_name={cfg.torchvision_name} is not a torchvision model "
                          "(torchvision.models.list_models() lists them)")
    if cfg.arch == "wide_resnet" and (cfg.depth - 4) % 6:
        raise ConfigError(f"model.depth={cfg.depth}: a Wide-ResNet's depth is 6n + 4 (16, 22, 28, 40, ...)")
    if cfg.arch == "cifar_resnet" and cfg.depth not in CIFAR_DEPTHS:
        raise ConfigError(f"model.depth={cfg.depth}: valid ResNet depths are {', '.join(map(str, CIFAR_DEPTHS))}")
    if cfg.get("pretrained_required") and cfg.get("checkpoint") is None:
        raise ConfigError(f"model {cfg.name} is fine-tuned from pretrained weights here: give "
                          f"model.checkpoint=PATH (docs/training.md, 'Models', says how to get them)")


def check_input_size(cfg, side: int, channels: int, micro_batch: int) -> None:
    """Images of side x side pixels through the model: a ViT needs whole patches, the small CNN's
    pooling at least 2 pixels, torchvision's ImageNet models 3 channels, and BatchNorm in training
    more than one value per channel in its last layer (micro-batch x the last feature map). A model
    of the user's own is checked by running it, once built (check_built_model)."""
    if has_target(cfg):
        return
    if cfg.arch in BATCHNORM_STRIDE:
        last = last_batchnorm_side(cfg.arch, side)
        if micro_batch * last * last < 2:
            raise ConfigError(f"model={cfg.name} shrinks {side}x{side} images to {last}x{last} before its last "
                              f"BatchNorm: micro-batches of {micro_batch} give it one value per channel (torch "
                              "refuses); use larger micro-batches (batch_size / method.m) or larger images")
    if cfg.arch == "torchvision" and channels != 3:
        raise ConfigError(f"model={cfg.name} takes 3-channel images; these have {channels}")
    if cfg.arch == "timm":
        named = re.search(r"patch(\d+)", cfg.timm_name)
        patch = cfg.get("patch_size") or (int(named.group(1)) if named else None)
        if patch is not None and side < patch:
            raise ConfigError(f"model={cfg.name} cuts images into {patch}x{patch} patches: {side}x{side} images hold "
                              "none (set model.patch_size, or dataset.resize for CIFAR)")
    if cfg.arch == "small_cnn" and side < 2:
        raise ConfigError(f"model=small_cnn pools 2x2: images of side {side} are too small")


def build_target_model(cfg) -> nn.Module:
    model = call_target(cfg, "model", TARGET_MODEL_KEYS)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model._target_={cfg._target_} returned a {type(model).__name__}, not a torch.nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"model._target_={cfg._target_} built a module without trainable parameters")
    return model


def build_model(cfg, num_classes: int, input_shape: tuple[int, ...], smoke=None) -> nn.Module:
    check_model(cfg)
    if has_target(cfg):
        return build_target_model(cfg)
    if cfg.arch == "transformers":
        with loading_checkpoint(cfg):
            return text_classifier(cfg, num_classes, smoke)
    channels = input_shape[0]
    if cfg.arch == "small_cnn":
        return small_cnn(channels, num_classes, cfg.width)
    if cfg.arch == "cifar_resnet":
        return cifar_resnet(cfg.depth, channels, num_classes)
    if cfg.arch == "wide_resnet":
        return WideResNet(cfg.depth, cfg.width, channels, num_classes, cfg.dropout)
    with loading_checkpoint(cfg):
        if cfg.arch == "torchvision":
            return torchvision_model(cfg.torchvision_name, num_classes, cfg.checkpoint)
        return timm_vit(cfg, num_classes, input_shape[-1], input_shape[0])
