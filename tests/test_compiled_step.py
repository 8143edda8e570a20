"""compile.step: the whole method step under torch.compile (src/msam/methods/compiled.py).

The compiled step must compute what the eager step computes (to float32 rounding, random draws
included), compile once (no recompilation after the first step), keep its compile seconds apart
from the training seconds, resume bit for bit, and run under DDP; impl=auto must compile only
where the run's planned steps pay for it. Compiling is slow on a CPU (1-15 s per method here),
so the models are small MLPs."""

from __future__ import annotations

import os
from pathlib import Path
import time

import pytest
import torch
from torch import nn

from msam import dist, engine, runs
from msam.bench import method_config
from msam.errors import ConfigError
from msam.methods import build_method
from msam.methods.autotune import Choice, choose_compiled
from msam.methods.compiled import CompileCounts, CompiledStep
from msam.precision import Precision

STEPS = 50
# Relative difference after 50 SGD steps with momentum: float32 rounding, reordered by the
# compiler, grows step by step to a few 1e-6 (measured: 3e-7 for SAM, 6e-6 for mSAM's vmap).
# Anything the step does differently (a dropped perturbation, other dropout masks) moves the
# weights by 1e-1 or more.
ROUNDING = 1e-4

METHODS = [
    ("vanilla", "vanilla", {}),
    ("sam", "sam", {}),
    ("asam", "asam", {}),
    ("usam", "sam", {"normalize": False}),
    ("msam-loop", "msam", {"m": 4, "impl": "loop"}),
    ("msam-vmap", "msam", {"m": 4, "impl": "vmap"}),
    ("msam-vmap_ascent", "msam", {"m": 4, "impl": "vmap_ascent"}),
]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles as a new process would: dynamo keeps what it compiled for a code object
    for the whole process, so a step compiled by an earlier test would compile nothing here (and
    its graph counts would read 0)."""
    torch._dynamo.reset()
    yield


def bn_dropout_net():
    """BatchNorm (buffers, per-micro-batch statistics) and dropout (random draws) in one model."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 5))


def per_sample_ce(logits, targets):
    return nn.functional.cross_entropy(logits.float(), targets, reduction="none")


def data(batches=10, size=16):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 12, generator=gen), torch.randint(0, 5, (size,), generator=gen))
            for _ in range(batches)]


def train(method, model, batches, steps=STEPS):
    """The last direction and the final state (weights and BatchNorm buffers) after `steps` steps."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(5)  # dropout's draws start from the same state on both sides
    for i in range(steps):
        method(model, per_sample_ce, batches[i % len(batches)])
        direction = torch.cat([p.grad.flatten() for p in model.parameters()])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return direction, model.state_dict()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("label,name,overrides", METHODS, ids=[m[0] for m in METHODS])
def test_the_compiled_step_trains_as_the_eager_step_does_for_50_steps(label, name, overrides):
    cfg = method_config(name, 0.0 if name == "vanilla" else 0.1, **overrides)
    batches = data()
    eager_direction, eager_state = train(build_method(cfg), bn_dropout_net(), batches)
    compiled = CompiledStep(build_method(cfg))
    direction, state = train(compiled, bn_dropout_net(), batches)
    assert compiled.counts.graphs > 0  # it did compile: a step run eager would pass the rest trivially
    assert compiled.counts.recompiles == 0
    assert relative(direction, eager_direction) < ROUNDING
    for key in eager_state:  # weights, running statistics and num_batches_tracked
        assert relative(state[key], eager_state[key]) < ROUNDING, key


# Relative error of a direction against fp32's (tests/test_precision.py): bf16 keeps 8 mantissa
# bits, fp16 11; the perturbed pass sits behind a low-precision ascent pass.
TOLERANCE = {"bf16": 0.05, "fp16": 0.01}


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10))


def direction(name, overrides, rho, precision, compiled):
    gen = torch.Generator().manual_seed(1)
    batch = torch.randn(32, 20, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    method = build_method(method_config(name, rho, **overrides), precision=precision)
    model = mlp()
    (CompiledStep(method) if compiled else method)(model, per_sample_ce, batch)
    grads = [p.grad.detach().clone().float() for p in model.parameters()]
    precision.unscale_(grads)
    return torch.cat([g.flatten() for g in grads])


def precision_of(dtype):
    if dtype == "bf16":
        return Precision("cpu", torch.bfloat16)
    return Precision("cpu", torch.float16, torch.amp.GradScaler("cpu", init_scale=2.0**10))


# One dtype per step (each case compiles for seconds): fp16 (the loss scaler in the graph) on SAM
# and mSAM's vmap, bf16 on mSAM's loop.
@pytest.mark.parametrize("dtype,name,overrides", [("fp16", "sam", {}), ("bf16", "msam", {"m": 4, "impl": "loop"}),
                                                  ("fp16", "msam", {"m": 4, "impl": "vmap"})],
                         ids=["sam-fp16", "msam-loop-bf16", "msam-vmap-fp16"])
def test_the_compiled_step_under_autocast_is_fp32_s_direction_and_as_far_from_vanilla(dtype, name, overrides):
    """What tests/test_precision.py checks for eager steps: a compiled step whose autocast region
    swallowed the perturbed pass would be vanilla's direction."""
    reference = direction(name, overrides, 0.5, Precision(), compiled=False)
    fp32_vanilla = direction("vanilla", {}, 0.0, Precision(), compiled=False)
    mixed = direction(name, overrides, 0.5, precision_of(dtype), compiled=True)
    tolerance = TOLERANCE[dtype] * reference.norm()
    gap = (reference - fp32_vanilla).norm()
    assert gap > 4 * tolerance
    assert (mixed - reference).norm() < tolerance
    # it did run in low precision: measured 4e-4 to 2e-2 relative from fp32's direction, where the
    # compiled fp32 step is 7e-8 from the eager one (the compiler's rounding, not the dtype)
    assert (mixed - reference).norm() > 1e-5 * reference.norm()


