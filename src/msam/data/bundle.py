"""What every data set hands the engine: two loaders and the shape of the problem."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from msam.data.augment import random_crop_flip
from msam.data.loaders import FolderLoader, TensorLoader


@dataclass
class DataBundle:
    train: TensorLoader | FolderLoader
    test: TensorLoader | FolderLoader
    num_classes: int
    input_shape: tuple[int, ...]
    train_size: int
    test_size: int
    fingerprint: str | None = None  # a data set of the user's own: a hash of what its callable returned

    def shard(self, rank: int, world_size: int) -> None:
        """Under torchrun: this process's share of every training batch and of the test batches."""
        for loader in (self.train, self.test):
            loader.rank, loader.world_size = rank, world_size


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Per-channel (x - mean) / std for images in [0, 1], shape (N, C, H, W)."""
    mean = torch.tensor(list(mean), dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.tensor(list(std), dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean) / std


def input_side(cfg) -> int:
    """The side of the square images a model sees: ImageNet's crop, CIFAR's optional resize, or
    the images' own."""
    if cfg.name == "imagenet":
        return cfg.image_size
    return cfg.get("resize") or cfg.image_shape[-1]


def tensor_bundle(cfg, train_x, train_y, test_x, test_y, batch_size, eval_batch_size, seed, device):
    """Normalise, move to the device and wrap tensors (N, C, H, W) in [0, 1] as a DataBundle."""
    train_x = normalise(train_x, cfg.mean, cfg.std).to(device)
    test_x = normalise(test_x, cfg.mean, cfg.std).to(device)
    augment = random_crop_flip(cfg.crop_padding, cfg.flip) if cfg.get("augment") else None
    # CIFAR's resize feeds the model larger images; ImageNet's (the smoke overlay's stand-in) is
    # a resize before the centre crop, which the synthetic images already have the size of
    resize = None if input_side(cfg) == train_x.shape[-1] else input_side(cfg)
    train = TensorLoader(train_x, train_y.to(device), batch_size, shuffle=True, drop_last=True,
                         seed=seed, augment=augment, resize=resize)
    test = TensorLoader(test_x, test_y.to(device), eval_batch_size, shuffle=False, drop_last=False, resize=resize)
    shape = tuple(train_x.shape[1:]) if resize is None else (train_x.shape[1], resize, resize)
    return DataBundle(train, test, cfg.num_classes, shape, len(train_y), len(test_y))
