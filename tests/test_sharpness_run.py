"""msam-sharpness on real runs: sharpness.json, refusal of unfinished runs, a folder sweep, torchrun,
the run's own input pipeline (resize, tokens), and the training set read a batch at a time."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from msam import engine, runs
from msam.errors import ConfigError
from msam.sharpness import measure_run
from msam.sharpness.run import default_settings

CLI = [sys.executable, "-m", "msam.sharpness.cli"]


@pytest.fixture
def finished_run(make_cfg):
    cfg = make_cfg("method=sam", "epochs=1")
    engine.train(cfg)
    return runs.run_dir_for(cfg)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_measure_run_writes_sharpness_json(finished_run):
    settings = default_settings(max_iter=30, tol=1e-3, trace_probes=8, max_samples=256, batch_size=100,
                                dtype="float64")
    result = measure_run(finished_run, settings)
    stored = json.loads((finished_run / "sharpness.json").read_text())
    assert stored["lambda_max"] == result["lambda_max"] > 0 and stored["converged"]
    assert stored["data"] == {"dataset": "digits", "split": "train", "samples": 256, "batch_size": 100,
                              "max_samples": 256, "input_shape": [1, 8, 8], "augmentation": "none",
                              "order": "fixed", "processes": 1}
    # Lanczos stopped at tol: fewer than max_iter steps, plus one product for the true residual
    assert stored["hvp_count"] == stored["hvp_count_lambda_max"] + 8 and stored["trace_stderr"] > 0
    assert stored["hvp_count_lambda_max"] == stored["iterations"] + 1 < 30
    assert 0 < stored["lambda_max_residual"] <= 1e-3
    assert "weight decay is not included" in stored["loss"] and stored["dtype"] == "float64"
    assert stored["hvp_cost_vs_gradient"] > 0 and stored["checkpoint_epoch"] == 1
    assert stored["hvp_method"] == "double_backward" and stored["estimated_seconds_at_most"] > 0


def test_float32_and_float64_agree(finished_run):
    options = dict(max_iter=40, tol=1e-4, trace_probes=0, max_samples=128)
    single = measure_run(finished_run, default_settings(dtype="float32", **options))["lambda_max"]
    double = measure_run(finished_run, default_settings(dtype="float64", **options))["lambda_max"]
    assert single == pytest.approx(double, rel=1e-3)


def test_the_products_agree_on_a_trained_run(finished_run):
    product = "forward_over_reverse"
    options = dict(max_iter=15, tol=1e-10, trace_probes=4, max_samples=128, batch_size=64, dtype="float64")
    a = measure_run(finished_run, default_settings(product=product, **options))
    b = measure_run(finished_run, default_settings(product="double_backward", **options))
    assert a["lambda_max"] == pytest.approx(b["lambda_max"], rel=1e-10)
    assert a["trace"] == pytest.approx(b["trace"], rel=1e-10) and a["hvp_method"] == product


def test_an_unfinished_run_is_refused(finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    summary["status"] = "running"
    (finished_run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ConfigError, match="run is not finished"):
        measure_run(finished_run, default_settings())


def test_cli_measures_every_run_in_a_folder_once_and_skips_a_broken_one(make_cfg, tmp_path):
    for method in ("vanilla", "sam", "msam"):
        engine.train(make_cfg(f"method={method}", "epochs=1"))
    broken = next(d for d in (tmp_path / "runs").iterdir() if "msam" in d.name)
    state = torch.load(broken / "last.pt", weights_only=False)
    state["model"] = {k: v[:1] if v.dim() else v for k, v in state["model"].items()}  # another architecture
    torch.save(state, broken / "last.pt")
    command = [*CLI, f"runs={tmp_path / 'runs'}", "max_iter=15", "tol=1e-2", "trace_probes=2", "max_samples=64",
               "device=cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    measured = sorted((tmp_path / "runs").glob("*/sharpness.json"))
    assert len(measured) == 2 and not (broken / "sharpness.json").exists()
    skipped = [line for line in (result.stdout + result.stderr).splitlines() if "skipped" in line]
    assert len(skipped) == 1 and broken.name in skipped[0] and "does not fit the model" in skipped[0]
    stamp = [p.stat().st_mtime_ns for p in measured]
    subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, check=True)
    assert [p.stat().st_mtime_ns for p in measured] == stamp  # already measured: left alone


def test_cli_error_is_one_line(tmp_path):
    result = subprocess.run([*CLI, f"run={tmp_path}/nothing"], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert f"run={tmp_path}/nothing is not a folder" in result.stderr


def test_torchrun_two_processes_equal_one(finished_run, tmp_path):
    """Each process reads its own share (301 samples: 151 and 150, in batches of 64 with short last
    ones); the products are summed with one all-reduce; the small CNN has BatchNorm."""
    settings = dict(max_iter=30, tol=1e-12, trace_probes=4, max_samples=301, batch_size=64, dtype="float64",
                    device="cpu", keep_unconverged=True)
    single = measure_run(finished_run, default_settings(**settings))
    options = [f"{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in settings.items()]
    options.append(f"run={finished_run}")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    result = subprocess.run([torchrun, "--nproc-per-node=2", "--master-port", str(free_port()), "-m",
                             "msam.sharpness.cli", *options], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    double = json.loads((finished_run / "sharpness.json").read_text())
    assert double["data"]["processes"] == 2 and single["data"]["processes"] == 1
    assert double["data"]["samples"] == single["data"]["samples"] == 301
    assert double["lambda_max"] == pytest.approx(single["lambda_max"], rel=1e-10)
    assert double["trace"] == pytest.approx(single["trace"], rel=1e-10)
    assert double["hvp_count"] == single["hvp_count"]


def test_a_process_reads_only_its_share_a_batch_at_a_time(finished_run):
    from omegaconf import OmegaConf

    from msam.data.analysis import analysis_data

    cfg = OmegaConf.load(finished_run / "config.yaml")
    whole = analysis_data(cfg, 64, 301, 0, torch.device("cpu"), torch.float64)
    shares = [analysis_data(cfg, 64, 301, 0, torch.device("cpu"), torch.float64, rank, 2) for rank in (0, 1)]
    sizes = [[len(t) for _, t in share.batches()] for share in shares]
    assert sizes == [[64, 64, 23], [64, 64, 22]] and all(s.num_samples == 301 for s in shares)
    joined = torch.cat([x for share in shares for x, _ in share.batches()])
    assert torch.equal(joined, torch.cat([x for x, _ in whole.batches()]))
    assert joined.dtype == torch.float64


def test_imagenet_is_read_from_disk_with_evaluation_transforms(tmp_path, make_cfg):
    """An ImageFolder of PNGs (the real format), read by DataLoader workers with the resize + centre
    crop of evaluation, never as one tensor."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    from msam.data.analysis import analysis_data
    from msam.data.imagenet import inception_transforms
    from msam.data.loaders import FolderLoader

    gen = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            (tmp_path / "inet" / split / label).mkdir(parents=True)
            for i in range(5):
                pixels = (torch.rand(20, 24, 3, generator=gen) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / "inet" / split / label / f"{i}.png")
    cfg = make_cfg("dataset=imagenet", f"dataset.root={tmp_path / 'inet'}", "dataset.num_classes=2",
                   "dataset.image_size=16", "dataset.resize=18", "dataset.num_workers=1")
    data = analysis_data(cfg, 4, None, 0, torch.device("cpu"), torch.float64, rank=1, world_size=2)
    assert isinstance(data.loader, FolderLoader) and data.loader.num_workers == 1
    assert data.num_samples == 10 and data.input_shape == (3, 16, 16)
    _, evaluate = inception_transforms(cfg.dataset)
    files = ImageFolder(str(tmp_path / "inet" / "train"), transform=evaluate)
    expected = torch.stack([files[i][0] for i in range(5, 10)]).double()  # rank 1's contiguous half
    got = [(x, y) for x, y in data.batches()]
    assert [len(y) for _, y in got] == [4, 1]
    assert torch.equal(torch.cat([x for x, _ in got]), expected)