def test_a_compiled_run_compiles_once_keeps_the_compile_seconds_apart_and_resumes_bit_identical(
        make_cfg, tmp_path, monkeypatch):
    """One whole run checked twice: its compile seconds, and a copy of it stopped mid-epoch and
    resumed (compiling again) must end on its weights bit for bit."""
    from test_preemption import signal_at_step, weights, without_seconds

    overrides = ("method=msam", "method.m=4", "method.impl=vmap", "compile.step=true", "epochs=2")
    whole = make_cfg(*overrides)
    summary = engine.train(whole)
    rows = runs.read_metrics(runs.run_dir_for(whole) / "metrics.jsonl")
    assert summary["derived"]["method.impl"] == "compiled:vmap"
    assert summary["compile"]["graphs"] >= 1 and summary["compile"]["recompiles"] == 0
    assert [r["recompiles"] for r in rows] == [0, 0] and rows[1]["compile_seconds"] == 0
    # the first step compiled for seconds; the first epoch's own seconds are its steady steps, as
    # the second epoch's are (with the compile seconds in it, it would be longer by all of them)
    assert summary["compile_seconds"] == rows[0]["compile_seconds"] > 1.0
    assert rows[0]["seconds"] < rows[1]["seconds"] + 0.5 * rows[0]["compile_seconds"]
    assert summary["seconds_per_epoch"] == pytest.approx(sum(r["seconds"] for r in rows) / 2)

    stopped = make_cfg(*overrides)
    stopped.paths.runs = str(tmp_path / "stopped")
    signal_at_step(monkeypatch, 30)  # epoch 2, batch 8
    with pytest.raises(SystemExit):
        engine.train(stopped)
    assert torch.load(runs.run_dir_for(stopped) / "last.pt", weights_only=True)["partial_epoch"]["batches"] == 8
    monkeypatch.undo()
    engine.train(stopped)
    a, b = weights(whole), weights(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a)
    drop = ("compile_seconds", "compile_graphs", "compile_breaks")  # the resumed process compiles again
    rows = [{k: v for k, v in r.items() if k not in drop} for r in
            without_seconds(runs.read_metrics(runs.run_dir_for(stopped) / "metrics.jsonl"))]
    assert rows == [{k: v for k, v in r.items() if k not in drop} for r in without_seconds(
        runs.read_metrics(runs.run_dir_for(whole) / "metrics.jsonl"))]


def test_a_short_run_with_compile_step_auto_compiles_nothing_and_records_why(make_cfg, caplog):
    """The whole path through the engine: the planned steps come from the run (2 epochs of the
    smoke data), and their eager cost is far below compile_seconds_guess, so no candidate compiles."""
    cfg = make_cfg("method=msam", "method.m=4", "method.impl=auto", "compile.step=auto")
    with caplog.at_level("INFO", logger="msam"):
        summary = engine.train(cfg)
    tuning = summary["derived"]["method.tuning"]
    assert not summary["derived"]["method.impl"].startswith("compiled:")
    assert tuning and not any(label.startswith("compiled:") for label in tuning)
    steps = 2 * engine_steps_per_epoch(summary)
    assert all(t["estimate_seconds"] == pytest.approx(steps * t["ms"] / 1000) for t in tuning.values())
    assert "compile_seconds" not in summary and "not compiled: at 60.0 s compiling" in caplog.text


