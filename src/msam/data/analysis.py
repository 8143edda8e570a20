"""The training set for post-hoc analysis, as the model saw data at evaluation time.

Same pipeline as the run's evaluation (normalisation, dataset.resize, ImageNet's resize + centre
crop, GLUE's tokenizer and padding), applied to the *training* split, without augmentation, in a
fixed order, read a batch at a time: only the current batch is ever on the device. The data set
stays on the host (CIFAR, digits, tokens) or on disk (ImageNet, read by DataLoader workers).

Under K processes each one reads a contiguous share of the (optionally subsampled) index list:
ceil(n / K) samples each, the last process fewer. The samples are weighed by 1 / n over all
processes, so the shares need not be equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from omegaconf import OmegaConf
from torch.utils.data import Subset

from msam.data import build_data, check_data
from msam.data.loaders import FolderLoader, TensorLoader
from msam.data.tokens import TokenLoader


def subset_indices(n: int, max_samples: int | None, seed: int) -> torch.Tensor:
    """All indices, or the first max_samples of a permutation fixed by seed (classes stay mixed)."""
    if max_samples is None or max_samples >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_samples].sort().values


def process_share(index: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    size = math.ceil(len(index) / world_size)
    return index[rank * size:(rank + 1) * size]


@dataclass
class AnalysisData:
    loader: TensorLoader | FolderLoader | TokenLoader  # this process's share, fixed order
    num_samples: int  # over all processes
    input_shape: tuple[int, ...]
    dtype: torch.dtype
    fingerprint: str | None = None  # a data set of the user's own: what its callable returned (msam.data.target)
    index: torch.Tensor | None = None  # the measured samples (all processes), positions in the training split
    loader_for: Callable[[torch.Tensor], object] | None = None  # a fixed-order loader over any of those positions

    def batches(self):
        """This process's batches on the device; image inputs in the measuring dtype."""
        return self.batches_of(self.loader)

    def batches_of(self, loader):
        for inputs, targets in loader.epoch(0):
            if not isinstance(inputs, dict):
                inputs = inputs.to(self.dtype)
            yield inputs, targets

    def subset_batches(self, positions: torch.Tensor):
        """The batches of the given training-split positions (any process may read any sample:
        sharpness on batches of n deals whole batches to the processes)."""
        return self.batches_of(self.loader_for(positions))


def analysis_data(run_cfg, batch_size: int, max_samples: int | None, seed: int, device: torch.device,
                  dtype: torch.dtype, rank: int = 0, world_size: int = 1) -> AnalysisData:
    """The training set of the run whose config is run_cfg (its dataset, resize and smoke overlay)."""
    cfg, smoke = run_cfg.dataset, run_cfg.get("smoke")
    check_data(cfg, smoke)
    if cfg.name == "imagenet" and smoke is None:
        from msam.data.imagenet import image_folder, inception_transforms  # torchvision: only for ImageNet

        _, evaluate = inception_transforms(cfg)
        dataset = image_folder(cfg, "train", evaluate)
        index = subset_indices(len(dataset), max_samples, seed)

        def loader_for(positions: torch.Tensor):
            return FolderLoader(Subset(dataset, positions.tolist()), batch_size, shuffle=False, drop_last=False,
                                seed=seed, num_workers=cfg.num_workers, device=device)

        return AnalysisData(loader_for(process_share(index, rank, world_size)), len(index),
                            (3, cfg.image_size, cfg.image_size), dtype, None, index, loader_for)
    # The run's own batch size: the smoke overlay's data depends on it; real data sets do not.
    plain = OmegaConf.merge(cfg, {"augment": False})
    data = build_data(plain, run_cfg.batch_size, run_cfg.batch_size, seed, torch.device("cpu"), smoke)
    train = data.train
    index = subset_indices(data.train_size, max_samples, seed)

    def loader_for(positions: torch.Tensor):
        if isinstance(train, TokenLoader):
            return TokenLoader([train.ids[i] for i in positions.tolist()], train.labels[positions], train.pad_id,
                               batch_size, shuffle=False, drop_last=False, device=device)
        return TensorLoader(train.inputs[positions], train.targets[positions], batch_size, shuffle=False,
                            drop_last=False, resize=train.resize, device=device)

    return AnalysisData(loader_for(process_share(index, rank, world_size)), len(index), data.input_shape, dtype,
                        data.fingerprint, index, loader_for)
