"""ImageNet from an ImageFolder tree (root/train/<class>/*.JPEG, root/val/<class>/*.JPEG)."""

from __future__ import annotations

import os

import torch
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader

from msam.data.bundle import DataBundle
from msam.data.loaders import FolderLoader
from msam.errors import ConfigError, RunError


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


def load_image(path: str):
    """An unreadable image stops the run with its path (exit 1; the run resumes from its last
    checkpoint once the file is replaced). Skipping it would train on another data set than the
    one reported, and one broken file usually means a broken copy with more."""
    try:
        return default_loader(path)
    except (OSError, ValueError, SyntaxError) as error:  # PIL: UnidentifiedImageError, truncated data
        raise RunError(f"unreadable image {path} ({type(error).__name__}: {error}); replace or remove it and run "
                       "the same command again (it resumes from the last checkpoint)") from None


def image_folder(cfg, split: str, transform) -> ImageFolder:
    """root/<split>/<class>/*: a missing permission or a class folder without images is one line."""
    folder = os.path.join(cfg.root, split)
    try:
        return ImageFolder(folder, transform=transform, loader=load_image)
    except (OSError, RuntimeError) as error:  # torchvision: FileNotFoundError for an empty class folder
        raise ConfigError(f"imagenet {split} folder {os.path.abspath(folder)} is unusable: {error}") from None


def check_same_classes(train: ImageFolder, val: ImageFolder, root: str) -> None:
    if train.classes != val.classes:
        only = sorted(set(train.classes) ^ set(val.classes))
        raise ConfigError(f"imagenet at {root}: train/ has {len(train.classes)} class folders and val/ "
                          f"{len(val.classes)}, and they differ (first: {only[0] if only else 'their order'}); "
                          "val/ needs the same class folders as train/")


def build_imagenet(cfg, batch_size, eval_batch_size, seed, device: torch.device) -> DataBundle:
    check_imagenet(cfg)
    train_tf, eval_tf = inception_transforms(cfg)
    train_set = image_folder(cfg, "train", train_tf)
    test_set = image_folder(cfg, "val", eval_tf)
    check_same_classes(train_set, test_set, cfg.root)
    if len(train_set.classes) != cfg.num_classes:
        raise ConfigError(
            f"imagenet at {cfg.root} has {len(train_set.classes)} classes, dataset.num_classes is {cfg.num_classes}"
        )
    train = FolderLoader(train_set, batch_size, True, True, seed, cfg.num_workers, device)
    test = FolderLoader(test_set, eval_batch_size, False, False, seed, cfg.num_workers, device)
    shape = (3, cfg.image_size, cfg.image_size)
    return DataBundle(train, test, cfg.num_classes, shape, len(train_set), len(test_set))
