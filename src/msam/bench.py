"""msam-bench: how much one training step of SAM and each mSAM implementation costs, as ratios
to vanilla and SAM measured in the same process (a Hydra app over conf/bench.yaml).

Each row: model, B, m, impl, median ms per step, spread (min-max), peak GPU memory (CUDA only),
ratio to SAM and to vanilla of the same model and B. Steps of all methods are interleaved
(vanilla, SAM, loop, vmap, vmap_ascent, vanilla, ...) so drifting machine load hits them alike.
With compile_step=true each baseline and fixed mSAM row is also timed with its whole step under
torch.compile (compile.step; rows `compiled:<impl>`), with its ratio to compiled SAM, the seconds
its first call spent compiling (a warm-up round: never timed) and dynamo's graph, break and
recompile counts.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from msam import allocator, timing
from msam.cli import guarded, run_tool
from msam.config import require
from msam.domains import COMPILE_SETTINGS, SEED_MAX, Bool, Choice, Int, ListOf, Number, Text, check_domains
from msam.dist import DistContext
from msam.errors import ConfigError
from msam.engine import per_sample_cross_entropy, pick_device
from msam.methods import build_method, build_step
from msam.methods.autotune import Choice as TunedImpl
from msam.methods.autotune import COMPILED_PREFIX, STEP, choose
from msam.methods.compiled import compile_counts, is_compiled
from msam.models import build_model
from msam.precision import Precision
from msam.runs import device_description, write_atomic
from msam.search_path import group_config
from msam.paths import CONF_DIR

PROG = "msam-bench"
IMPLS = ("loop", "vmap", "vmap_ascent", "auto", "compile", "floor")
# rwsam_exact: RW-SAM with norm_estimator=exact (probe_bn=batch, its default); rwsam_exact_running: the same
# with probe_bn=running (per-sample gradients in eval mode)
BASELINES = ("vanilla", "sam", "rwsam", "rwsam_exact", "rwsam_exact_running")


def bench_model(name: str, num_classes: int, image_size: int, channels: int = 3) -> torch.nn.Module:
    """The model config <name> (conf/model/, or a folder of the user's on the search path), built as
    msam-train builds it, for channels x image_size x image_size inputs. A model config that
    interpolates the data set (${dataset.num_classes}, ${dataset.image_shape.0}) gets the bench's."""
    shape = [channels, image_size, image_size]
    context = OmegaConf.create({"dataset": {"num_classes": num_classes, "image_shape": shape}})
    cfg = OmegaConf.merge(context, group_config("model", name))
    return build_model(cfg.model, num_classes, tuple(shape))


def method_config(name: str, rho: float, **values) -> DictConfig:
    """A method's config from conf/method/<name>.yaml (its documented defaults), rho set."""
    return OmegaConf.merge(OmegaConf.load(CONF_DIR / "method" / f"{name}.yaml"), {"rho": rho, **values})


class MicroBatchFloor:
    """Not a method: the passes an mSAM step cannot avoid when it calls the model once per micro-batch.

    Its m descent gradients are taken at m different weight sets w + e_j, so such an implementation
    makes m forward+backward passes over B/m samples (vmap instead runs the m weight sets in
    batched kernels: its own row). The ascent is counted as one pass over the whole batch, as if
    the m micro-batch gradients came at a full-batch cost (on a CPU m small passes are sometimes
    cheaper: compare scripts/bench_ascent.py). No perturbation, no weight copies, no BatchNorm
    bookkeeping. A measurement, as noisy as the other rows, not a proven bound."""

    def __init__(self, m: int) -> None:
        self.m = m

    def __call__(self, model, loss_fn, batch):
        inputs, targets = batch
        loss_fn(model(inputs), targets).mean().backward()
        for x, y in zip(inputs.chunk(self.m), targets.chunk(self.m)):
            (loss_fn(model(x), y).mean() / self.m).backward()


def methods_for(m: int, rho: float, impls, baselines, auto_choice: TunedImpl | None = None,
                compile_cfg: DictConfig | None = None) -> dict:
    """The baselines (vanilla, SAM, optionally RW-SAM), then each mSAM implementation at m.
    `compile` is the loop on the torch.compile'd model (run_bench gives it that model); `auto` is
    what impl=auto chose for this model and batch (auto_choice). With compile_cfg (compile.step's
    settings), each baseline but RW-SAM (which compile.step refuses) and each fixed mSAM
    implementation again as `compiled:<name>`, its whole step compiled."""
    configs = {name: baseline_config(name, rho) for name in baselines}
    methods = {name: build_method(cfg) for name, cfg in configs.items()}
    if m > 1:
        for impl in impls:
            if impl == "auto" and auto_choice is not None and auto_choice.label in impls:
                continue  # the same code as a fixed row: timing it twice would only measure noise
            if impl == "floor":
                methods[impl] = MicroBatchFloor(m)
                continue
            cfg = method_config("msam", rho, m=m, impl="loop" if impl == "compile" else impl)
            methods[impl] = build_method(cfg, choice=auto_choice if impl == "auto" else None)
            if impl not in ("auto", "compile"):
                configs[impl] = cfg
    if compile_cfg is not None:
        for name, cfg in configs.items():
            if cfg.name != "rwsam":
                choice = TunedImpl(cfg.impl if cfg.name == "msam" else STEP, compiled=True)
                methods[COMPILED_PREFIX + name] = build_step(cfg, compile_cfg, choice=choice)
    return methods


def baseline_config(name: str, rho: float) -> DictConfig:
    """A baseline row's method config: vanilla (rho 0), SAM, RW-SAM with its configured norm
    estimator (the finite-difference probe) or with the exact per-sample norms."""
    if name == "rwsam_exact":
        return method_config("rwsam", rho, norm_estimator="exact")
    if name == "rwsam_exact_running":
        return method_config("rwsam", rho, norm_estimator="exact", probe_bn="running")
    return method_config(name, rho if name != "vanilla" else 0.0)


def auto_choice(model, m: int, rho: float, batch, device, cfg: DictConfig) -> TunedImpl:
    """What method.impl=auto picks for this model, batch and device (the engine's own tuning)."""
    config = method_config("msam", rho, m=m)
    choice, _, _ = choose(lambda c: build_method(config, model=model, choice=c), m, model, Precision(device.type),
                       per_sample_cross_entropy(0.0), batch, steps=cfg.tune_steps, max_seconds=cfg.tune_max_seconds,
                       keep_within=cfg.tune_keep_within, ctx=DistContext(device=device))
    return choice


def time_steps(model, methods: dict, batch, device, repeats: int, warmup: int, compiled=None) -> dict:
    """Median, min and max ms per training step of each method, interleaved; peak memory on CUDA.
    The method named `compile` runs on `compiled` (the same parameters behind torch.compile)."""
    loss_fn = per_sample_cross_entropy(0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    times = {name: [] for name in methods}
    peaks = {name: 0 for name in methods}
    for round_ in range(warmup + repeats):
        for name, method in methods.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = timing.now(device)
            method(compiled if name == "compile" else model, loss_fn, batch)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds = timing.now(device) - start
            if round_ >= warmup:
                times[name].append(1000 * seconds)
                if device.type == "cuda":
                    peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device))
    return {name: {"ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t),
                   "peak_gb": peaks[name] / 2**30 if device.type == "cuda" else None,
                   **(compile_fields(methods[name]) if is_compiled(methods[name]) else {})}
            for name, t in times.items()}


