"""End-to-end runs on the digits: files, resume, a finished run left alone, progress lines."""

import json
import logging
from pathlib import Path

import pytest
import torch

from msam import engine, runs


def weights(run_dir):
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def test_a_run_writes_its_directory(make_cfg):
    cfg = make_cfg("method=msam", "method.m=4")
    summary = engine.train(cfg)
    run_dir = runs.run_dir_for(cfg)
    assert summary["status"] == "finished" and summary["epochs_completed"] == 2
    for name in ("config.yaml", "provenance.json", "metrics.jsonl", "summary.json", "last.pt"):
        assert (run_dir / name).is_file(), name
    rows = runs.read_metrics(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) >= {"train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"}
    assert summary["derived"]["micro_batch_size"] == 16
    assert summary["derived"]["steps_per_epoch"] == 1438 // 64
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["versions"]["torch"] and provenance["git_commit"] and provenance["device"].startswith("cpu")
    assert summary["test_acc"] > 50  # it learns: 10 classes, chance is 10%


def test_run_directory_depends_on_the_config_only(make_cfg, tmp_path):
    a = make_cfg("method=sam")
    b = make_cfg("method=sam")
    b.paths.runs = str(tmp_path / "elsewhere")
    assert runs.run_dir_for(a).name == runs.run_dir_for(b).name
    assert runs.run_dir_for(a).name != runs.run_dir_for(make_cfg("method=sam", "optim.lr=0.2")).name
    assert runs.run_dir_for(a).name != runs.run_dir_for(make_cfg("method=sam", "seed=1")).name


def test_a_finished_run_is_not_trained_again(make_cfg, monkeypatch):
    cfg = make_cfg("method=vanilla")
    first = engine.train(cfg)
    monkeypatch.setattr(engine, "train_epoch", lambda *a, **k: pytest.fail("trained again"))
    assert engine.train(cfg)["test_acc"] == first["test_acc"]


@pytest.mark.parametrize("method", ["sam", "msam"])
def test_resume_after_an_interruption_ends_bit_identical(make_cfg, tmp_path, train_interrupted, method):
    uninterrupted = make_cfg(f"method={method}", "method.m=1" if method == "sam" else "method.m=4", "epochs=3")
    engine.train(uninterrupted)
    interrupted = uninterrupted.copy()
    interrupted.paths.runs = str(tmp_path / "interrupted")
    summary = train_interrupted(interrupted, in_epoch=2)

    a, b = weights(runs.run_dir_for(uninterrupted)), weights(runs.run_dir_for(interrupted))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in runs.read_metrics(runs.run_dir_for(interrupted) / "metrics.jsonl")] == [1, 2, 3]
    assert summary["epochs_completed"] == 3


def test_resume_never_starts_over(make_cfg):
    cfg = make_cfg("method=vanilla", "epochs=1")
    engine.train(cfg)
    cfg.resume = "never"
    assert engine.train(cfg)["epochs_completed"] == 1


def test_progress_lines_show_step_loss_accuracy_and_eta(make_cfg, caplog):
    cfg = make_cfg("method=vanilla", "epochs=1", "log_every_steps=10")
    with caplog.at_level(logging.INFO, logger="msam"):
        engine.train(cfg)
    lines = [r.getMessage() for r in caplog.records if "step 10/" in r.getMessage()]
    assert lines and all(word in lines[0] for word in ("epoch 1/1", "loss", "acc", "lr", "eta"))
    assert len([r for r in caplog.records if "step" in r.getMessage()]) < 10  # no flood


def test_gradient_clipping_bounds_the_update(make_cfg):
    cfg = make_cfg("method=msam", "method.m=4", "grad_clip_norm=1e-6", "optim.momentum=0.0",
                   "optim.weight_decay=0.0", "schedule=constant", "optim.lr=1.0", "epochs=1")
    engine.train(cfg)
    before = torch.load(runs.run_dir_for(cfg) / "last.pt", weights_only=True)
    # 22 steps of at most lr * 1e-6 each: the weights barely move from their initialisation.
    torch.manual_seed(cfg.seed)
    from msam.models import build_model

    init = build_model(cfg.model, 10, (1, 8, 8)).state_dict()
    moved = sum((before["model"][k].double() - init[k].double()).pow(2).sum() for k in init if k.endswith("weight"))
    assert moved.sqrt() <= 22 * 1e-6 + 1e-9


def test_bf16_autocast_trains(make_cfg):
    summary = engine.train(make_cfg("method=msam", "method.m=4", "precision=bf16", "epochs=1"))
    assert summary["status"] == "finished" and summary["test_acc"] > 20


@pytest.mark.parametrize("impl", ["vmap", "vmap_ascent"])
def test_the_vmap_implementations_train_like_the_loop(make_cfg, tmp_path, impl):
    loop = make_cfg("method=msam", "method.m=4", "method.impl=loop", "epochs=1")
    vmap = make_cfg("method=msam", "method.m=4", f"method.impl={impl}", "method.chunk_size=2", "epochs=1")
    assert abs(engine.train(loop)["train_loss"] - engine.train(vmap)["train_loss"]) < 1e-4


