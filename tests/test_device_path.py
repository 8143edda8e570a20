"""What the GPU path does differently from the CPU one, emulated on the CPU: collectives on the
process's device (NCCL takes CUDA tensors only), no host copy inside an epoch, synchronised
timers, fused attention left as the user set it, and m checked for every method a run uses."""

import ast
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from msam import dist, timing
from msam.data.augment import random_crop_flip
from msam.data.loaders import TensorLoader
from msam.errors import ConfigError

SRC = Path(__file__).resolve().parents[1] / "src" / "msam"
COLLECTIVES = {"all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter", "broadcast", "reduce",
               "all_to_all", "gather", "scatter", "all_reduce_coalesced", "barrier", "broadcast_object_list",
               "all_gather_object"}


def collective_calls(path: Path) -> list[str]:
    """Calls like dist.all_reduce(...) / torch.distributed.broadcast(...) in a source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in COLLECTIVES:
            base = ast.unparse(node.func.value)
            if base in ("dist", "torch_dist", "torch.distributed"):
                found.append(f"{path.relative_to(SRC)}:{node.lineno} {base}.{node.func.attr}")
    return found


def test_every_collective_goes_through_dist_py():
    """Outside dist.py a collective could be handed a CPU tensor on an NCCL group (the multi-GPU
    stop at step 10 was a CPU flag all-reduced in engine.py)."""
    stray = [call for path in sorted(SRC.rglob("*.py")) if path.name != "dist.py"
             for call in collective_calls(path) if not call.startswith("dist.py")]
    # msam.dist's own helpers are called as dist.all_reduce_(...) etc., which are not torch's names
    assert stray == []


def test_a_collective_on_a_tensor_of_another_device_is_refused_before_it_runs(monkeypatch):
    """The helpers check the device first: a clear error instead of an NCCL failure or a hang.
    (The meta device stands in for the process's GPU; nothing reaches torch.distributed.)"""
    called = []
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda *a, **k: called.append(a))
    ctx = dist.DistContext(rank=0, world_size=2, device=torch.device("meta"))
    for collective in (lambda t: dist.all_reduce_sum([t], ctx),
                       lambda t: dist.all_reduce_([t], ctx, torch.distributed.ReduceOp.MAX)):
        with pytest.raises(RuntimeError, match=r"tensor on cpu, but this process communicates on meta"):
            collective(torch.zeros(3))
    assert called == []
    dist.all_reduce_sum([torch.zeros(3, device="meta")], ctx)  # the right device goes through
    assert len(called) == 1


def test_the_stop_flag_is_created_on_the_process_s_device(monkeypatch):
    """What `stop_requested` all-reduces every preemption_check_every steps."""
    devices = []

    def record(tensor, op=None):
        devices.append(tensor.device)
        raise KeyboardInterrupt  # a meta flag cannot be read back; the device is what we check

    monkeypatch.setattr(torch.distributed, "all_reduce", record)
    with pytest.raises(KeyboardInterrupt):
        dist.any_flag(True, dist.DistContext(rank=0, world_size=2, device=torch.device("meta")))
    assert devices == [torch.device("meta")]


def test_the_auto_backend_has_a_backend_for_each_device_type():
    assert dist.backend_for(torch.device("cuda", 0), "auto") == "cpu:gloo,cuda:nccl"
    assert dist.backend_for(torch.device("cuda", 0), "gloo") == "gloo"
    assert dist.backend_for(torch.device("cpu"), "auto") == "gloo"


def test_switch_then_m_is_checked_against_the_processes():
    """Under K processes each runs m // K micro-batches: m=2 on 4 processes would become 0 at the
    switch epoch (or m=6 on 4 silently 1 each, i.e. m=4)."""
    cfg = OmegaConf.create({"method": {"name": "vanilla", "m": 1}, "batch_size": 32,
                            "switch": {"then": {"name": "msam", "m": 2}, "fraction": 0.5}})
    with pytest.raises(ConfigError, match="switch.then.m=2 is the global number of micro-batches"):
        dist.per_process(cfg, dist.DistContext(0, 4, 0))
    cfg.switch.then.m = 8
    assert dist.per_process(cfg, dist.DistContext(0, 4, 0))["m_per_process"] == 1  # vanilla's, before the switch


