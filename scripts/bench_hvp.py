"""The cost of one Hessian-vector product against one forward+backward, by each product.

    .venv/bin/python scripts/bench_hvp.py                 # small CNN, ResNet-18, small ViT; writes
                                                          # results/bench/hvp_<device>.json and .md
    .venv/bin/python scripts/bench_hvp.py --models resnet18 --batch 64 --repeats 3

Each model in eval mode (BatchNorm running statistics), one batch of random data, products timed
interleaved with plain forward+backward passes (median of --repeats, after one warm-up; CUDA
synchronised). Before timing, both products are compared in float64 with each other on a small
batch: the largest relative difference from double_backward is the row's `agreement` (must be
below 1e-10).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from msam import timing
from msam.bench import bench_model
from msam.engine import per_sample_cross_entropy, pick_device
from msam.models.small_cnn import small_cnn
from msam.runs import device_description, write_atomic
from msam.sharpness.operator import PRODUCTS, TrainingLossHessian


def build(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    if name == "small_cnn":  # the demo's model on 8x8 digits
        return small_cnn(1, 10, 16), (1, 8, 8)
    return bench_model(name, 10, 32), (3, 32, 32)


def perturbed_statistics(model: torch.nn.Module) -> None:
    """BatchNorm running statistics that are not the defaults (as after training)."""
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=gen) - 0.5)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)


def operator(model, shape, batch: int, product: str, dtype, device) -> TrainingLossHessian:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=gen).to(device, dtype)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    return TrainingLossHessian(model, [(x, y)], batch, per_sample_cross_entropy(0.0), product)


def agreement(name: str, device) -> float:
    model, shape = build(name)
    perturbed_statistics(model)
    model = model.to(device, torch.float64).eval()
    ops = [operator(model, shape, 8, product, torch.float64, device) for product in PRODUCTS]
    v = torch.randn(ops[0].size, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(device)
    reference, *others = (op.matvec(v) for op in ops)
    return max(float(torch.linalg.vector_norm(x - reference) / torch.linalg.vector_norm(reference)) for x in others)


def timings(name: str, batch: int, repeats: int, device) -> dict:
    model, shape = build(name)
    perturbed_statistics(model)
    model = model.to(device).eval()
    ops = {product: operator(model, shape, batch, product, torch.float32, device) for product in PRODUCTS}
    (x, y), = ops[PRODUCTS[0]].batches
    v = torch.randn(ops[PRODUCTS[0]].size, generator=torch.Generator().manual_seed(2)).to(device)
    loss_fn = per_sample_cross_entropy(0.0)

    def gradient():
        loss_fn(model(x), y).sum().backward()
        model.zero_grad(set_to_none=True)

    work = {"forward+backward": gradient, **{p: (lambda op=op: op.matvec(v)) for p, op in ops.items()}}
    times = {key: [] for key in work}
    for round_ in range(repeats + 1):
        for key, fn in work.items():
            start = timing.now(device)
            fn()
            if round_:
                times[key].append(timing.now(device) - start)
    medians = {key: statistics.median(t) for key, t in times.items()}
    unit = medians["forward+backward"]
    return {"ms": {k: 1000 * t for k, t in medians.items()},
            "vs_gradient": {p: medians[p] / unit for p in PRODUCTS}}


def markdown(rows: list[dict], device: str, repeats: int) -> str:
    lines = [f"# Hessian-vector product cost ({device})", "",
             f"eval mode, float32, median of {repeats} interleaved repeats after one warm-up; "
             "agreement: the largest relative difference from double_backward, float64 (batch 8)", "",
             "| model | B | forward+backward ms | " + " | ".join(PRODUCTS) + " | agreement |",
             "| --- | --- | --- | " + "--- | " * len(PRODUCTS) + "--- |"]
    for r in rows:
        cells = [f"{r['vs_gradient'][p]:.2f}× ({r['ms'][p]:.1f} ms)" for p in PRODUCTS]
        lines.append(f"| {r['model']} | {r['B']} | {r['ms']['forward+backward']:.1f} | " + " | ".join(cells)
                     + f" | {r['agreement']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["small_cnn", "resnet18", "vit_small"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--name", default=None, help="results/bench/<name>.json (default hvp_<device type>)")
    args = parser.parse_args()
    device = pick_device(args.device)
    rows = []
    for name in args.models:
        row = {"model": name, "B": args.batch, "agreement": agreement(name, device),
               **timings(name, args.batch, args.repeats, device)}
        rows.append(row)
        print(f"{name}: forward+backward {row['ms']['forward+backward']:.1f} ms; " + ", ".join(
            f"{p} {row['vs_gradient'][p]:.2f}x" for p in PRODUCTS) + f"; agreement {row['agreement']:.1e}", flush=True)
    described = device_description(device)
    out = Path("results/bench")
    name = args.name or f"hvp_{device.type}"
    payload = {"device": described, "repeats": args.repeats, "rows": rows}
    write_atomic(out / f"{name}.json", (json.dumps(payload, indent=2) + "\n").encode())
    write_atomic(out / f"{name}.md", markdown(rows, described, args.repeats).encode())
    print(markdown(rows, described, args.repeats))


if __name__ == "__main__":
    main()
