"""A loader for tokenized text: whole data set in memory, batches padded to their longest sequence.

Same contract as TensorLoader (loaders.py): the order depends only on (seed, epoch); under K
processes a training batch is padded as a whole, then split into K contiguous shards (so K
processes see exactly the single-process batch), evaluation batches go round-robin.
"""

from __future__ import annotations

from typing import Iterator

import torch

from msam.data.loaders import epoch_generator


class TokenLoader:
    def __init__(self, ids: list[list[int]], labels: torch.Tensor, pad_id: int, batch_size: int, shuffle: bool,
                 drop_last: bool, device: torch.device, seed: int = 0, shard: tuple[int, int] = (0, 1)) -> None:
        self.ids, self.labels, self.pad_id = ids, labels, pad_id
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.device, self.seed = device, seed
        self.rank, self.world_size = shard

    def __len__(self) -> int:
        n = len(self.ids)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def pad(self, index: list[int]) -> dict[str, torch.Tensor]:
        length = max(len(self.ids[i]) for i in index)
        input_ids = torch.full((len(index), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(index), length), dtype=torch.long)
        for row, i in enumerate(index):
            input_ids[row, :len(self.ids[i])] = torch.tensor(self.ids[i])
            attention_mask[row, :len(self.ids[i])] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[dict, torch.Tensor]]:
        n = len(self.ids)
        order = torch.randperm(n, generator=epoch_generator(self.seed, epoch)) if self.shuffle else torch.arange(n)
        for k in range(start_batch, len(self)):
            index = order[k * self.batch_size:(k + 1) * self.batch_size].tolist()
            if self.world_size > 1 and not self.drop_last and k % self.world_size != self.rank:
                continue
            inputs, targets = self.pad(index), self.labels[index]
            if self.world_size > 1 and self.drop_last:
                size = self.batch_size // self.world_size
                share = slice(self.rank * size, (self.rank + 1) * size)
                inputs, targets = {key: value[share] for key, value in inputs.items()}, targets[share]
            yield {key: value.to(self.device) for key, value in inputs.items()}, targets.to(self.device)