def compile_fields(method) -> dict:
    """A compiled row's compile cost: seconds spent compiling (its first, warm-up call), the graphs
    and breaks of that call, and the frames compiled again later (a recompilation; 0 expected)."""
    counts = compile_counts(method)
    return {"compile_seconds": counts.seconds, "graphs": counts.graphs, "breaks": counts.breaks,
            "recompiles": counts.recompiles}


def bench_domains() -> dict[str, dict]:
    """conf/bench.yaml's keys and what each may be (msam.domains)."""
    return {"": {"name": Text(), "out": Text(), "models": ListOf(Text(), min_length=1),
                 "batch_sizes": ListOf(Int(1), min_length=1), "ms": ListOf(Int(1), min_length=1),
                 "impls": ListOf(Choice(IMPLS)), "tune_steps": Int(1), "tune_max_seconds": Number(0, open_low=True),
                 "tune_keep_within": Number(1), "baselines": ListOf(Choice(BASELINES)),
                 "repeats": Int(1), "warmup": Int(0), "rho": Number(0), "num_classes": Int(2), "image_size": Int(1), "channels": Int(1),
                 "device": Text(), "seed": Int(0, SEED_MAX), "compile_step": Bool()},
            "compile": COMPILE_SETTINGS,
            "cpu_allocator": {"tune": Bool(), "mmap_threshold": Int(0), "trim_threshold": Int(0)}}


