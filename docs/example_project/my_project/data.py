"""A data set of one's own: a function that returns train/test images and labels as tensors.

Four classes of noisy 12x12 one-channel images (a horizontal bar, a vertical bar, a square
outline, a filled square), each at a random position, drawn from a seeded generator: the same
arguments give the same images on every call, as msam needs (a resumed run, every DDP process and
msam-sharpness call the function again).
"""

import torch


def draw(kind: int, side: int, gen: torch.Generator) -> torch.Tensor:
    image = torch.zeros(side, side)
    size = int(torch.randint(4, side // 2 + 2, (1,), generator=gen))
    top, left = (int(v) for v in torch.randint(0, side - size + 1, (2,), generator=gen))
    if kind == 0:
        image[top + size // 2, left:left + size] = 1.0
    elif kind == 1:
        image[top:top + size, left + size // 2] = 1.0
    elif kind == 2:
        image[top:top + size, left:left + size] = 1.0
        image[top + 1:top + size - 1, left + 1:left + size - 1] = 0.0
    else:
        image[top:top + size, left:left + size] = 1.0
    return image


def shapes(train_size: int, test_size: int, side: int = 12, noise: float = 0.3, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    n = train_size + test_size
    labels = torch.randint(0, 4, (n,), generator=gen)
    images = torch.stack([draw(int(k), side, gen) for k in labels]).unsqueeze(1)
    images = (images + noise * torch.randn(images.shape, generator=gen)).clamp(0.0, 1.0)
    return {"train_images": images[:train_size], "train_labels": labels[:train_size],
            "test_images": images[train_size:], "test_labels": labels[train_size:]}
