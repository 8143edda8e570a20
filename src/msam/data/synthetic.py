"""Random images labelled by a fixed random linear teacher: learnable, instant, any shape.

Also the smoke overlay's data: synthetic data with another data set's shape, normalisation,
augmentation and resizing, so an experiment's whole path runs without its files.
"""

from __future__ import annotations

import torch

from msam.data.bundle import tensor_bundle


def teacher_labelled(shape, num_classes, n, data_seed):
    gen = torch.Generator().manual_seed(data_seed)
    images = torch.rand((n, *shape), generator=gen)
    teacher = torch.randn(int(torch.tensor(shape).prod()), num_classes, generator=gen)
    return images, ((images.flatten(1) - 0.5) @ teacher).argmax(1)


def build_synthetic(cfg, batch_size, eval_batch_size, seed, device):
    images, labels = teacher_labelled(tuple(cfg.image_shape), cfg.num_classes,
                                      cfg.train_size + cfg.test_size, cfg.data_seed)
    train, test = slice(0, cfg.train_size), slice(cfg.train_size, None)
    return tensor_bundle(cfg, images[train], labels[train], images[test], labels[test],
                         batch_size, eval_batch_size, seed, device)


def build_smoke(cfg, smoke, batch_size, eval_batch_size, seed, device):
    """smoke.train_batches full batches and smoke.test_size test images shaped like cfg's data."""
    train_size = smoke.train_batches * batch_size
    images, labels = teacher_labelled(tuple(cfg.image_shape), cfg.num_classes, train_size + smoke.test_size, 0)
    return tensor_bundle(cfg, images[:train_size], labels[:train_size], images[train_size:], labels[train_size:],
                         batch_size, eval_batch_size, seed, device)
