"""What torch.compile of the whole training step buys SAM and mSAM where the step is overhead-bound.

    .venv/bin/python scripts/bench_compiled_step.py                 # the demo's shape: small CNN, 1x8x8, B = 64, m = 8
    .venv/bin/python scripts/bench_compiled_step.py --backend aot_eager --repeats 3

On the demo's shape an mSAM step is 2m = 16 forward+backward passes on 8 samples each, made of
many small operations whose fixed cost per call (dispatch, vmap's batching rules, allocations)
a compiler can remove where it gets them into one graph. This script times each method's step
with msam-bench's own timer (method + SGD step, the rows interleaved step by step, median after
a warm-up) eager and with the method call wrapped in `torch.compile` (graph breaks allowed: the
method's Python runs as it is, the tensor work in between is compiled). Each row gives
its median ms per step, its ratio to eager SAM, and for the compiled rows the ratio to compiled
SAM (both compiled), the seconds its first two calls took (compilation, which a run pays once
per process and shape) and the graphs and graph breaks dynamo made of it.

Before timing, each compiled method is run once from the eager run's starting weights, BatchNorm
buffers and random state, and the largest difference of its direction (.grad) and buffers from
the eager one is printed: a compiler that changed the step would show here.

Not a project feature: `compile.enabled=true` compiles the model's forward in place, and
impl=vmap refuses it (docs/performance.md, "What a compiler buys where the step is overhead-bound").
"""

from __future__ import annotations

import argparse
import time

import torch
from torch._dynamo.utils import counters

from msam.bench import bench_model, methods_for, time_steps
from msam.engine import per_sample_cross_entropy, pick_device

BASELINES, IMPLS = ("vanilla", "sam"), ("loop", "vmap")  # loop and vmap: mSAM at --m
loss_fn = per_sample_cross_entropy(0.0)


def state_of(model) -> tuple[dict, dict]:
    """The direction and the buffers a step left (what a compiled step must reproduce)."""
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, {n: b.detach().clone() for n, b in model.named_buffers()}


def largest_difference(a: tuple[dict, dict], b: tuple[dict, dict]) -> float:
    if a[0].keys() != b[0].keys():
        return float("inf")  # a gradient missing on one side
    return max((x.double() - y.double()).abs().max().item()
               for side_a, side_b in zip(a, b) for x, y in ((side_a[k], side_b[k]) for k in side_a))


def compiled_deviation(model, eager, compiled, batch) -> tuple[float, float]:
    """Largest |compiled - eager| over the direction and the buffers after one step from the same
    state (weights, buffers and random streams; the step itself leaves the weights alone), and the
    seconds of the compiled call (its compilation). The model is left as it was."""
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.random.fork_rng(devices=None if batch[0].is_cuda else []):
        rng = torch.get_rng_state(), torch.cuda.get_rng_state_all() if batch[0].is_cuda else []
        model.zero_grad(set_to_none=True)
        eager(model, loss_fn, batch)
        reference = state_of(model)
        model.load_state_dict(start)
        model.zero_grad(set_to_none=True)
        torch.set_rng_state(rng[0])
        if rng[1]:
            torch.cuda.set_rng_state_all(rng[1])
        began = time.perf_counter()
        compiled(model, loss_fn, batch)
        seconds = time.perf_counter() - began
        got = state_of(model)
    model.load_state_dict(start)
    model.zero_grad(set_to_none=True)
    return largest_difference(reference, got), seconds


def graphs_and_breaks() -> tuple[int, int]:
    """dynamo's running counts of compiled graphs and graph breaks in this process."""
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def main(argv=None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--image-size", type=int, default=8)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--m", type=int, default=8)
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend: inductor | aot_eager | eager")
    parser.add_argument("--repeats", type=int, default=60, help="timed steps per row, interleaved")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per row first")
    parser.add_argument("--double", action="store_true", help="float64 (to check the compiled step to rounding)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", default=",".join(BASELINES + IMPLS), help="comma-separated, sam among them")
    args = parser.parse_args(argv)
    if args.batch % args.m:
        parser.error(f"--m {args.m} does not divide --batch {args.batch}")
    methods = args.methods.split(",")
    if "sam" not in methods or not set(methods) <= set(BASELINES + IMPLS):
        parser.error(f"--methods takes {', '.join(BASELINES + IMPLS)}, sam among them (the ratios' reference)")
    if args.m == 1 and set(methods) & set(IMPLS):
        parser.error("--m 1 has no mSAM rows: mSAM needs m > 1")

    device = pick_device(args.device)
    torch.manual_seed(0)
    dtype = torch.float64 if args.double else torch.float32
    model = bench_model(args.model, 10, args.image_size, args.channels).to(device, dtype).train()
    batch = (torch.randn(args.batch, args.channels, args.image_size, args.image_size, device=device, dtype=dtype),
             torch.randint(0, 10, (args.batch,), device=device))
    eager = methods_for(args.m, args.rho, [n for n in IMPLS if n in methods], [n for n in BASELINES if n in methods])
    rows = dict(eager)
    lines = [f"{args.model}, B = {args.batch}, m = {args.m}, {device.type}, backend {args.backend}, "
             f"median of {args.repeats} steps"]
    compile_notes = {}
    for name, method in eager.items():
        compiled = torch.compile(method, backend=args.backend, dynamic=False)
        graphs, breaks = graphs_and_breaks()
        deviation, first = compiled_deviation(model, method, compiled, batch)
        began = time.perf_counter()
        compiled(model, loss_fn, batch)  # the second call: a recompilation would show here
        model.zero_grad(set_to_none=True)
        after = graphs_and_breaks()
        compile_notes[f"compiled {name}"] = (deviation, first + time.perf_counter() - began,
                                             after[0] - graphs, after[1] - breaks)
        rows[f"compiled {name}"] = compiled
    timed = time_steps(model, rows, batch, device, args.repeats, args.warmup)
    ms = {name: row["ms"] for name, row in timed.items()}
    for name, value in ms.items():
        line = f"{name:<18} {value:8.2f} ms  {value / ms['sam']:.2f}x SAM"
        if name in compile_notes:
            deviation, seconds, graphs, breaks = compile_notes[name]
            line += (f"  {value / ms['compiled sam']:.2f}x compiled SAM  compile {seconds:.1f} s"
                     f"  {graphs} graph(s), {breaks} break(s)  max |compiled - eager| {deviation:.1e}")
        lines.append(line)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
