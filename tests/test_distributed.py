"""DDP on CPU (gloo, 2 processes): K processes with m/K each equal one process with m and the per-device perturbation."""

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from msam import dist
from msam.methods.msam_loop import SAMLoop
from msam.methods.msam_vmap import SAMVmap
from msam.methods.msam_vmap_ascent import SAMVmapAscent
from msam.methods.reweight import GibbsReweighting

WORLD = 2
STEPS = 3


def per_sample_ce(logits, targets):
    return nn.functional.cross_entropy(logits, targets, reduction="none")


def tiny_bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()


def global_batches(n=16):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen))
            for _ in range(STEPS)]


def train(model, method, batches, ctx=dist.DistContext()):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for inputs, targets in batches:
        if ctx.enabled:  # this process's contiguous share of the global batch
            size = len(targets) // ctx.world_size
            inputs = inputs[ctx.rank * size:(ctx.rank + 1) * size]
            targets = targets[ctx.rank * size:(ctx.rank + 1) * size]
        method(model, per_sample_ce, (inputs, targets))
        dist.average_batchnorm(model, ctx)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return dist.unwrap(model).state_dict()


def fixed_rademacher(tensor):
    """The same probe for every micro-batch and process (it depends on the shape only), so that
    DDP and one process can be compared exactly; in training every draw is fresh."""
    gen = torch.Generator().manual_seed(sum(tensor.shape) * 1000 + tensor.dim())
    return torch.randint(0, 2, tensor.shape, generator=gen).to(tensor.dtype) * 2 - 1


def rwsam(m):
    return SAMLoop(m=m, rho=0.3, eps=1e-12, name="rwsam", reweighting=GibbsReweighting.defaults(lam=3.0, delta=1e-6))


def rwsam_exact(m):
    return SAMLoop(m=m, rho=0.3, eps=1e-12, name="rwsam",
                   reweighting=GibbsReweighting.defaults(lam=3.0, norm_estimator="exact"))


def build_implementation(variant, m):
    if variant == "vmap":
        return SAMVmap(m=m, rho=0.3, eps=1e-12)
    if variant == "vmap_ascent":
        return SAMVmapAscent(m=m, rho=0.3, eps=1e-12)
    if variant == "rwsam":
        return rwsam(m)
    if variant == "rwsam_exact":
        return rwsam_exact(m)
    if variant in ("compiled_loop", "compiled_vmap"):  # compile.step: the whole step under torch.compile
        from msam.methods.compiled import CompiledStep

        eager = SAMLoop(m=m, rho=0.3, eps=1e-12) if variant == "compiled_loop" else SAMVmap(m=m, rho=0.3, eps=1e-12)
        return CompiledStep(eager)
    return SAMLoop(m=m, rho=0.3, eps=1e-12)


