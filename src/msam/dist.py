"""torch.distributed for torchrun: process group, DDP wrapping, and every collective we use.

Under `torchrun --nproc-per-node=K`, each process trains on its shard of every mini-batch:
batch_size and method.m are global, each process runs mSAM with m / K micro-batches of its
batch_size / K samples, and only the final averaged direction is all-reduced (DDP's last
backward). Running BatchNorm statistics are averaged across processes once per step, so they
equal the single-process ones.

Every collective outside DDP's own goes through this file, on a tensor on the process's device
(NCCL takes CUDA tensors only; a CPU flag would stop a multi-GPU run at its first check). The
helpers refuse a tensor on another device with a clear error instead of a hang or an NCCL
trace. On CUDA the process group has a backend per device type (cpu:gloo,cuda:nccl by
default), so a CPU tensor handed to torch.distributed by a library still has a way through.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from msam.batchnorm_layers import tracking_batchnorms
from msam.errors import ConfigError

log = logging.getLogger("msam")
BACKENDS = ("auto", "nccl", "gloo")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # this process's device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def backend_for(device: torch.device, backend: str) -> str:
    """auto: NCCL for CUDA tensors with gloo beside it for CPU ones; gloo alone on a CPU. gloo on
    CUDA (slower, but it lets several processes share one GPU, e.g. to test DDP on one card)."""
    if device.type != "cuda":
        return "gloo"
    return {"auto": "cpu:gloo,cuda:nccl", "nccl": "nccl", "gloo": "gloo"}[backend]


def init_distributed(device: torch.device, backend: str = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment (or, in a submitit job with
    several SLURM tasks, the one submitit derives from SLURM's); one process otherwise. The
    context carries the process's own device (its GPU: LOCAL_RANK)."""
    if "WORLD_SIZE" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistContext(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = process_device(device, local_rank, backend)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend_for(device, backend))
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device)


def process_device(device: torch.device, local_rank: int, backend: str) -> torch.device:
    """Each process on a node gets its own GPU (LOCAL_RANK); CPU processes share the CPU. More
    processes than GPUs share them round-robin, which only gloo allows."""
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if local_rank >= count:
        if backend != "gloo":
            raise ConfigError(f"process {local_rank} of this node has no GPU of its own ({count} visible) and "
                              "NCCL needs one GPU per process; start one process per GPU, or set dist_backend=gloo")
        log.warning(f"process {local_rank} shares GPU {local_rank % count} (dist_backend=gloo)")
    torch.cuda.set_device(local_rank % count)
    return torch.device("cuda", local_rank % count)


def per_process(cfg, ctx: DistContext) -> dict:
    """Per-process batch and m; a global m or batch that K processes cannot share is an error,
    for the method of the whole run and for the one a switch hands over to."""
    k = ctx.world_size
    if cfg.batch_size % k != 0:
        raise ConfigError(f"batch_size={cfg.batch_size} must be divisible by the {k} processes")
    switch = cfg.get("switch")
    then = switch.get("then") if switch is not None else None
    for key, method in (("method", cfg.method), ("switch.then", then)):
        # vanilla has no micro-batches: plain data parallelism on any number of processes
        if method is not None and method.name != "vanilla" and method.m % k != 0:
            raise ConfigError(
                f"{key}.m={method.m} is the global number of micro-batches and must be divisible by the "
                f"{k} processes (each process perturbs with its own micro-batches; SAM on {k} devices is mSAM "
                f"with {key}.m={k})"
            )
    m_per_process = 1 if cfg.method.name == "vanilla" else cfg.method.m // k
    return {"processes": k, "effective_batch_size": cfg.batch_size, "batch_size_per_process": cfg.batch_size // k,
            "m_per_process": m_per_process}


def wrap(model: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    if not ctx.enabled:
        return model
    # broadcast_buffers=False: BatchNorm buffers are averaged once per step (average_batchnorm),
    # not overwritten by rank 0's at every forward.
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def check_device(tensors: list[torch.Tensor], device: torch.device) -> None:
    """A collective's tensors must live on the process's device (NCCL cannot move them)."""
    for tensor in tensors:
        if tensor.device.type != device.type or (device.index is not None and tensor.device.index != device.index):
            raise RuntimeError(f"msam.dist: a collective was handed a tensor on {tensor.device}, but this process "
                               f"communicates on {device}; create it on the process's device")


def all_reduce_(tensors: list[torch.Tensor], ctx: DistContext, op=dist.ReduceOp.SUM) -> None:
    """In place, over all processes (nothing with one process)."""
    if not ctx.enabled:
        return
    check_device(tensors, ctx.device)
    for tensor in tensors:
        dist.all_reduce(tensor, op=op)


def all_reduce_sum(tensors: list[torch.Tensor], ctx: DistContext) -> None:
    all_reduce_(tensors, ctx, dist.ReduceOp.SUM)


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """The mean over the processes of the default group, in place (the vmap implementation's
    direction, where no context is at hand: the tensors' own device is the process's)."""
    if not (dist.is_available() and dist.is_initialized()) or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])  # one collective, not one per parameter
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for tensor in tensors:
        tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()


def any_flag(flag: bool, ctx: DistContext) -> bool:
    """True on every process if it is true on any (one host sync: call it every few steps)."""
    if not ctx.enabled:
        return flag
    value = torch.tensor([float(flag)], device=ctx.device)
    all_reduce_([value], ctx, dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_object(value, ctx: DistContext):
    """Rank 0's value (any picklable object) on every process."""
    if not ctx.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0, device=ctx.device if ctx.device.type == "cuda" else None)
    return holder[0]


@torch.no_grad()
def average_batchnorm(model: torch.nn.Module, ctx: DistContext) -> None:
    """Mean of every process's running mean and variance (small buffers: one flat all-reduce)."""
    if not ctx.enabled:
        return
    buffers = [b for m in tracking_batchnorms(model) for b in (m.running_mean, m.running_var)]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])
    all_reduce_sum([flat], ctx)
    flat /= ctx.world_size
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.barrier()  # no process tears the group down while a peer still talks to it
        dist.destroy_process_group()