def engine_steps_per_epoch(summary):
    rows = runs.read_metrics(Path(summary["run_dir"]) / "metrics.jsonl")
    return rows[0]["step"]


@pytest.mark.parametrize("overrides,message", [
    (("method=rwsam", "compile.step=true"), "compile.step=true does not compile RW-SAM"),
    (("method=sam", "compile.step=auto", "compile.enabled=true"), "use compile.step (the whole step)"),
    (("method=sam", "compile.step=sometimes"), "compile.step"),
])
def test_what_compile_step_cannot_do_is_one_line_before_any_compute(make_cfg, overrides, message):
    with pytest.raises(ConfigError) as error:
        engine.train(make_cfg(*overrides))
    assert message in str(error.value) and "\n" not in str(error.value)


def compile_in_a_fresh_process(cache_dir):
    """What a new process running this step pays: dynamo's in-process cache of compiled frames
    emptied (else the step compiles nothing), and the inductor graph cache hits it makes."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    hits = counters["inductor"]["fxgraph_cache_hit"]
    method = CompiledStep(build_method(method_config("sam", 0.1)), cache_dir=str(cache_dir))
    train(method, bn_dropout_net(), data(2), steps=2)
    assert method.counts.graphs > 0  # it compiled
    return counters["inductor"]["fxgraph_cache_hit"] - hits


def test_the_inductor_cache_goes_where_compile_cache_dir_says_and_a_second_run_reads_it(tmp_path):
    cache = tmp_path / "inductor"
    # a graph compiled before in this process, under another directory, must not stand in for it
    train(CompiledStep(build_method(method_config("sam", 0.1))), bn_dropout_net(), data(2), steps=2)
    assert compile_in_a_fresh_process(cache) == 0
    assert cache.is_dir() and any(cache.rglob("*"))
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") != str(cache)  # set for the compiling calls only
    assert compile_in_a_fresh_process(cache) > 0  # the sweep's next run reuses the graphs
    assert compile_in_a_fresh_process(tmp_path / "other") == 0


class Step:
    """A method that sleeps `ms` per call; compiled, its first call also 'compiles' for `compile_s`."""

    def __init__(self, ms, compile_s=None):
        self.ms, self.compile_s, self.calls = ms, compile_s, 0
        if compile_s is not None:
            self.counts = CompileCounts()

    def __call__(self, model, loss_fn, batch):
        if self.compile_s is not None and self.calls == 0:
            self.counts.seconds += self.compile_s  # what CompiledStep records, without the wait
        time.sleep(self.ms / 1000)
        self.calls += 1


def auto(eager_ms, compiled_ms, compile_s, planned_steps, guess=20.0):
    built = {}

    def build(choice):
        built[choice] = Step(compiled_ms[choice.impl], compile_s) if choice.compiled else Step(eager_ms[choice.impl])
        return built[choice]

    settings = dict(steps=2, max_seconds=60, keep_within=100.0, ctx=dist.DistContext(), planned_steps=planned_steps)
    choice, _, table = choose_compiled(build, [Choice(impl) for impl in eager_ms], nn.Linear(2, 2), None, None,
                                       settings, guess)
    return choice, table, {c.label for c in built if c.compiled}


def test_auto_compiles_nothing_where_the_planned_steps_cannot_pay_for_compiling():
    # 100 steps of 20 ms: 2 s in all, against a 20 s guess of compiling
    choice, table, compiled = auto({"loop": 30, "vmap": 20}, {"loop": 25, "vmap": 2}, 5.0, planned_steps=100)
    assert choice == Choice("vmap") and compiled == set() and set(table) == {"loop", "vmap"}


def test_auto_compiles_where_the_steps_pay_and_records_the_estimate():
    # 5000 steps: vmap eager 100 s, compiled 10 s + 5 s compiling
    choice, table, compiled = auto({"loop": 30, "vmap": 20}, {"loop": 25, "vmap": 2}, 5.0, planned_steps=5000)
    assert choice == Choice("vmap", compiled=True)
    timing = table["compiled:vmap"]
    assert timing.compile_seconds == 5.0
    assert timing.estimate_seconds == pytest.approx(5.0 + 5000 * timing.ms / 1000)
    # after one compile at 5 s and 2 ms a step, compiled loop could not beat 15 s: never compiled
    assert compiled == {"compiled:vmap"}


def test_auto_keeps_the_eager_step_where_compiling_costs_more_than_it_saves():
    # 1000 steps: vmap eager 20 s; compiled 2 s of steps but 60 s of compiling
    choice, table, _ = auto({"vmap": 20}, {"vmap": 2}, 60.0, planned_steps=1000, guess=1.0)
    assert choice == Choice("vmap") and table["compiled:vmap"].estimate_seconds > table["vmap"].estimate_seconds
