"""glibc malloc tuning for CPU training (cpu_allocator in conf/).

glibc serves big blocks with mmap and trims the heap top back to the OS as soon as it is free,
with thresholds it adapts on its own. A training step allocates and frees the same large
tensors every time (mSAM's vmap implementation: m stacked weight sets), so memory goes back to
the OS and is faulted in again, zeroed, at every step. Raising both thresholds far above a step's largest block keeps the memory in the process
(MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ do the same from the environment, but only
at process start). Linux with glibc only; elsewhere a no-op that says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger("msam")

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3


def tune_glibc_malloc(mmap_threshold: int, trim_threshold: int) -> bool:
    """Set both thresholds with mallopt; True where glibc accepted them."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        log.info("cpu_allocator.tune: not glibc, left as it is")
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    accepted = bool(libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, int(trim_threshold)))
    log.info(f"cpu_allocator.tune: glibc mmap threshold {mmap_threshold}, trim threshold {trim_threshold}"
             f" ({'set' if accepted else 'refused by glibc'})")
    return accepted


def apply(cfg) -> bool:
    """Apply cfg.cpu_allocator (a no-op unless cfg.cpu_allocator.tune)."""
    if not cfg.tune:
        return False
    return tune_glibc_malloc(cfg.mmap_threshold, cfg.trim_threshold)
