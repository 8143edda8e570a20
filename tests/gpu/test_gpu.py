"""The CUDA path, on a real GPU: `pytest -m gpu tests/gpu` (scripts/gpu_check.sh runs it). Skipped
without CUDA; MSAM_GPU_TESTS_ON_CPU=1 runs the same code on the CPU, to check the tests themselves.

What each test holds on the GPU against the CPU:
- loop and vmap directions (and BatchNorm buffers) on CUDA equal the CPU's, in float64;
- bf16 and fp16 directions of every method are fp32's within the dtype's tolerance and as far
  from vanilla's as in fp32 (autocast per forward pass; fp16 unscaled ascent);
- channels_last and torch.compile (inductor) train like eager, contiguous;
- sharpness (lambda_max, trace) on CUDA equals the CPU's, in float64;
- a short training run of each method in bf16 finishes with finite numbers;
- torchrun with 2 processes sharing the GPU (gloo on CUDA tensors) trains what 1 process trains.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from msam import engine, runs
from msam.bench import method_config
from msam.methods import build_method
from msam.precision import Precision

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[2]
ON_CPU = os.environ.get("MSAM_GPU_TESTS_ON_CPU") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def device():
    if DEVICE != "cuda" and not ON_CPU:
        pytest.skip("needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # exact comparisons
    return torch.device(DEVICE)


def per_sample_ce(logits, targets):
    return nn.functional.cross_entropy(logits.float() if logits.dtype != torch.float64 else logits, targets,
                                       reduction="none")


def bn_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, 10))


def image_batch(n=32, dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 8, 8, generator=gen, dtype=dtype), torch.randint(0, 10, (n,), generator=gen)


def step(model, method, batch, prec=None):
    """Direction (unscaled, flat, float64 on the CPU) and BatchNorm buffers after one method call."""
    method(model, per_sample_ce, batch)
    grads = [p.grad.detach().clone() for p in model.parameters()]
    if prec is not None:
        prec.unscale_(grads)
    buffers = {k: v.detach().double().cpu() for k, v in model.state_dict().items() if "running" in k}
    return torch.cat([g.double().cpu().flatten() for g in grads]), buffers


@pytest.mark.parametrize("impl", ["loop", "vmap", "vmap_ascent"])
def test_msam_direction_on_cuda_equals_the_cpu_float64_reference(device, impl):
    cfg = method_config("msam", 0.3, m=4, impl=impl)
    cpu = step(bn_cnn().double(), build_method(cfg), image_batch(dtype=torch.float64))
    x, y = image_batch(dtype=torch.float64)
    gpu = step(bn_cnn().double().to(device), build_method(cfg), (x.to(device), y.to(device)))
    assert (gpu[0] - cpu[0]).abs().max() < 1e-10
    assert all((gpu[1][k] - cpu[1][k]).abs().max() < 1e-10 for k in cpu[1])


METHODS = [("vanilla", {}, 0.0), ("sam", {}, 0.5), ("msam", {"m": 4, "impl": "loop"}, 0.5),
           ("msam", {"m": 4, "impl": "vmap"}, 0.5), ("msam", {"m": 4, "impl": "vmap_ascent"}, 0.5), ("asam", {}, 4.0), ("sam", {"normalize": False}, 0.5),
           ("rwsam", {"lambda": 2.0}, 0.5), ("rwsam", {"lambda": 0.5, "norm_scale": "absolute"}, 0.5)]
TOLERANCE = {"bf16": 0.05, "fp16": 0.01}


def mlp_direction(device, name, overrides, rho, prec):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10)).to(device)
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(32, 20, generator=gen).to(device), torch.randint(0, 10, (32,), generator=gen).to(device))
    torch.manual_seed(2)
    return step(model, build_method(method_config(name, rho, **overrides), precision=prec), batch, prec)[0]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("name,overrides,rho", METHODS, ids=[f"{m[0]}-{i}" for i, m in enumerate(METHODS)])
def test_mixed_precision_direction_on_cuda(device, dtype, name, overrides, rho):
    mixed_precision = (Precision(device.type, torch.bfloat16) if dtype == "bf16" else
                       Precision(device.type, torch.float16, torch.amp.GradScaler(device.type, init_scale=2.0**10)))
    reference = mlp_direction(device, name, overrides, rho, Precision(device.type))
    vanilla = mlp_direction(device, "vanilla", {}, 0.0, Precision(device.type))
    mixed = mlp_direction(device, name, overrides, rho, mixed_precision)
    mixed_vanilla = mlp_direction(device, "vanilla", {}, 0.0, mixed_precision)
    tolerance = TOLERANCE[dtype] * reference.norm()
    assert (mixed - reference).norm() < tolerance
    assert abs((mixed - mixed_vanilla).norm() - (reference - vanilla).norm()) < tolerance


# CIFAR-shaped synthetic data; ResNet-18 on the GPU (the small CNN for a dry run on the CPU)
SYNTHETIC = ["dataset=synthetic", "dataset.train_size=256", "dataset.test_size=64", "batch_size=32", "epochs=1",
             f"model={'resnet18' if DEVICE == 'cuda' else 'small_cnn'}", "log_every_steps=0"]


def trained(make_cfg, device, *overrides):
    cfg = make_cfg(*SYNTHETIC, f"device={device.type}", *overrides)
    summary = engine.train(cfg)
    state = torch.load(runs.run_dir_for(cfg) / "last.pt", weights_only=True)["model"]
    return summary, state


def max_diff(a, b):
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def test_channels_last_trains_like_contiguous(make_cfg, device):
    plain, a = trained(make_cfg, device, "method=msam", "method.m=4")
    nhwc, b = trained(make_cfg, device, "method=msam", "method.m=4", "channels_last=true")
    assert abs(plain["train_loss"] - nhwc["train_loss"]) < 1e-3 and max_diff(a, b) < 1e-3


def test_inductor_compile_trains_like_eager(make_cfg, device):
    eager, a = trained(make_cfg, device, "method=msam", "method.m=4")
    compiled, b = trained(make_cfg, device, "method=msam", "method.m=4", "compile.enabled=true",
                          "compile.backend=inductor")
    assert abs(eager["train_loss"] - compiled["train_loss"]) < 1e-3 and max_diff(a, b) < 1e-3


def test_sharpness_on_cuda_equals_the_cpu(device):
    from msam.sharpness.measures import measure_sharpness
    from msam.sharpness.operator import ReIterable

    def measure(dev):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 12), nn.BatchNorm1d(12), nn.Tanh(), nn.Linear(12, 5)).double().to(dev)
        gen = torch.Generator().manual_seed(1)
        x, y = torch.randn(50, 8, generator=gen, dtype=torch.float64).to(dev), torch.randint(0, 5, (50,), generator=gen).to(dev)
        batches = ReIterable(lambda: [(x[i:i + 16], y[i:i + 16]) for i in range(0, 50, 16)])
        return measure_sharpness(model, batches, 50, per_sample_ce, algorithm="lanczos", max_iter=60, tol=1e-10,
                                 trace_probes=10, seed=0, keep_unconverged=False, gradient_passes=3)

    cpu, gpu = measure(torch.device("cpu")), measure(device)
    assert abs(gpu["lambda_max"] - cpu["lambda_max"]) < 1e-8 * abs(cpu["lambda_max"])
    assert abs(gpu["trace"] - cpu["trace"]) < 1e-6 * abs(cpu["trace"])  # the same (CPU-drawn) probes
    assert gpu["hvp_cost_vs_gradient"] > 0


def test_every_sharpness_measure_on_cuda_equals_the_cpu(device):
    """top-k, density, sharpness on batches and the landscape: float64, CPU-drawn random numbers,
    so the device changes only rounding."""
    from msam.data.analysis import AnalysisData
    from msam.data.loaders import TensorLoader
    from msam.sharpness.measures import Sizes, measure
    from msam.sharpness.operator import ReIterable
    from msam.sharpness.run import default_settings

    settings = default_settings(measures=["topk", "density", "sharpness", "landscape"], topk={"k": 3}, max_iter=60,
                                tol=1e-9, density={"probes": 2, "lanczos_steps": 10}, gradient_passes=1,
                                sharpness={"batch_sizes": [10, "full"], "ascent_steps": 3},
                                landscape={"points": 5, "points_2d": 3})

    def run(dev):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 12), nn.BatchNorm1d(12), nn.Tanh(), nn.Linear(12, 5)).double().to(dev)
        gen = torch.Generator().manual_seed(1)
        x, y = torch.randn(50, 8, generator=gen, dtype=torch.float64), torch.randint(0, 5, (50,), generator=gen)

        def loader_for(positions):
            return TensorLoader(x[positions], y[positions], 16, shuffle=False, drop_last=False, device=dev)

        data = AnalysisData(loader_for(torch.arange(50)), 50, (8,), torch.float64, None, torch.arange(50), loader_for)
        return measure(model, ReIterable(data.batches), 50, per_sample_ce, settings, data=data,
                       sizes=Sizes(micro=10, batch=50))

    cpu, gpu = run(torch.device("cpu")), run(device)
    assert gpu["topk"]["eigenvalues"] == pytest.approx(cpu["topk"]["eigenvalues"], rel=1e-8)
    assert gpu["density"]["nodes"][0] == pytest.approx(cpu["density"]["nodes"][0], rel=1e-6, abs=1e-9)
    assert [r["mean"] for r in gpu["sharpness"]["rows"]] == pytest.approx(
        [r["mean"] for r in cpu["sharpness"]["rows"]], rel=1e-6, abs=1e-12)
    assert sum(gpu["landscape"]["plane"]["loss"], []) == pytest.approx(sum(cpu["landscape"]["plane"]["loss"], []), rel=1e-9)


@pytest.mark.parametrize("method", ["method=vanilla", "method=sam", "method=msam method.m=4",
                                    "method=msam method.m=4 method.impl=vmap",
                                    "method=msam method.m=4 method.impl=vmap_ascent", "method=asam", "method=rwsam"])
def test_a_short_bf16_run_of_each_method(make_cfg, device, method):
    if device.type == "cpu" and "vmap" in method:
        pytest.skip("vmap with BatchNorm under CPU autocast is refused (msam.methods.check_vmap_precision)")
    summary, state = trained(make_cfg, device, *method.split(), "precision=bf16")
    assert summary["status"] == "finished" and summary["train_loss"] == summary["train_loss"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    provenance = runs.read_json(Path(summary["run_dir"]) / "provenance.json")
    assert provenance["precision"]["precision"] == "bf16" and provenance["precision"]["tf32_cudnn"] is False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_sharing_the_gpu_train_what_one_process_trains(tmp_path, device):
    common = ["dataset=synthetic", "dataset.image_shape=[1,8,8]", "dataset.mean=[0.5]", "dataset.std=[0.2887]",
              "dataset.train_size=256", "dataset.test_size=64", "batch_size=32", "epochs=1", "method=msam",
              "method.m=4", f"device={device.type}", "log_every_steps=0", "dist_backend=gloo"]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([torchrun, "--nproc-per-node=2", "--master-port", str(free_port()), "-m", "msam.train",
                          *common, f"paths.runs={tmp_path}/ddp"], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "msam.train", *common, f"paths.runs={tmp_path}/one"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    (a,), (b,) = list((tmp_path / "ddp").glob("*/last.pt")), list((tmp_path / "one").glob("*/last.pt"))
    summary = json.loads((a.parent / "summary.json").read_text())
    assert summary["derived"]["processes"] == 2
    assert max_diff(torch.load(a, weights_only=True)["model"], torch.load(b, weights_only=True)["model"]) < 1e-4