# fp16 autocast is slow on a CPU: a small problem (4 steps of 32 synthetic 8x8 images).
SMALL = ("dataset=synthetic", "dataset.image_shape=[1,8,8]", "dataset.mean=[0.5]", "dataset.std=[0.2887]",
         "dataset.train_size=128", "dataset.test_size=64", "batch_size=32", "epochs=1")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_close_to_fp32(make_cfg, precision):
    """Stated tolerance: the mean training loss of the epoch within 0.05 of fp32's."""
    reference = engine.train(make_cfg("method=msam", "method.m=4", *SMALL))
    mixed = engine.train(make_cfg("method=msam", "method.m=4", *SMALL, f"precision={precision}"))
    assert abs(mixed["train_loss"] - reference["train_loss"]) < 0.05
    assert mixed["train_loss"] != reference["train_loss"]  # it really ran in lower precision


def test_fp16_skips_a_step_that_overflows_and_lowers_the_scale(make_cfg):
    cfg = make_cfg("method=sam", "precision=fp16", "fp16_scaler.init_scale=1e38", *SMALL)
    engine.train(cfg)
    state = torch.load(runs.run_dir_for(cfg) / "last.pt", weights_only=True)
    assert state["grad_scaler"]["scale"] < 1e38  # overflowing steps were skipped and the scale backed off
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_compiled_model_gives_the_same_training(make_cfg):
    """torch.compile (aot_eager: dynamo and AOTAutograd without a C++ compiler) within 1e-4 of eager."""
    plain = engine.train(make_cfg("method=msam", "method.m=4", "epochs=1"))
    compiled = engine.train(make_cfg("method=msam", "method.m=4", "epochs=1", "compile.enabled=true",
                                     "compile.backend=aot_eager"))
    assert abs(plain["train_loss"] - compiled["train_loss"]) < 1e-4
    assert abs(plain["test_acc"] - compiled["test_acc"]) < 0.3
    state = torch.load(runs.run_dir_for(make_cfg("method=msam", "method.m=4", "epochs=1", "compile.enabled=true",
                                                 "compile.backend=aot_eager")) / "last.pt", weights_only=True)
    assert not any(key.startswith("_orig_mod") for key in state["model"])  # checkpoints load without compile
    assert_same_model(plain, compiled)


def assert_same_model(a: dict, b: dict, tolerance: float = 1e-4) -> None:
    """Every weight and BatchNorm buffer of two finished runs' last.pt within tolerance (relative to
    the tensor's size), and num_batches_tracked equal: the same training, not just the same loss."""
    first = torch.load(Path(a["run_dir"]) / "last.pt", weights_only=True)["model"]
    second = torch.load(Path(b["run_dir"]) / "last.pt", weights_only=True)["model"]
    assert first.keys() == second.keys()
    for key, value in first.items():
        if value.is_floating_point():
            assert (value - second[key]).abs().max() <= tolerance * max(value.abs().max().item(), 1.0), key
        else:
            assert torch.equal(value, second[key]), key
    assert any("running_var" in key for key in first)  # the BatchNorm buffers are among them


def test_channels_last_gives_the_same_training(make_cfg):
    plain = engine.train(make_cfg("method=msam", "method.m=4", "epochs=1"))
    nhwc = engine.train(make_cfg("method=msam", "method.m=4", "epochs=1", "channels_last=true"))
    assert abs(plain["train_loss"] - nhwc["train_loss"]) < 1e-4
    assert_same_model(plain, nhwc)


@pytest.mark.parametrize("method", [("method=rwsam",), ("method=msam", "method.impl=vmap"),
                                    ("method=msam", "method.impl=vmap_ascent")])
def test_compile_refuses_the_methods_that_swap_parameters(make_cfg, method):
    from msam.config import check_config
    from msam.errors import ConfigError

    with pytest.raises(ConfigError, match="compile.enabled=true does not combine"):
        check_config(make_cfg(*method, "compile.enabled=true"))


MMAPPED_AFTER_MALLOC = """
import ctypes, ctypes.util, sys
from msam.allocator import tune_glibc_malloc
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype, libc.malloc.restype = MallInfo2, ctypes.c_void_p
if sys.argv[1] == "tuned":
    assert tune_glibc_malloc(256 * 2**20, 2**30)
before = libc.mallinfo2().hblkhd
block = libc.malloc(64 * 2**20)
print(libc.mallinfo2().hblkhd - before)
"""


@pytest.mark.parametrize("mode", ["default", "tuned"])
def test_glibc_malloc_tuning_keeps_big_blocks_off_mmap(mode):
    """glibc serves a 64 MiB malloc with mmap by default; tuned, from the heap it keeps."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", MMAPPED_AFTER_MALLOC, mode], capture_output=True, text=True,
                            check=True)
    mmapped = int(result.stdout)
    assert mmapped == 0 if mode == "tuned" else mmapped >= 64 * 2**20


def test_allocator_tuning_does_not_change_the_run_directory(make_cfg):
    assert runs.run_dir_for(make_cfg("cpu_allocator.tune=true")) == runs.run_dir_for(make_cfg())