def check_bench(cfg: DictConfig) -> None:
    """conf/bench.yaml's values, checked before any model is built."""
    check_domains(cfg, bench_domains())
    for name in cfg.models:
        group_config("model", name)  # an unknown name: one line listing the valid ones, the user's included
    require({"vanilla", "sam"} <= set(cfg.baselines),
            f"baselines must include vanilla and sam (the ratios' references), got {list(cfg.baselines)}")
    require("/" not in cfg.name, f"name must be a file name (no '/'), got {cfg.name!r}")
    require(not cfg.compile_step or cfg.warmup >= 1,
            "compile_step=true needs warmup >= 1: a compiled row's first call compiles, and is never timed")
    require(any(b % m == 0 for b in cfg.batch_sizes for m in cfg.ms),
            f"no m in ms={list(cfg.ms)} divides a batch size in batch_sizes={list(cfg.batch_sizes)}: nothing to time")


def run_bench(cfg: DictConfig, on_rows=None) -> list[dict]:
    """Every row of the grid; on_rows(rows) after each (model, B, m) (partial results survive a timeout)."""
    check_bench(cfg)
    device = pick_device(cfg.device)
    rows = []
    for model_name in cfg.models:
        torch.manual_seed(cfg.seed)
        model = bench_model(model_name, cfg.num_classes, cfg.image_size, cfg.channels).to(device).train()
        # dynamic: one compilation for every micro-batch size rather than one per m
        compiled = torch.compile(model, dynamic=True) if "compile" in cfg.impls else None
        for batch_size in cfg.batch_sizes:
            gen = torch.Generator().manual_seed(cfg.seed)
            batch = (torch.randn(batch_size, cfg.channels, cfg.image_size, cfg.image_size, generator=gen).to(device),
                     torch.randint(0, cfg.num_classes, (batch_size,), generator=gen).to(device))
            baseline = None
            for m in cfg.ms:
                if batch_size % m:
                    continue
                chosen = auto_choice(model, m, cfg.rho, batch, device, cfg) if (
                    "auto" in cfg.impls and m > 1) else None
                methods = methods_for(m, cfg.rho, cfg.impls, cfg.baselines, chosen,
                                      cfg.compile if cfg.compile_step else None)
                timed = time_steps(model, methods, batch, device, cfg.repeats, cfg.warmup, compiled)
                baseline = timed if baseline is None else baseline
                if chosen is not None and "auto" not in timed:
                    timed["auto"] = timed[chosen.label]
                fixed = [timed[i]["ms"] for i in timed if i not in cfg.baselines and i not in ("auto", "floor")
                         and not i.startswith(COMPILED_PREFIX)]
                for impl, t in timed.items():
                    baseline_row = impl.removeprefix(COMPILED_PREFIX) in cfg.baselines
                    if baseline_row and m != cfg.ms[0]:
                        continue  # one vanilla/SAM row per (model, B); the ratios use this round's
                    compiled_sam = timed.get(COMPILED_PREFIX + "sam")
                    rows.append({"model": model_name, "B": batch_size, "m": 1 if baseline_row else m,
                                 "impl": impl, **t, "ratio_vs_sam": t["ms"] / timed["sam"]["ms"],
                                 "ratio_vs_vanilla": t["ms"] / timed["vanilla"]["ms"],
                                 **({"ratio_vs_compiled_sam": t["ms"] / compiled_sam["ms"]}
                                    if compiled_sam is not None and impl.startswith(COMPILED_PREFIX) else {}),
                                 **({"compile_backend": cfg.compile.backend, "compile_mode": cfg.compile.mode}
                                    if impl.startswith(COMPILED_PREFIX) else {}),
                                 "device": device_description(device),
                                 **({"auto_choice": chosen.label, "auto_vs_best_fixed": t["ms"] / min(fixed)}
                                    if impl == "auto" else {})})
                    print(f"{model_name} B={batch_size} m={rows[-1]['m']} {impl}: {t['ms']:.0f} ms "
                          f"({rows[-1]['ratio_vs_sam']:.2f}x SAM"
                          + (f", {rows[-1]['ratio_vs_compiled_sam']:.2f}x compiled SAM, "
                             f"{t['compile_seconds']:.1f} s compiling" if "ratio_vs_compiled_sam" in rows[-1] else "")
                          + ")", flush=True)
                if on_rows is not None:
                    on_rows(rows)
    return rows


