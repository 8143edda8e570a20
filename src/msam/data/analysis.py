"""The training set for post-hoc analysis: no augmentation, fixed order, optional fixed subset."""

from __future__ import annotations

import os

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder

from msam.data import build_data, check_data
from msam.data.imagenet import inception_transforms


def subset_indices(n: int, max_samples: int | None, seed: int) -> torch.Tensor:
    """All indices, or the first max_samples of a permutation fixed by seed (classes stay mixed)."""
    if max_samples is None or max_samples >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_samples].sort().values


def analysis_batches(cfg, batch_size: int, max_samples: int | None, seed: int, device, dtype):
    """A list of (inputs, targets) batches over the training set (the last may be shorter)."""
    check_data(cfg)
    if cfg.name == "imagenet":
        _, evaluate = inception_transforms(cfg)
        dataset = ImageFolder(os.path.join(cfg.root, "train"), transform=evaluate)
        index = subset_indices(len(dataset), max_samples, seed)
        loader = DataLoader(Subset(dataset, index.tolist()), batch_size=batch_size, shuffle=False,
                            num_workers=cfg.num_workers)
        return [(x.to(device, dtype), y.to(device)) for x, y in loader]
    plain = OmegaConf.merge(cfg, {"augment": False})
    data = build_data(plain, batch_size=batch_size, eval_batch_size=batch_size, seed=seed, device=device)
    index = subset_indices(data.train_size, max_samples, seed).to(device)
    inputs, targets = data.train.inputs[index].to(dtype), data.train.targets[index]
    return [(inputs[i:i + batch_size], targets[i:i + batch_size]) for i in range(0, len(index), batch_size)]
