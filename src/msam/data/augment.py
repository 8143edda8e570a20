"""Batched augmentation on the device: random crop with zero padding and horizontal flip.

The random draws (shifts, flips) come from a CPU generator, so augmentation is the same on every
device; the loader draws a whole epoch's worth at its start and copies them to the device once
(a per-batch copy of CPU draws would be a host synchronisation at every step on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RandomCropFlip:
    """Shifts each image by up to `padding` pixels (zero padding) and flips half of them."""

    padding: int
    flip: bool

    def draw(self, n: int, gen: torch.Generator) -> list[torch.Tensor]:
        """The random numbers of one batch of n images, on the CPU, in a fixed order."""
        draws = []
        if self.padding > 0:
            draws += [torch.randint(0, 2 * self.padding + 1, (n,), generator=gen),
                      torch.randint(0, 2 * self.padding + 1, (n,), generator=gen)]
        if self.flip:
            draws.append((torch.rand(n, generator=gen) < 0.5).long())
        return draws

    def apply(self, images: torch.Tensor, draws: list[torch.Tensor]) -> torch.Tensor:
        """Augment with draws already on the images' device."""
        n, _, height, width = images.shape
        device = images.device
        if self.padding > 0:
            dy, dx = draws[0], draws[1]
            padded = torch.nn.functional.pad(images, (self.padding,) * 4)
            rows = (dy[:, None] + torch.arange(height, device=device)[None, :])[:, :, None]
            cols = (dx[:, None] + torch.arange(width, device=device)[None, :])[:, None, :]
            batch = torch.arange(n, device=device)[:, None, None]
            images = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
        if self.flip:
            flipped = draws[-1].bool()
            images = torch.where(flipped[:, None, None, None], images.flip(3), images)
        return images.contiguous()

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One batch on its own (draws and applies; the loader draws per epoch instead)."""
        return self.apply(images, [d.to(images.device) for d in self.draw(images.shape[0], gen)])


def random_crop_flip(padding: int, flip: bool) -> RandomCropFlip:
    return RandomCropFlip(padding, flip)