def test_resized_cifar_and_glue_smoke_runs_are_measured_in_one_sweep(make_cfg, tmp_path):
    """The run's own input pipeline: a CIFAR ViT run trained on upsampled images (dataset.resize) and
    a GLUE run on token batches, measured by one runs= sweep."""
    engine.train(make_cfg("experiment=tab2_c10_vit_b16_msam", "smoke=on", "model=vit_s32", "dataset.resize=64",
                          "model.pretrained_required=false", smoke=False))
    engine.train(make_cfg("experiment=tab3_cola_msam", "smoke=on", smoke=False))
    command = [*CLI, f"runs={tmp_path / 'runs'}", "max_iter=4", "tol=1e-2", "trace_probes=1", "device=cpu",
               "keep_unconverged=true"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped" not in result.stdout + result.stderr
    assert (result.stdout + result.stderr).count("at most eigen: 8 products; trace: 1 products") == 2  # up front
    measured = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/sharpness.json")}
    assert len(measured) == 2
    shapes = sorted(r["data"]["input_shape"] for r in measured.values())
    assert [3, 64, 64] in shapes and all(r["hvp_count"] == r["hvp_count_lambda_max"] + 1 for r in measured.values())
    assert all(r["lambda_max"] == r["lambda_max"] for r in measured.values())  # not NaN


ALL_MEASURES = ["measures=[lambda_max,trace,topk,density,sharpness,landscape]", "topk.k=3", "max_iter=40",
                "tol=1e-6", "trace_probes=4", "density.probes=2", "density.lanczos_steps=8",
                "sharpness.batch_sizes=[micro,16,full]", "sharpness.max_batches=5", "sharpness.ascent_steps=2",
                "sharpness.average_draws=2", "landscape.points=5", "landscape.points_2d=3", "landscape.path_points=3",
                "max_samples=301", "batch_size=64", "dtype=float64", "device=cpu", "keep_unconverged=true"]


def numbers(value):
    """Every number in a sharpness.json section, flattened in a fixed order."""
    if isinstance(value, dict):
        timing = ("seconds", "data", "forward_backward_units", "provenance")  # what the machine, not the math, sets
        return [x for key in sorted(value) if key not in timing for x in numbers(value[key])]
    if isinstance(value, list):
        return [x for item in value for x in numbers(item)]
    return [float(value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def test_torchrun_two_processes_equal_one_for_every_measure(finished_run, make_cfg, tmp_path):
    """topk, density, sharpness on batches (whole batches dealt to the processes) and on the full
    set (sharded), landscape slices, plane and the path to another run: 2 processes give the numbers
    of 1 to 1e-9, with unequal shards and BatchNorm."""
    other = make_cfg("method=msam", "method.m=4", "epochs=1")
    engine.train(other)
    options = [*ALL_MEASURES, f"landscape.against={runs.run_dir_for(other)}", f"run={finished_run}"]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    results = []
    for processes in (1, 2):
        done = subprocess.run([torchrun, f"--nproc-per-node={processes}", "--master-port", str(free_port()), "-m",
                               "msam.sharpness.cli", *options], capture_output=True, text=True, timeout=600,
                              cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(json.loads((finished_run / "sharpness.json").read_text()))
    single, double = results
    assert double["data"]["processes"] == 2 and single["data"]["processes"] == 1
    for name in ("topk", "density", "sharpness", "landscape"):
        a, b = numbers(single[name]), numbers(double[name])
        assert len(a) == len(b) > 3 and a == pytest.approx(b, rel=1e-9, abs=1e-12), name
    assert single["landscape"]["path"]["against"] == runs.run_dir_for(other).name
    labels = [(r["n_label"], r["n"]) for r in single["sharpness"]["rows"]]
    assert ("micro", 64) in labels and ("16", 16) in labels and ("full", 301) in labels  # SAM: micro = batch


def test_measures_add_to_sharpness_json_and_a_sweep_skips_what_is_held(finished_run, tmp_path):
    base = ["max_iter=20", "tol=1e-3", "trace_probes=2", "max_samples=128", "device=cpu"]
    folder = f"runs={finished_run.parent}"
    subprocess.run([*CLI, folder, *base], capture_output=True, text=True, timeout=300, cwd=tmp_path, check=True)
    first = json.loads((finished_run / "sharpness.json").read_text())
    assert first["measures"] == ["lambda_max", "trace"]
    more = [*base, "measures=[density]", "density.probes=1", "density.lanczos_steps=5"]
    subprocess.run([*CLI, folder, *more], capture_output=True, text=True, timeout=300, cwd=tmp_path, check=True)
    merged = json.loads((finished_run / "sharpness.json").read_text())
    assert merged["measures"] == ["lambda_max", "trace", "density"]
    assert merged["lambda_max"] == first["lambda_max"] and len(merged["density"]["nodes"][0]) == 5
    # the top level still describes the call that measured lambda_max and the trace
    assert {k: merged[k] for k in ("hvp_count", "seconds", "cost")} == {k: first[k] for k in ("hvp_count", "seconds",
                                                                                            "cost")}
    assert merged["density"]["hvp_count"] == 5 and merged["density"]["provenance"]["git_commit"] is not None
    assert merged["density"]["data"] == {"samples": 128, "max_samples": 128, "processes": 1, "dtype": "float32",
                                         "seed": 0, "checkpoint_epoch": 1}
    stamp = (finished_run / "sharpness.json").stat().st_mtime_ns
    done = subprocess.run([*CLI, folder, *more], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and (finished_run / "sharpness.json").stat().st_mtime_ns == stamp  # held: skipped
    no_trace = subprocess.run([*CLI, folder, *base[:2], "trace_probes=0", "max_samples=128", "device=cpu"],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert no_trace.returncode == 0 and (finished_run / "sharpness.json").stat().st_mtime_ns == stamp  # held
    skipped = subprocess.run([*CLI, folder, *base, "match=[nothing*]"], capture_output=True, text=True,
                             timeout=300, cwd=tmp_path)
    assert skipped.returncode == 2 and "matches match=['nothing*']" in skipped.stderr


@pytest.mark.parametrize("option, message", [
    ("measures=[lambda_max,curvature]", "('curvature' is not)"),
    ("measures=[]", "measures must be a list of 1 or more items"),
    ("sharpness.batch_sizes=[micro,0]", "sharpness.batch_sizes must be a list of 1 or more items"),
    ("sharpness.kinds=[worst,best]", "sharpness.kinds must be"),
    ("landscape.points_2d=1", "landscape.points_2d must be 0 (no plane) or at least 2"),
    ("landscape.points=4", "landscape.points must be odd"),
    ("density.sigma=-1", "density.sigma must be null or a finite number in (0"),
    ("landscape.against=/nowhere", "landscape.against=/nowhere is not a run directory"),
])
def test_bad_measure_settings_are_one_line(finished_run, tmp_path, option, message):
    measures = [] if option.startswith("measures") else ["measures=[landscape]"]
    done = subprocess.run([*CLI, f"run={finished_run}", *measures, option, "device=cpu"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert message in done.stderr


def test_the_path_refuses_a_run_of_another_model(finished_run, make_cfg, tmp_path):
    other = make_cfg("method=sam", "epochs=1", "model=resnet18")
    engine.train(other)
    with pytest.raises(ConfigError, match="trained another model"):
        measure_run(finished_run, default_settings(measures=["landscape"], landscape={"against": str(
            runs.run_dir_for(other))}, max_samples=64))


def test_a_run_measured_without_lambda_max_stays_in_the_reports(finished_run):
    """measures=[topk] alone writes no lambda_max: the run keeps its rows, with a note."""
    from msam.report.collect import collect_runs
    from msam.report.tables import REPORTS

    measure_run(finished_run, default_settings(measures=["topk"], topk={"k": 2}, max_samples=64, tol=1e-3))
    runs_found, skipped = collect_runs(finished_run.parent)
    assert not skipped and len(runs_found) == 1
    report = REPORTS["tab4"](runs_found)
    assert len(report.display) == 1 and report.display["λ_max"].iloc[0] == "—"
    assert any("no λ_max in sharpness.json" in note for note in report.notes)
    assert len(REPORTS["tab2"](runs_found).display) == 1
