"""Splitting a batch into equal micro-batches; inputs are a tensor or a dict of tensors."""

from __future__ import annotations

from typing import Any

import torch

Inputs = torch.Tensor | dict[str, torch.Tensor]


def batch_size_of(inputs: Inputs) -> int:
    if isinstance(inputs, dict):
        return next(iter(inputs.values())).shape[0]
    return inputs.shape[0]


def split_batch(batch: tuple[Inputs, torch.Tensor], m: int) -> list[tuple[Any, torch.Tensor]]:
    """Split (inputs, targets) into m disjoint micro-batches of equal size along dim 0."""
    inputs, targets = batch
    size = batch_size_of(inputs)
    if size % m != 0:
        raise ValueError(f"batch of {size} samples cannot be split into {m} equal micro-batches")
    if m == 1:
        return [batch]
    target_chunks = targets.chunk(m)
    if isinstance(inputs, dict):
        chunks = {key: value.chunk(m) for key, value in inputs.items()}
        input_chunks = [{key: chunks[key][j] for key in inputs} for j in range(m)]
    else:
        input_chunks = inputs.chunk(m)
    return list(zip(input_chunks, target_chunks))
