"""torch.distributed for torchrun: process group, DDP wrapping, and the few collectives we use.

Under `torchrun --nproc-per-node=K`, each process trains on its shard of every mini-batch:
batch_size and method.m are global, each process runs mSAM with m / K micro-batches of its
batch_size / K samples, and only the final averaged direction is all-reduced (DDP's last
backward). Running BatchNorm statistics are averaged across processes once per step, so they
equal the single-process ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm

from msam.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun describes in the environment (or, in a submitit job with
    several SLURM tasks, the one submitit derives from SLURM's); one process otherwise."""
    if "WORLD_SIZE" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def process_device(device: torch.device, ctx: DistContext) -> torch.device:
    """Each process on a node gets its own GPU (LOCAL_RANK); CPU processes share the CPU."""
    if device.type == "cuda" and ctx.enabled:
        torch.cuda.set_device(ctx.local_rank)
        return torch.device("cuda", ctx.local_rank)
    return device


def per_process(cfg, ctx: DistContext) -> dict:
    """Per-process batch and m; a global m or batch that K processes cannot share is an error."""
    k = ctx.world_size
    if cfg.method.name == "vanilla":  # no micro-batches: plain data parallelism
        if cfg.batch_size % k != 0:
            raise ConfigError(f"batch_size={cfg.batch_size} must be divisible by the {k} processes")
        return {"processes": k, "effective_batch_size": cfg.batch_size, "batch_size_per_process": cfg.batch_size // k,
                "m_per_process": 1}
    if cfg.method.m % k != 0:
        raise ConfigError(
            f"method.m={cfg.method.m} is the global number of micro-batches and must be divisible by the "
            f"{k} processes (each process perturbs with its own micro-batches; SAM on {k} devices is mSAM "
            f"with method.m={k})"
        )
    if cfg.batch_size % k != 0:
        raise ConfigError(f"batch_size={cfg.batch_size} must be divisible by the {k} processes")
    return {"processes": k, "effective_batch_size": cfg.batch_size, "batch_size_per_process": cfg.batch_size // k,
            "m_per_process": cfg.method.m // k}


def wrap(model: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    if not ctx.enabled:
        return model
    # broadcast_buffers=False: BatchNorm buffers are averaged once per step (average_batchnorm),
    # not overwritten by rank 0's at every forward.
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def all_reduce_sum(tensors: list[torch.Tensor], ctx: DistContext) -> None:
    if ctx.enabled:
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


@torch.no_grad()
def average_batchnorm(model: torch.nn.Module, ctx: DistContext) -> None:
    """Mean of every process's running mean and variance (small buffers: one flat all-reduce)."""
    if not ctx.enabled:
        return
    buffers = [b for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats
               for b in (m.running_mean, m.running_var)]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.barrier()  # no process tears the group down while a peer still talks to it
        dist.destroy_process_group()
