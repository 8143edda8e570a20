"""Could mSAM's ascent (the m micro-batch gradients at the shared weights) cost one full-batch pass?

    .venv/bin/python scripts/bench_ascent.py                        # ResNet-18, B = 128, m = 32
    .venv/bin/python scripts/bench_ascent.py --model vit_small --m 32 --repeats 3
    .venv/bin/python scripts/bench_ascent.py --one-pass              # and the one-pass route (CNNs)

The `floor` row of msam-bench counts the ascent at one forward+backward over the whole batch. This
script times what the two implementations spend on it instead (and a third route), interleaved, median of --repeats
after one warm-up (train mode, random data, CPU or CUDA, synchronised):

- full:  one forward+backward over the B samples (what the floor assumes);
- loop:  m forward+backward passes over B/m samples (method.impl=loop's ascent);
- vmap:  the m gradients in one vmapped call, weights shared (method.impl=vmap's ascent);
- one_pass (Conv2d / BatchNorm2d / Linear models only): one forward over the batch with each
  micro-batch's own BatchNorm statistics, one backward for the activations' gradients, and the m
  per-micro-batch weight gradients taken from that backward: convolutions slice the saved input
  and output gradient per micro-batch (a weight-gradient kernel per slice, no input-gradient or
  forward kernels per slice), linear layers use one batched matrix product. Not an
  implementation of this project: a measurement of the route "the ascent's m gradients out of
  one full-batch pass" (tested against the loop's gradients in tests/test_bench.py).

If none comes near `full`, the floor's assumption for the ascent is out of reach on this device.
"""

from __future__ import annotations

import argparse
import statistics
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from msam import timing
from msam.bench import bench_model
from msam.engine import pick_device
from msam.methods.msam_vmap import running_stat_names, to_micro_batches


class SlicedWeightGradConv2d(torch.autograd.Function):
    """conv2d with shared weights whose backward gives the m per-micro-batch weight gradients,
    stacked, in place of their sum (and the input gradient of the whole batch)."""

    @staticmethod
    def forward(ctx, x, stacked, weight, conv):
        ctx.save_for_backward(x, weight)
        ctx.conv = conv
        return F.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        c, m = ctx.conv, ctx.conv.micro_batches
        grad_x = torch.nn.grad.conv2d_input(x.shape, weight, grad_out, c.stride, c.padding, c.dilation)
        grad_w = torch.stack([torch.ops.aten.convolution_backward(
            g, xs, weight, None, c.stride, c.padding, c.dilation, False, [0, 0], 1, [False, True, False])[1]
            for xs, g in zip(x.chunk(m), grad_out.chunk(m))])
        return grad_x, grad_w, None, None


def one_pass_forwards(model: torch.nn.Module, m: int) -> dict:
    """For each parameter, an autograd leaf of m stacked copies, and the layers' forwards that use
    them per micro-batch (installed by `swapped_forwards`)."""
    leaves, forwards = {}, {}

    def stacked(p):  # one leaf per parameter, shared by the layers that share it
        if id(p) not in leaves:
            leaves[id(p)] = p.detach().unsqueeze(0).expand(m, *p.shape).requires_grad_()
        return leaves[id(p)]

    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        if isinstance(module, torch.nn.Conv2d) and module.groups == 1 and module.bias is None \
                and module.padding_mode == "zeros":
            module.micro_batches = m
            w = stacked(module.weight)
            forwards[module] = lambda x, c=module, w=w: SlicedWeightGradConv2d.apply(x, w, c.weight.detach(), c)
        elif isinstance(module, torch.nn.BatchNorm2d) and module.affine:
            g, b = stacked(module.weight), stacked(module.bias)
            forwards[module] = lambda x, bn=module, g=g, b=b: torch.cat([
                F.batch_norm(xs, None, None, g[k], b[k], True, 0.0, bn.eps) for k, xs in enumerate(x.chunk(m))])
        elif isinstance(module, torch.nn.Linear) and module.bias is not None:
            w, b = stacked(module.weight), stacked(module.bias)
            forwards[module] = lambda x, w=w, b=b: torch.baddbmm(
                b.unsqueeze(1), x.reshape(m, x.shape[0] // m, -1), w.transpose(1, 2)).reshape(x.shape[0], -1)
        else:
            raise SystemExit(f"one_pass: {type(module).__name__} is not supported (Conv2d without bias, "
                             "BatchNorm2d, Linear only)")
    return {"leaves": leaves, "forwards": forwards}


@contextmanager
def swapped_forwards(forwards: dict):
    for module, forward in forwards.items():
        module.forward = forward
    try:
        yield
    finally:
        for module in forwards:
            del module.forward


def one_pass_gradients(model: torch.nn.Module, x, y, m: int) -> list[torch.Tensor]:
    """The m micro-batch gradients of the mean cross-entropy, stacked, one per model.parameters()."""
    swap = one_pass_forwards(model, m)
    with swapped_forwards(swap["forwards"]):
        loss = F.cross_entropy(model(x), y, reduction="sum") / (x.shape[0] // m)  # sum over j of L_Sj
    return list(torch.autograd.grad(loss, [swap["leaves"][id(p)] for p in model.parameters()]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--one-pass", action="store_true", help="also time the one-pass ascent (CNNs only)")
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
    if args.one_pass:
        runs["one_pass"] = lambda: one_pass_gradients(model, x, y, m)
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
        print(f"  {name:8s} {statistics.median(values):8.0f}  {statistics.median(values) / reference:.2f}x full")


if __name__ == "__main__":
    main()