def markdown(rows: list[dict], cfg) -> str:
    lines = [f"# msam-bench `{cfg.name}`", "", f"device: {rows[0]['device'] if rows else '?'}; "
             f"{cfg.repeats} timed steps per method after {cfg.warmup} warm-up, interleaved; median (min-max); "
             "auto: the implementation impl=auto chose on this model and batch (timed in its own row only "
             "when it is none of the fixed rows)", "",
             "| model | B | m | impl | ms / step | × SAM | × vanilla | peak GB |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    compiled = any("compile_seconds" in r for r in rows)
    if compiled:  # compile_step=true: the compiled rows' own columns
        settings = sorted({f"backend {r['compile_backend']}, mode {r['compile_mode']}" for r in rows
                           if "compile_backend" in r})
        lines[2] += (f"; compiled:<impl>: its whole step under torch.compile (compile.step, {'; '.join(settings)}), "
                     "its compile seconds those of its first (warm-up) call, kept out of its ms / step")
        lines[-2] += " × compiled SAM | compile (s) | graphs, breaks, recompiles |"
        lines[-1] += " --- | --- | --- |"
    for r in rows:
        peak = "—" if r["peak_gb"] is None else f"{r['peak_gb']:.2f}"
        impl = (f"auto → {r['auto_choice']} ({r['auto_vs_best_fixed']:.2f}× the fastest fixed)"
                if "auto_choice" in r else "floor (1 pass of B + m of B/m)" if r["impl"] == "floor" else r["impl"])
        digits = 1 if r["max_ms"] < 100 else 0  # the demo's steps take a few ms
        line = (f"| {r['model']} | {r['B']} | {r['m']} | {impl} | {r['ms']:.{digits}f} ({r['min_ms']:.{digits}f}-"
                f"{r['max_ms']:.{digits}f}) | {r['ratio_vs_sam']:.2f} | {r['ratio_vs_vanilla']:.2f} | {peak} |")
        if compiled and "compile_seconds" in r:
            versus = f"{r['ratio_vs_compiled_sam']:.2f}" if "ratio_vs_compiled_sam" in r else "—"
            line += f" {versus} | {r['compile_seconds']:.1f} | {r['graphs']}, {r['breaks']}, {r['recompiles']} |"
        elif compiled:
            line += " — | — | — |"
        lines.append(line)
    return "\n".join(lines) + "\n"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="bench")
def hydra_main(cfg: DictConfig) -> None:
    guarded(PROG, lambda: bench(cfg))


def main() -> None:
    run_tool(PROG, "bench", hydra_main)


def bench(cfg: DictConfig) -> None:
    allocator.apply(cfg.cpu_allocator)
    out = Path(cfg.out)

    def write(rows: list[dict]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        payload = {"config": OmegaConf.to_container(cfg, resolve=True), "rows": rows}
        write_atomic(out / f"{cfg.name}.json", (json.dumps(payload, indent=2) + "\n").encode())
        write_atomic(out / f"{cfg.name}.md", markdown(rows, cfg).encode())

    rows = run_bench(cfg, on_rows=write)
    print(markdown(rows, cfg))


if __name__ == "__main__":
    main()
