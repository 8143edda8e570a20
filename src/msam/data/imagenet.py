"""ImageNet from an ImageFolder tree (root/train/<class>/*.JPEG, root/val/<class>/*.JPEG)."""

from __future__ import annotations

import os

import torch
from torchvision import transforms
from torchvision.datasets import ImageFolder

from msam.data.bundle import DataBundle
from msam.data.loaders import FolderLoader
from msam.errors import ConfigError


def check_imagenet(cfg) -> None:
    for split in ("train", "val"):
        folder = os.path.join(cfg.root, split)
        if not os.path.isdir(folder):
            raise ConfigError(
                f"imagenet not found: looked for {os.path.abspath(folder)}; download ILSVRC2012 from "
                f"https://image-net.org and arrange train/ and val/ as one folder per class"
            )


def inception_transforms(cfg):
    """Inception-style: RandomResizedCrop + flip for training, resize + centre crop to evaluate."""
    normalise = transforms.Normalize(list(cfg.mean), list(cfg.std))
    train = transforms.Compose([
        transforms.RandomResizedCrop(cfg.image_size, scale=(cfg.min_scale, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        normalise,
    ])
    evaluate = transforms.Compose([
        transforms.Resize(cfg.resize),
        transforms.CenterCrop(cfg.image_size),
        transforms.ToTensor(),
        normalise,
    ])
    return train, evaluate


def build_imagenet(cfg, batch_size, eval_batch_size, seed, device: torch.device) -> DataBundle:
    check_imagenet(cfg)
    train_tf, eval_tf = inception_transforms(cfg)
    train_set = ImageFolder(os.path.join(cfg.root, "train"), transform=train_tf)
    test_set = ImageFolder(os.path.join(cfg.root, "val"), transform=eval_tf)
    if len(train_set.classes) != cfg.num_classes:
        raise ConfigError(
            f"imagenet at {cfg.root} has {len(train_set.classes)} classes, dataset.num_classes is {cfg.num_classes}"
        )
    train = FolderLoader(train_set, batch_size, True, True, seed, cfg.num_workers, device)
    test = FolderLoader(test_set, eval_batch_size, False, False, seed, cfg.num_workers, device)
    shape = (3, cfg.image_size, cfg.image_size)
    return DataBundle(train, test, cfg.num_classes, shape, len(train_set), len(test_set))
