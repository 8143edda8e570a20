"""Loaders whose order depends only on (seed, epoch), so a resumed run sees the same batches.

TensorLoader keeps a whole data set as tensors on the device and augments there
(CIFAR, digits, synthetic); FolderLoader wraps torch's DataLoader for data that does not fit.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from msam.data.augment import RandomCropFlip

Augment = RandomCropFlip


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """One CPU random stream per (seed, epoch): data order and augmentation draw from it."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class TensorLoader:
    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        augment: Augment | None = None,
        resize: int | None = None,
        shard: tuple[int, int] = (0, 1),
        device: torch.device | None = None,
    ) -> None:
        self.inputs, self.targets = inputs, targets
        self.device = device  # where batches go (None: where the tensors are); resizing happens there
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.augment, self.resize = seed, augment, resize
        self.rank, self.world_size = shard

    def __len__(self) -> int:
        n = self.targets.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches, from batch start_batch on (a resumed epoch: the skipped batches
        still draw their augmentation, so the random stream is where it was)."""
        for k, batch in enumerate(self._all_batches(epoch)):
            if k >= start_batch:
                yield batch

    def _all_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches. With shard (rank, K), training batches (drop_last) are split into K
        contiguous shards and this process gets its own, after augmenting the whole batch, so K
        processes together see exactly the single-process batch; evaluation batches go round-robin."""
        gen = epoch_generator(self.seed, epoch)
        n = self.targets.shape[0]
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        order = order.to(self.targets.device)
        draws = self._epoch_draws(gen, n)
        for k in range(len(self)):
            index = order[k * self.batch_size : (k + 1) * self.batch_size]
            inputs, targets = self.inputs[index], self.targets[index]
            if self.augment is not None:
                start = k * self.batch_size
                inputs = self.augment.apply(inputs, [d[start:start + index.shape[0]] for d in draws])
            if self.world_size > 1:
                if not self.drop_last:
                    if k % self.world_size != self.rank:
                        continue
                else:
                    size = self.batch_size // self.world_size
                    inputs = inputs[self.rank * size:(self.rank + 1) * size]
                    targets = targets[self.rank * size:(self.rank + 1) * size]
            if self.device is not None:
                inputs = inputs.to(self.device, non_blocking=True)
                targets = targets.to(self.device, non_blocking=True)
            if self.resize is not None:
                inputs = torch.nn.functional.interpolate(inputs, size=(self.resize, self.resize),
                                                         mode="bilinear", align_corners=False)
            yield inputs, targets

    def _epoch_draws(self, gen: torch.Generator, n: int) -> list[torch.Tensor]:
        """Every batch's augmentation draws, drawn on the CPU in batch order (the stream a batch at
        a time would give) and copied to the device in one go: no host sync inside the epoch."""
        if self.augment is None:
            return []
        sizes = [min(self.batch_size, n - k * self.batch_size) for k in range(len(self))]
        per_batch = [self.augment.draw(size, gen) for size in sizes]
        return [torch.cat(parts).to(self.targets.device, non_blocking=True) for parts in zip(*per_batch)]


class SeededSamples(Dataset):
    """Each sample's random transform draws from a stream seeded by (seed, epoch, index), so
    augmentation does not depend on worker count, process or what ran before."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
            return self.dataset[index]


class FolderLoader:
    """torch DataLoader, rebuilt per epoch with its order seeded by (seed, epoch)."""

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, drop_last: bool,
                 seed: int, num_workers: int, device: torch.device, shard: tuple[int, int] = (0, 1)) -> None:
        self.dataset, self.batch_size, self.shuffle = SeededSamples(dataset, seed), batch_size, shuffle
        self.drop_last, self.seed, self.num_workers, self.device = drop_last, seed, num_workers, device
        self.rank, self.world_size = shard

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches from start_batch on; skipped batches are not loaded (each sample's
        transform has its own seed, so skipping changes nothing that follows)."""
        gen = epoch_generator(self.seed, epoch)
        self.dataset.epoch = epoch
        batch_size, sampler = self.batch_size, None
        if self.world_size > 1 and self.drop_last:  # training: each process loads its share
            batch_size = self.batch_size // self.world_size
            sampler = DistributedSampler(self.dataset, self.world_size, self.rank, shuffle=self.shuffle,
                                         seed=self.seed, drop_last=True)
            sampler.set_epoch(epoch)
        elif self.shuffle:
            sampler = RandomSampler(self.dataset, generator=gen)
        else:
            sampler = SequentialSampler(self.dataset)
        order = list(sampler)[start_batch * batch_size:]  # drawn first, whether or not we skip
        loader = DataLoader(
            self.dataset, batch_size=batch_size, sampler=order, drop_last=self.drop_last,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda", generator=gen,
            persistent_workers=False,
        )
        for k, (inputs, targets) in enumerate(loader):
            if self.world_size > 1 and not self.drop_last and k % self.world_size != self.rank:
                continue  # evaluation: batches go round-robin over the processes
            yield inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
