"""scikit-learn's 8x8 handwritten digits (1797 images, ships with scikit-learn: no download)."""

from __future__ import annotations

import torch

from msam.data.bundle import tensor_bundle


def build_digits(cfg, batch_size, eval_batch_size, seed, device):
    from sklearn.datasets import load_digits  # scikit-learn's import costs seconds: only when digits are read

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    # A fixed split, independent of the training seed, so seeds vary only the training.
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.split_seed))
    n_test = round(cfg.test_fraction * len(labels))
    test, train = order[:n_test], order[n_test:]
    return tensor_bundle(cfg, images[train], labels[train], images[test], labels[test],
                         batch_size, eval_batch_size, seed, device)
