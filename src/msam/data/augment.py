"""Batched augmentation on the device: random crop with zero padding and horizontal flip."""

from __future__ import annotations

import torch


def random_crop_flip(padding: int, flip: bool):
    """An augmentation that shifts each image by up to `padding` pixels and flips half of them."""

    def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, _, height, width = images.shape
        device = images.device
        if padding > 0:
            padded = torch.nn.functional.pad(images, (padding,) * 4)
            dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen).to(device)
            dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen).to(device)
            rows = (dy[:, None] + torch.arange(height, device=device)[None, :])[:, :, None]
            cols = (dx[:, None] + torch.arange(width, device=device)[None, :])[:, None, :]
            batch = torch.arange(n, device=device)[:, None, None]
            images = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
        if flip:
            flipped = torch.rand(n, generator=gen).to(device) < 0.5
            images = torch.where(flipped[:, None, None, None], images.flip(3), images)
        return images.contiguous()

    return augment
