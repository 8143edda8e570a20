"""CIFAR-10/100 from the standard python-pickle directories, through torchvision."""

from __future__ import annotations

import os
import pickle

import torch
from torchvision.datasets import CIFAR10, CIFAR100

from msam.data.bundle import tensor_bundle
from msam.errors import ConfigError


class _FilesPresent:
    """torchvision checks the md5 of every pickle on every load (seconds, and it refuses any
    copy that is not byte-for-byte the original, e.g. the small ones our tests write). We check
    that the files exist; a download still verifies the archive's md5."""

    def _check_integrity(self) -> bool:
        folder = os.path.join(self.root, self.base_folder)
        names = [name for name, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        return all(os.path.isfile(os.path.join(folder, name)) for name in names)

    def _load_meta(self) -> None:
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as handle:
            self.classes = pickle.load(handle, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class CIFAR10Files(_FilesPresent, CIFAR10):
    pass


class CIFAR100Files(_FilesPresent, CIFAR100):
    pass


DATASETS = {"cifar10": CIFAR10Files, "cifar100": CIFAR100Files}


def check_cifar(cfg) -> None:
    """One-line error before any compute if the pickles are not where the config says."""
    dataset_class = DATASETS[cfg.name]
    folder = os.path.join(cfg.root, dataset_class.base_folder)
    if not cfg.download and not os.path.isdir(folder):
        raise ConfigError(
            f"{cfg.name} not found: looked for {os.path.abspath(folder)}; copy the 'python version' "
            f"from https://www.cs.toronto.edu/~kriz/cifar.html there, or add dataset.download=true"
        )


def load_split(cfg, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    folder = os.path.abspath(os.path.join(cfg.root, DATASETS[cfg.name].base_folder))
    try:
        dataset = DATASETS[cfg.name](cfg.root, train=train, download=cfg.download)
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, KeyError, IndexError, TypeError) as error:
        # a truncated or corrupt pickle, a file without read permission, pickles of the other CIFAR
        raise ConfigError(f"{cfg.name} at {folder} is unreadable ({type(error).__name__}: {error}); copy the "
                          "'python version' again from https://www.cs.toronto.edu/~kriz/cifar.html") from None
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).float() / 255.0
    return images, torch.tensor(dataset.targets, dtype=torch.long)


def build_cifar(cfg, batch_size, eval_batch_size, seed, device):
    check_cifar(cfg)
    train_x, train_y = load_split(cfg, train=True)
    test_x, test_y = load_split(cfg, train=False)
    return tensor_bundle(cfg, train_x, train_y, test_x, test_y, batch_size, eval_batch_size, seed, device)
