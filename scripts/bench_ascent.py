"""Could mSAM's ascent (the m micro-batch gradients at the shared weights) cost one full-batch pass?

    .venv/bin/python scripts/bench_ascent.py                        # ResNet-18, B = 128, m = 32
    .venv/bin/python scripts/bench_ascent.py --model vit_small --m 32 --repeats 5

The `floor` row of msam-bench counts the ascent at one forward+backward over the whole batch. This
script times what the two implementations spend on it instead, interleaved, median of --repeats
after one warm-up (train mode, random data, CPU or CUDA, synchronised):

- full:  one forward+backward over the B samples (what the floor assumes);
- loop:  m forward+backward passes over B/m samples (method.impl=loop's ascent);
- vmap:  the m gradients in one vmapped call, weights shared (method.impl=vmap's ascent).

If neither comes near `full`, neither of this project's implementations can reach the floor's
assumption for the ascent on this device.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.func import functional_call, grad_and_value, vmap

from msam import timing
from msam.bench import bench_model
from msam.engine import pick_device
from msam.methods.msam_vmap import running_stat_names, to_micro_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.m < 1 or args.repeats < 1:
        parser.error(f"--m and --repeats must be at least 1, got {args.m} and {args.repeats}")
    if args.batch % args.m:
        parser.error(f"--m {args.m} must divide --batch {args.batch}")
    device = pick_device(args.device)
    torch.manual_seed(0)
    model = bench_model(args.model, 10, 32).to(device).train()
    x, y = torch.randn(args.batch, 3, 32, 32, device=device), torch.randint(0, 10, (args.batch,), device=device)
    loss = torch.nn.functional.cross_entropy
    params = {n: p.detach() for n, p in model.named_parameters()}
    stat_names = running_stat_names(model)
    buffers = dict(model.named_buffers())
    shared = {n: b for n, b in buffers.items() if n not in stat_names}
    m = args.m

    def loss_at(trainable, stats, xb, yb):
        return loss(functional_call(model, ({**trainable, **stats, **shared},), (xb,)), yb)

    def full():
        torch.autograd.grad(loss(model(x), y), list(model.parameters()))

    def loop():
        for xb, yb in zip(x.chunk(m), y.chunk(m)):
            torch.autograd.grad(loss(model(xb), yb), list(model.parameters()))

    def vmapped():
        stats = {n: buffers[n].unsqueeze(0).repeat(m, *[1] * buffers[n].dim()) for n in stat_names}
        vmap(grad_and_value(loss_at), in_dims=(None, 0, 0, 0), randomness="different")(
            params, stats, to_micro_batches(x, m), to_micro_batches(y, m))

    runs = {"full": full, "loop": loop, "vmap": vmapped}
    times = {name: [] for name in runs}
    for round_ in range(args.repeats + 1):
        for name, run in runs.items():
            start = timing.now(device)
            run()
            if round_:
                times[name].append(1000 * (timing.now(device) - start))
    print(f"{args.model}, B = {args.batch}, m = {m}, {device.type}: the ascent's m gradients, ms "
          f"(median of {args.repeats})")
    reference = statistics.median(times["full"])
    for name, values in times.items():
        print(f"  {name:5s} {statistics.median(values):8.0f}  {statistics.median(values) / reference:.2f}x full")


if __name__ == "__main__":
    main()
