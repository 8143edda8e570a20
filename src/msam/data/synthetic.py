"""Random images with labels from a fixed random linear teacher: learnable, instant, any shape."""

from __future__ import annotations

import torch

from msam.data.bundle import tensor_bundle


def build_synthetic(cfg, batch_size, eval_batch_size, seed, device):
    gen = torch.Generator().manual_seed(cfg.data_seed)
    shape = tuple(cfg.image_shape)
    n = cfg.train_size + cfg.test_size
    images = torch.rand((n, *shape), generator=gen)
    teacher = torch.randn(int(torch.tensor(shape).prod()), cfg.num_classes, generator=gen)
    labels = ((images.flatten(1) - 0.5) @ teacher).argmax(1)
    train, test = slice(0, cfg.train_size), slice(cfg.train_size, n)
    return tensor_bundle(cfg, images[train], labels[train], images[test], labels[test],
                         batch_size, eval_batch_size, seed, device)