def worker(rank, port, m_per_process, variant, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch_dist.init_process_group("gloo")
    ctx = dist.DistContext(rank, WORLD, 0)
    import msam.methods.msam_loop as loop

    if variant == "ascent_all_reduced":  # the bug the equivalence test must catch
        local = loop.gradients

        def averaged(loss, params):
            grads = local(loss, params)
            for g in grads:
                torch_dist.all_reduce(g)
                g /= WORLD
            return grads

        loop.gradients = averaged
    if variant == "rwsam":
        import msam.methods.reweight as reweight

        reweight.rademacher_like = fixed_rademacher
    model = dist.wrap(tiny_bn_net(), ctx, torch.device("cpu"))
    reductions = []

    def counting_allreduce(state, bucket):
        reductions.append(bucket.index())
        return allreduce_hook(None, bucket)

    model.register_comm_hook(None, counting_allreduce)
    state = train(model, build_implementation(variant, m_per_process), global_batches(), ctx)
    if rank == 0:
        torch.save({"state": state, "reductions": torch.tensor(len(reductions))}, out_path)
    torch_dist.barrier()
    # Leave without tearing gloo down: its worker threads can abort a process (SIGABRT,
    # "terminate called without an active exception") whose peer has already gone, which a
    # loaded CI machine made happen. The result is on disk and both ranks passed the barrier.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ddp(tmp_path, m_per_process, variant="as_shipped"):
    """Final weights and BN buffers of rank 0, and how many bucket all-reduces it made."""
    out = tmp_path / f"ddp_{m_per_process}_{variant}.pt"
    mp.spawn(worker, args=(free_port(), m_per_process, variant, str(out)), nprocs=WORLD, join=True)
    result = torch.load(out, weights_only=True)
    return result["state"], int(result["reductions"])


def single_process(m):
    return train(tiny_bn_net(), SAMLoop(m=m, rho=0.3, eps=1e-12), global_batches())


def max_diff(a, b):
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.parametrize("m_per_process", [1, 2])
def test_ddp_msam_equals_single_process_msam_with_the_global_m(tmp_path, m_per_process):
    """m_per_process=1 is SAM on each device, i.e. mSAM with m = K; 2 is mSAM with m = 4."""
    ddp, _ = run_ddp(tmp_path, m_per_process)
    single = single_process(WORLD * m_per_process)
    assert max_diff(ddp, single) < 1e-10  # weights and BatchNorm running statistics
    if m_per_process == 2:
        assert max_diff(single, single_process(1)) > 1e-4  # m matters, so the check has teeth


@pytest.mark.parametrize("variant", ["vmap", "vmap_ascent"])
def test_ddp_with_the_vmap_implementations_equals_single_process_msam(tmp_path, variant):
    ddp, reductions = run_ddp(tmp_path, 2, variant)
    # vmap all-reduces the direction itself; vmap_ascent's last descent backward does, once per
    # step (averaging is linear: a reduction after every pass would give the same weights)
    assert reductions == (0 if variant == "vmap" else STEPS)
    assert max_diff(ddp, single_process(WORLD * 2)) < 1e-10


@pytest.mark.parametrize("variant", ["compiled_loop", "compiled_vmap"])
def test_ddp_with_the_compiled_step_equals_single_process_msam(tmp_path, variant):
    """compile.step under DDP: each process compiles its own step (dynamo runs the all-reduce
    of DDP's backward eagerly, in a graph break), and 2 processes with m = 2 each train what one
    eager process with m = 4 trains, to float64 rounding."""
    ddp, _ = run_ddp(tmp_path, 2, variant)
    assert max_diff(ddp, single_process(WORLD * 2)) < 1e-10


def test_ddp_rwsam_reweights_each_device_s_share(tmp_path, monkeypatch):
    """RW-SAM under K processes follows mSAM's per-device rule: each process weighs and perturbs
    with its own share of the batch, i.e. RW-SAM with m = K micro-batches in one process."""
    import msam.methods.reweight as reweight

    monkeypatch.setattr(reweight, "rademacher_like", fixed_rademacher)
    ddp, _ = run_ddp(tmp_path, 1, "rwsam")
    assert max_diff(ddp, train(tiny_bn_net(), rwsam(WORLD), global_batches())) < 1e-10
    assert max_diff(ddp, train(tiny_bn_net(), rwsam(1), global_batches())) > 1e-6


def test_ddp_rwsam_with_exact_norms_weighs_each_device_s_share(tmp_path):
    """norm_estimator=exact under DDP: each process computes its own samples' norms (no
    communication), so 2 processes train what RW-SAM with m = 2 in one process trains."""
    ddp, _ = run_ddp(tmp_path, 1, "rwsam_exact")
    assert max_diff(ddp, train(tiny_bn_net(), rwsam_exact(WORLD), global_batches())) < 1e-10
    assert max_diff(ddp, train(tiny_bn_net(), rwsam_exact(1), global_batches())) > 1e-6


def test_only_the_final_direction_is_all_reduced(tmp_path):
    """One all-reduce per step (the tiny model is one DDP bucket). Without no_sync() every
    perturbed pass would be reduced as well (or DDP would stop on an unfinished reduction)."""
    _, reductions = run_ddp(tmp_path, 2)
    assert reductions == STEPS


def test_an_all_reduced_ascent_gradient_would_be_caught(tmp_path):
    """The ascent gradient stays on its device (torch.autograd.grad inside no_sync()); if it were
    averaged across devices, each device would perturb with the shared gradient: not mSAM."""
    synced, _ = run_ddp(tmp_path, 2, "ascent_all_reduced")
    assert max_diff(synced, single_process(WORLD * 2)) > 1e-6


def test_global_m_must_be_divisible_by_the_processes():
    from omegaconf import OmegaConf

    from msam.errors import ConfigError

    cfg = OmegaConf.create({"method": {"name": "msam", "m": 3}, "batch_size": 12})
    with pytest.raises(ConfigError, match="method.m=3 is the global number of micro-batches"):
        dist.per_process(cfg, dist.DistContext(0, 2, 0))
    assert dist.per_process(OmegaConf.create({"method": {"name": "msam", "m": 4}, "batch_size": 16}),
                            dist.DistContext(0, 2, 0)) == {
        "processes": 2, "effective_batch_size": 16, "batch_size_per_process": 8, "m_per_process": 2}
    # vanilla has no micro-batches: plain data parallelism on any number of processes
    vanilla = OmegaConf.create({"method": {"name": "vanilla", "m": 1}, "batch_size": 12})
    assert dist.per_process(vanilla, dist.DistContext(0, 3, 0))["batch_size_per_process"] == 4


def test_torchrun_trains_one_run_written_once(tmp_path):
    # impl pinned: with auto, two separately started runs may time the implementations differently
    common = ["method=msam", "method.m=4", "method.impl=loop", "epochs=1", "device=cpu", "log_every_steps=0"]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    result = subprocess.run(
        [torchrun, "--nproc-per-node=2", "--master-port", str(free_port()), "-m", "msam.train", *common,
         f"paths.runs={tmp_path}/ddp"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = list((tmp_path / "ddp").glob("*/summary.json"))
    assert len(summaries) == 1
    import json

    summary = json.loads(summaries[0].read_text())
    assert summary["derived"]["processes"] == 2 and summary["derived"]["m_per_process"] == 2
    assert summary["derived"]["batch_size_per_process"] == 32
    # the same run in one process: the same updates up to float32 summation order
    subprocess.run([sys.executable, "-m", "msam.train", *common, f"paths.runs={tmp_path}/single"],
                   capture_output=True, text=True, timeout=300, cwd=tmp_path, check=True)
    single_dir = next((tmp_path / "single").glob("*/last.pt")).parent
    assert single_dir.name == summaries[0].parent.name  # the process count is not part of the run's identity
    a = torch.load(summaries[0].parent / "last.pt", weights_only=True)["model"]
    b = torch.load(single_dir / "last.pt", weights_only=True)["model"]
    assert max_diff(a, b) < 1e-3
    assert abs(summary["test_acc"] - json.loads((single_dir / "summary.json").read_text())["test_acc"]) < 1.0
