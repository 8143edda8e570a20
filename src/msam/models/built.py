"""What msam checks of a model of the user's own (model._target_) once it is built.

The built-in architectures are checked from their config before anything is built (image size
against patches and pooling, channels, BatchNorm's values per channel: msam.models.check_input_size).
A model of the user's own says nothing of its architecture, so it is run instead: one forward pass
on zeros shaped like the data set's images in eval mode, and one in training mode on a micro-batch
of the smallest size training will give it. Each failure is one line. Nothing about the model
changes: no gradients, BatchNorm's running statistics frozen, the random state restored.
"""

from __future__ import annotations

import torch
from torch import nn

from msam.errors import ConfigError
from msam.methods.batchnorm import running_stats_frozen


def first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def check_built_model(model: nn.Module, name: str, num_classes: int, input_shape: tuple[int, ...],
                      micro_batch: int, device: torch.device, channels_last: bool = False) -> None:
    """The model takes images of input_shape, gives num_classes logits per image, and trains on
    micro-batches of micro_batch images (BatchNorm in training mode needs more than one value per
    channel). With channels_last the zeros are in that memory format, as the batches will be."""
    memory_format = torch.channels_last if channels_last and len(input_shape) == 3 else torch.contiguous_format
    was_training = model.training
    shape = tuple(input_shape)
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            model.eval()
            try:
                logits = model(torch.zeros((2, *shape), device=device).to(memory_format=memory_format))
            except Exception as error:  # noqa: BLE001 - whatever the user's forward raises is bad input here
                raise ConfigError(f"model={name} cannot take this data set's images of shape {list(shape)}: "
                                  f"{first_line(error)}") from None
            if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (2, num_classes):
                got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ConfigError(f"model={name} must return logits of shape [batch, {num_classes}] (the data set's "
                                  f"num_classes) for images of shape {list(shape)}; it returned {got}")
            model.train()
            with running_stats_frozen(model):
                try:
                    model(torch.zeros((micro_batch, *shape), device=device).to(memory_format=memory_format))
                except Exception as error:  # noqa: BLE001
                    raise ConfigError(f"model={name} fails in training mode on micro-batches of {micro_batch} "
                                      f"image(s) (batch_size / method.m, per process): {first_line(error)}; use "
                                      "larger micro-batches") from None
    finally:
        model.train(was_training)
