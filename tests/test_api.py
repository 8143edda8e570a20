"""msam.MSAM in a hand-written loop: the same weights as msam-train, DDP, bf16, misuse."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import nn

import msam
from msam import engine, runs

REPO = Path(__file__).resolve().parents[1]


def per_sample_ce(logits, targets):
    return nn.functional.cross_entropy(logits, targets, reduction="none")


def test_a_hand_written_loop_gives_msam_train_s_weights_bit_for_bit(make_cfg):
    """SGD with momentum and weight decay, one-cycle schedule, mSAM m = 8 on digits, 2 epochs."""
    from msam.data import build_data
    from msam.models.small_cnn import small_cnn

    cfg = make_cfg("method=msam", "method.m=8", "method.impl=loop", "epochs=2")
    engine.train(cfg)
    reference = torch.load(runs.run_dir_for(cfg) / "last.pt", weights_only=True)["model"]

    torch.manual_seed(0)
    data = build_data(cfg.dataset, 64, 512, 0, torch.device("cpu"), None)  # msam's digits loader: the same batches
    model = small_cnn(1, 10, 16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=2 * len(data.train),
                                                    pct_start=0.05, div_factor=25.0, final_div_factor=1e4,
                                                    cycle_momentum=False)
    rule = msam.MSAM(model, m=8, rho=0.05)
    for epoch in range(2):
        model.train()
        for inputs, targets in data.train.epoch(epoch):
            rule(per_sample_ce, inputs, targets)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    ours = model.state_dict()
    assert set(ours) == set(reference)
    assert all(torch.equal(ours[k], reference[k]) for k in reference)  # weights and BatchNorm buffers


def tiny_bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()


def batches():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (16,), generator=gen))
            for _ in range(3)]


def train_api(model, m, rank=0, world=1, impl="loop"):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    rule = msam.MSAM(model, m=m, rho=0.3, impl=impl)
    for inputs, targets in batches():
        size = len(targets) // world
        rule(per_sample_ce, inputs[rank * size:(rank + 1) * size], targets[rank * size:(rank + 1) * size])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {k: v.clone() for k, v in (model.module if world > 1 else model).state_dict().items()}


@pytest.mark.parametrize("impl", ["vmap", "vmap_ascent"])
def test_each_api_implementation_trains_as_the_loop(impl):
    loop = train_api(tiny_bn_net(), 4)
    other = train_api(tiny_bn_net(), 4, impl=impl)
    assert max((other[k] - loop[k]).abs().max().item() for k in loop) < 1e-10  # weights and BN buffers
    assert type(msam.MSAM(tiny_bn_net(), m=4, impl=impl).method).__name__ == {"vmap": "SAMVmap",
                                                                            "vmap_ascent": "SAMVmapAscent"}[impl]


def ddp_worker(rank, port, impl, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch_dist.init_process_group("gloo")
    model = nn.parallel.DistributedDataParallel(tiny_bn_net(), broadcast_buffers=False)
    state = train_api(model, 2, rank, 2, impl)
    if rank == 0:
        torch.save(state, out)
    torch_dist.barrier()
    sys.stdout.flush()
    os._exit(0)  # no gloo teardown (see test_distributed.py)


@pytest.mark.parametrize("impl", ["loop", "vmap", "vmap_ascent"])  # vmap_ascent: the loop's descent through DDP
def test_the_api_under_ddp_equals_one_process_with_the_global_m(tmp_path, impl):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(ddp_worker, args=(port, impl, str(tmp_path / "ddp.pt")), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    single = train_api(tiny_bn_net(), 4)
    assert max((ddp[k] - single[k]).abs().max().item() for k in single) < 1e-10  # BN buffers averaged too
    assert max((single[k] - train_api(tiny_bn_net(), 1)[k]).abs().max().item() for k in single) > 1e-4


def test_the_api_under_bf16_is_fp32_s_direction_not_vanilla_s():
    def direction(rho, dtype):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10))
        gen = torch.Generator().manual_seed(1)
        msam.MSAM(model, m=4, rho=rho, autocast_dtype=dtype)(
            per_sample_ce, torch.randn(32, 20, generator=gen), torch.randint(0, 10, (32,), generator=gen))
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    fp32, bf16 = direction(0.5, None), direction(0.5, torch.bfloat16)
    gap = (fp32 - direction(0.0, None)).norm()
    assert (bf16 - fp32).norm() < 0.05 * fp32.norm() < 0.25 * gap
    assert abs((bf16 - direction(0.0, torch.bfloat16)).norm() - gap) < 0.05 * fp32.norm()


def test_misuse_is_one_clear_error():
    model = tiny_bn_net()
    x, y = batches()[0]
    with pytest.raises(msam.UsageError, match="must return one loss per sample"):
        msam.MSAM(model, m=4)(lambda logits, t: nn.functional.cross_entropy(logits, t), x, y)
    with pytest.raises(msam.UsageError, match="a batch of 16 samples cannot be split into m=3"):
        msam.MSAM(model, m=3)(per_sample_ce, x, y)
    with pytest.raises(msam.UsageError, match="no trainable parameters"):
        msam.MSAM(tiny_bn_net().requires_grad_(False))
    with pytest.raises(msam.UsageError, match="RW-SAM's reweighting runs with impl='loop'"):
        msam.MSAM(model, impl="vmap", reweighting=msam.GibbsReweighting.defaults())


def test_the_readme_example_runs(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "own_loop_example.py")], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    accuracy = float(result.stdout.splitlines()[-2].split("test accuracy ")[1].rstrip("%"))
    assert accuracy > 70 and "implementation chosen by impl='auto': " in result.stdout