class CrossDeviceCopies(TorchDispatchMode):
    """Counts ops that take a CPU tensor and return one on another device (host-to-device copies)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.device.type for a in args if isinstance(a, torch.Tensor)}
        outputs = {o.device.type for o in (out if isinstance(out, (tuple, list)) else [out])
                   if isinstance(o, torch.Tensor)}
        if "cpu" in inputs and outputs - {"cpu"}:
            self.count += 1
        return out


def test_device_augmentation_copies_nothing_from_the_host_inside_an_epoch():
    """The data set lives on the device (meta stands in for a GPU): an epoch's random draws go over
    once, before its first batch; a per-batch copy would be a host sync at every step on CUDA."""
    inputs = torch.zeros(70, 3, 8, 8, device="meta")
    targets = torch.zeros(70, dtype=torch.long, device="meta")
    loader = TensorLoader(inputs, targets, 16, shuffle=True, drop_last=True, seed=3, augment=random_crop_flip(2, True))
    copies = CrossDeviceCopies()
    with copies:
        batches = loader.epoch(0)
        next(batches)
        before_first = copies.count
        rest = sum(1 for _ in batches)
    assert rest == len(loader) - 1 >= 3
    assert copies.count == before_first


def test_epoch_draws_are_the_per_batch_stream():
    """Drawing an epoch's augmentation at once gives the batches drawing one at a time gives
    (so runs and checkpoints from before keep their data)."""
    augment = random_crop_flip(2, True)
    images, labels = torch.randn(70, 3, 8, 8), torch.arange(70)
    loader = TensorLoader(images, labels, 16, shuffle=True, drop_last=False, seed=3, augment=augment)
    gen = torch.Generator().manual_seed(3 * 1_000_003 + 1)
    order = torch.randperm(70, generator=gen)
    for k, (x, y) in enumerate(loader.epoch(1)):
        index = order[k * 16:(k + 1) * 16]
        assert torch.equal(y, labels[index])
        assert torch.equal(x, augment(images[index], gen))


def test_timers_synchronise_the_device(monkeypatch):
    """Sharpness' cost ratio and the bench read their clocks only after the device finished."""
    from msam.bench import time_steps
    from msam.methods.vanilla import Vanilla
    from msam.sharpness.measure import seconds_per_gradient

    synced = []
    monkeypatch.setattr(timing, "synchronize", lambda device: synced.append(device))
    model = nn.Linear(4, 3)
    batch = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    seconds_per_gradient(model, [batch], lambda logits, y: nn.functional.cross_entropy(logits, y, reduction="none"),
                         passes=1)
    assert len(synced) == 2
    time_steps(model, {"vanilla": Vanilla()}, batch, torch.device("cpu"), repeats=2, warmup=1)
    assert len(synced) == 2 + 2 * 3


def test_vmap_leaves_fused_attention_as_the_model_had_it():
    """vmap needs the unfused attention; the model's own forward (evaluation, the loop) keeps SDPA."""
    from msam.methods.msam_vmap import SAMVmap

    class Attention(nn.Module):
        fused_attn = True

        def __init__(self):
            super().__init__()
            self.proj, self.seen = nn.Linear(6, 6), []

        def forward(self, x):
            self.seen.append(self.fused_attn)
            return self.proj(x)

    model = nn.Sequential(Attention(), nn.Linear(6, 3))
    SAMVmap(m=2, rho=0.1, eps=1e-12)(
        model, lambda logits, y: nn.functional.cross_entropy(logits, y, reduction="none"),
        (torch.randn(8, 6), torch.randint(0, 3, (8,))))
    assert model[0].seen and not any(model[0].seen)  # off inside the vmapped passes
    assert model[0].fused_attn is True  # restored


def test_the_cost_unit_is_the_median_pass_so_one_slow_pass_does_not_move_it(monkeypatch):
    """Other work on the machine slowing one timed forward+backward must not make Hessian-vector
    products look cheap: the unit is the median of the passes."""
    import time

    from msam.sharpness import measure

    calls = {"n": 0}

    def first_pass_slow(model, inputs):
        calls["n"] += 1
        if calls["n"] == 1:
            time.sleep(0.3)
        return model(inputs)

    monkeypatch.setattr(measure, "model_output", first_pass_slow)
    model = nn.Linear(4, 3)
    batch = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    seconds = measure.seconds_per_gradient(model, [batch], lambda z, y: nn.functional.cross_entropy(
        z, y, reduction="none"), passes=3)
    assert calls["n"] == 3 and seconds < 0.1
