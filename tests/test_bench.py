"""msam-bench's output (the numbers themselves are measured by `make bench`, never asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from msam import bench
from msam.bench import markdown, run_bench
from msam.errors import ConfigError


def test_bench_rows_have_ratios_for_every_method(tmp_path):
    cfg = OmegaConf.create({"models": ["vit_small"], "batch_sizes": [8], "ms": [1, 2, 4],
                            "impls": ["loop", "vmap", "floor"], "repeats": 1, "warmup": 0, "rho": 0.05,
                            "num_classes": 10, "image_size": 32, "channels": 3,
                            "device": "cpu", "seed": 0, "name": "t", "baselines": ["vanilla", "sam", "rwsam"],
                            "compile_step": False})
    rows = run_bench(cfg)
    assert [(r["impl"], r["m"]) for r in rows] == [("vanilla", 1), ("sam", 1), ("rwsam", 1), ("loop", 2), ("vmap", 2),
                                                   ("floor", 2), ("loop", 4), ("vmap", 4), ("floor", 4)]
    assert all(r["min_ms"] <= r["ms"] <= r["max_ms"] and r["device"].startswith("cpu") for r in rows)
    assert "| vit_small | 8 | 4 | vmap |" in markdown(rows, cfg)


def test_compiled_rows_time_each_step_compiled_beside_the_eager_rows(tmp_path):
    cfg = OmegaConf.merge(OmegaConf.load(bench.CONF_DIR / "bench.yaml"), {
        "models": ["small_cnn"], "image_size": 8, "channels": 1, "batch_sizes": [8], "ms": [2],
        "impls": ["loop", "vmap"], "baselines": ["vanilla", "sam", "rwsam"], "repeats": 2, "warmup": 1,
        "compile_step": True, "compile": {"backend": "eager"}, "device": "cpu"})
    rows = run_bench(cfg)
    assert [r["impl"] for r in rows] == ["vanilla", "sam", "rwsam", "loop", "vmap", "compiled:vanilla",
                                         "compiled:sam", "compiled:loop", "compiled:vmap"]  # RW-SAM: refused compiled
    compiled = {r["impl"]: r for r in rows if r["impl"].startswith("compiled:")}
    assert compiled["compiled:sam"]["ratio_vs_compiled_sam"] == 1.0
    assert compiled["compiled:vmap"]["ratio_vs_compiled_sam"] == pytest.approx(
        compiled["compiled:vmap"]["ms"] / compiled["compiled:sam"]["ms"])
    # dynamo traced every compiled row on its warm-up call, and compiled nothing again while timed
    assert all(r["graphs"] >= 1 and r["compile_seconds"] > 0 and r["recompiles"] == 0 for r in compiled.values())
    assert all("compile_seconds" not in r and "ratio_vs_compiled_sam" not in r for r in rows[:5])
    table = markdown(rows, cfg)
    assert "| × compiled SAM | compile (s) | graphs, breaks, recompiles |" in table
    assert "| small_cnn | 8 | 2 | compiled:vmap |" in table and "| small_cnn | 8 | 2 | vmap |" in table


def test_rwsam_with_exact_norms_is_a_baseline_row_of_its_own():
    methods = bench.methods_for(1, 0.05, [], ["vanilla", "sam", "rwsam", "rwsam_exact", "rwsam_exact_running"])
    assert methods["rwsam"].reweighting.norm_estimator == "finite_difference"
    assert methods["rwsam_exact"].reweighting.norm_estimator == "exact"
    assert methods["rwsam_exact"].reweighting.probe_bn == "batch"
    assert methods["rwsam_exact_running"].reweighting.probe_bn == "running"


def test_compiled_rows_need_an_untimed_warm_up_call():
    cfg = OmegaConf.merge(OmegaConf.load(bench.CONF_DIR / "bench.yaml"), {"compile_step": True, "warmup": 0})
    with pytest.raises(ConfigError, match="compile_step=true needs warmup >= 1"):
        run_bench(cfg)


class Clock:
    """A fake timer: each method below advances it by its own cost, so the bench's arithmetic
    (median, min, max, ratios) has exact answers."""

    def __init__(self):
        self.now = 0.0

    def method(self, costs):
        calls = iter(costs)

        def step(model, loss_fn, batch):
            self.now += next(calls)
            return torch.zeros(()), torch.zeros(len(batch[1]), 10)

        return step


def test_time_steps_reports_the_median_and_range_of_the_timed_rounds(monkeypatch):
    from msam import bench

    clock = Clock()
    monkeypatch.setattr(bench.timing, "now", lambda device: clock.now)
    methods = {"sam": clock.method([9.0, 0.010, 0.039, 0.011]),  # the first round is the warm-up
               "slow": clock.method([9.0, 0.050, 0.040, 0.090])}
    model = torch.nn.Linear(2, 10)
    timed = bench.time_steps(model, methods, (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)),
                             torch.device("cpu"), repeats=3, warmup=1)
    assert timed["sam"]["ms"] == pytest.approx(11.0) and timed["slow"]["ms"] == pytest.approx(50.0)  # medians
    assert (timed["slow"]["min_ms"], timed["slow"]["max_ms"]) == pytest.approx((40.0, 90.0))


def test_cli_writes_json_and_markdown(tmp_path):
    command = [sys.executable, "-m", "msam.bench", "models=[small_cnn]", "image_size=8", "batch_sizes=[4]", "ms=[1,2]", "repeats=1",
               "warmup=0", f"out={tmp_path}", "name=smoke", "device=cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads((tmp_path / "smoke.json").read_text())
    assert {r["impl"] for r in payload["rows"]} == {"vanilla", "sam", "rwsam", "loop", "vmap", "vmap_ascent",
                                                      "auto"}
    assert payload["rows"][-1]["auto_choice"] in ("loop", "vmap", "vmap_ascent")
    assert set(payload["rows"][0]) >= {"model", "B", "m", "impl", "ms", "ratio_vs_sam", "ratio_vs_vanilla", "device"}
    assert (tmp_path / "smoke.md").read_text().startswith("# msam-bench `smoke`")


def test_the_floor_is_one_pass_over_the_batch_and_m_over_its_micro_batches():
    sizes = []
    model = torch.nn.Linear(2, 3)
    model.register_forward_hook(lambda module, args, out: sizes.append(args[0].shape[0]))
    batch = (torch.randn(12, 2), torch.randint(0, 3, (12,)))
    bench.MicroBatchFloor(4)(model, lambda logits, y: torch.nn.functional.cross_entropy(logits, y, reduction="none"),
                             batch)
    assert sizes == [12, 3, 3, 3, 3]
    assert model.weight.grad is not None
    methods = bench.methods_for(4, 0.05, ["loop", "floor"], ["vanilla", "sam"])
    assert isinstance(methods["floor"], bench.MicroBatchFloor) and methods["floor"].m == 4


def test_the_ascent_script_times_full_loop_and_vmap():
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_ascent.py"
    result = subprocess.run([sys.executable, str(script), "--model", "small_cnn", "--batch", "8", "--m", "2",
                             "--repeats", "1", "--device", "cpu", "--one-pass"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("small_cnn, B = 8, m = 2, cpu")
    assert [line.split()[0] for line in lines[1:]] == ["full", "loop", "vmap", "one_pass"] and "1.00x full" in lines[1]


def load_script(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, channels", [("small_cnn", 1), ("resnet18", 3)])  # resnet18: strides, 1x1 shortcuts
def test_the_one_pass_ascent_gives_the_loops_micro_batch_gradients(name, channels):
    """The measured route must compute what the loop's ascent computes (float64, BatchNorm CNNs)."""
    from msam.bench import bench_model

    bench_ascent = load_script("bench_ascent")
    torch.manual_seed(0)
    model = bench_model(name, 10, 8, channels).double().train()
    x, y = torch.randn(12, channels, 8, 8, dtype=torch.float64), torch.randint(0, 10, (12,))
    params = list(model.parameters())
    loop = [torch.autograd.grad(torch.nn.functional.cross_entropy(model(xs), ys), params)
            for xs, ys in zip(x.chunk(3), y.chunk(3))]
    got = bench_ascent.one_pass_gradients(model, x, y, 3)
    assert len(got) == len(params) and all(g.shape == (3, *p.shape) for g, p in zip(got, params))
    assert max((got[i][j] - loop[j][i]).abs().max().item() for i in range(len(params)) for j in range(3)) < 1e-12
    assert max((loop[0][i] - loop[1][i]).abs().max().item() for i in range(len(params))) > 1e-3  # j matters
    assert all("forward" not in vars(module) for module in model.modules())  # the layers' own forwards again
