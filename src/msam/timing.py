"""Wall-clock timing of device work: CUDA kernels run asynchronously, so a timer read without
synchronising measures the launch, not the work."""

from __future__ import annotations

import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """perf_counter() once the device has finished everything queued so far."""
    synchronize(device)
    return time.perf_counter()
