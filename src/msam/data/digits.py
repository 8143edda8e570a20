"""scikit-learn's 8x8 handwritten digits (1797 images, ships with scikit-learn: no download)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from msam.data.bundle import tensor_bundle


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """The (1797, 8, 8) images (0..16) and labels of `sklearn.datasets.load_digits`.

    Read straight from the CSV that scikit-learn ships, without importing scikit-learn: its import
    (scipy, pandas) costs about 2 s at every run start, 100 times the read. A scikit-learn that
    keeps the file elsewhere gets `load_digits` itself.
    """
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    if spec is not None and spec.submodule_search_locations:
        csv = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            table = np.loadtxt(csv, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def build_digits(cfg, batch_size, eval_batch_size, seed, device):
    pixels, targets = read_digits()
    images = torch.tensor(pixels, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(targets, dtype=torch.long)
    # A fixed split, independent of the training seed, so seeds vary only the training.
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.split_seed))
    n_test = round(cfg.test_fraction * len(labels))
    test, train = order[:n_test], order[n_test:]
    return tensor_bundle(cfg, images[train], labels[train], images[test], labels[test],
                         batch_size, eval_batch_size, seed, device)
