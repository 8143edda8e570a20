"""Bad input: one clear line on stderr, a non-zero exit, no traceback, before any training."""

import subprocess
import sys

import pytest

BAD_INPUTS = {
    "m does not divide the batch": (["method=msam", "method.m=7"], "does not divide batch_size=64"),
    "m below one": (["method=msam", "method.m=0"], "method.m must be an integer >= 1"),
    "negative rho": (["method=sam", "method.rho=-0.1"], "method.rho must be a finite number in [0, inf), got -0.1"),
    "unknown dataset": (["dataset=mnist"], "unknown dataset 'mnist'; valid: cifar10, cifar100, cola, digits"),
    "unknown model": (["model=resnet7"], "unknown model 'resnet7'; valid:"),
    "unknown method": (["method=adam"], "unknown method 'adam'; valid: asam, msam, rwsam, sam, vanilla"),
    "unknown method in a sweep": (["-m", "method=sam,adam"], "unknown method 'adam'"),
    "missing data": (["dataset=cifar10", "model=resnet18"], "cifar10 not found: looked for"),
    "epochs below one": (["epochs=0"], "epochs must be an integer >= 1"),
    "sam with m": (["method=sam", "method.m=4"], "use msam for m=4"),
    "asam without adaptive": (["method=asam", "method.adaptive=false"], "method=asam is SAM with adaptive=true"),
    "rwsam probe mode": (["method=rwsam", "method.probe_bn=eval"], "method.probe_bn must be one of batch, running, got 'eval'"),
    "bad switch fraction": (["switch=to_vanilla", "switch.fraction=1.5"],
                            "switch.fraction must be null or a finite number in (0, 1), got 1.5"),
    "nan learning rate": (["optim.lr=nan"], "optim.lr must be a finite number in (0, inf), got nan"),
    "infinite rho": (["method.rho=inf"], "method.rho must be a finite number in [0, inf), got inf"),
    "an int torch cannot hold": (["method.eps=99999999999999999999"], "method.eps must be a finite number in (0, inf)"),
    "a dict where a number belongs": (["method=sam", "method.rho={a:1}"],
                                      "method.rho must be a finite number in [0, inf), got {'a': 1}"),
    "a list of the wrong length": (["dataset.image_shape=[1,8]"], "dataset.image_shape must be a list of 3 items"),
    "normalisation of other channels": (["dataset.mean=[0.1,0.2]"], "dataset.mean has 2 values for 1-channel images"),
    "ViT patches larger than the images": (["model=vit_s32"], "model=vit_s32 cuts images into 32x32 patches: 8x8 images hold none"),
    "ImageNet model on 1-channel images": (["model=imagenet_resnet50"], "takes 3-channel images; these have 1"),
    "BatchNorm on one value per channel": (["model=resnet18", "method.m=64"],
                                           "micro-batches of 1 give it one value per channel"),
    "the small CNN's pooling rounds down": (["dataset=synthetic", "dataset.image_shape=[3,3,3]", "method=vanilla",
                                             "batch_size=1"], "shrinks 3x3 images to 1x1"),
    "images of another shape than the data set's": (["dataset.image_shape=[1,16,16]"],
                                                    "dataset.image_shape=[1, 16, 16], but digits images are [1, 8, 8]"),
    "an unknown timm model": (["dataset=cifar10", "model=vit_small", "model.timm_name=vit_huge_patch99"],
                              "model.timm_name=vit_huge_patch99 is not a timm model"),
    "an architecture without its keys": (["model.arch=torchvision"], "model.arch=torchvision needs model.torchvision_name"),
    "Wide-ResNet depth": (["model=wrn16_8", "model.depth=17"], "a Wide-ResNet's depth is 6n + 4"),
    "nesterov without momentum": (["optim.nesterov=true", "optim.momentum=0"],
                                  "optim.nesterov=true needs optim.momentum > 0"),
    "unknown compile backend": (["compile.enabled=true", "method.impl=loop", "compile.backend=tvm2"],
                                "unknown compile.backend 'tvm2'"),
    "a OneCycle warm-up of one step": (["method=vanilla", "batch_size=719", "epochs=1", "schedule.warmup_fraction=0.5"],
                                       "is a warm-up of exactly 1 step"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_clear_line(case, tmp_path, run_cli, capsys):
    """In this process, through msam-train's own entry point (test_cli_process runs a real one)."""
    from msam.train import main

    args, expected = BAD_INPUTS[case]
    assert run_cli(main, *args, f"paths.runs={tmp_path}/runs", f"paths.data={tmp_path}/nothing", "device=cpu") == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("msam-train: error: "), err
    assert expected in lines[0]
    assert "Traceback" not in out + err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("last.pt"))


def test_bad_input_in_a_real_process_is_one_line_and_exit_2(tmp_path):
    result = run_command(["-m", "method=sam,adam"], tmp_path)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "msam-train: error: unknown method 'adam'; valid: asam, msam, rwsam, sam, vanilla"], result.stderr


@pytest.mark.parametrize("args", [
    ["model=resnet18", "method.m=32"],  # 2 samples of 1x1 before the last BatchNorm: enough
    ["dataset=synthetic", "dataset.image_shape=[3,4,4]", "method=vanilla", "batch_size=1"],  # small CNN: 2x2
    ["dataset=cifar10", "model=vit_s32", "dataset.resize=36"],  # one 32x32 patch (timm drops the rest)
    ["model=roberta_base", "dataset=sst2", "model.config={hidden_size:64}"],  # a transformers config
    ["dataset.mean=[0.5]", "dataset=cifar10"],  # one mean for every channel
])
def test_valid_edges_are_accepted(args, make_cfg, monkeypatch):
    """The other side of the checks above: the smallest settings that work are not refused."""
    import msam.config
    from msam.config import check_config

    monkeypatch.setattr(msam.config, "check_data", lambda *a, **k: None)  # no data on disk here
    check_config(make_cfg(*args))


def run_command(args, tmp_path):
    command = [sys.executable, "-m", "msam.train", *args, f"paths.runs={tmp_path}/runs",
               f"paths.data={tmp_path}/nothing", "device=cpu"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_a_good_command_trains(tmp_path):
    result = run_command(["method=msam", "method.m=4", "epochs=1", "log_every_steps=0"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "runs").glob("*/summary.json"))) == 1
    assert not (tmp_path / "outputs").exists()  # Hydra writes no timestamped folders


def test_a_multirun_sweep_trains_each_combination(tmp_path):
    result = run_command(["-m", "method=vanilla,sam", "seed=0,1", "epochs=1", "log_every_steps=0"], tmp_path)
    assert result.returncode == 0, result.stderr
    summaries = sorted(p.parent.name for p in (tmp_path / "runs").glob("*/summary.json"))
    assert len(summaries) == 4 and sum("_sam_" in name for name in summaries) == 2


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_that_is_not_there_is_one_line(tmp_path):
    command = [sys.executable, "-m", "msam.train", "epochs=1", f"paths.runs={tmp_path}/runs", "device=cuda"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "device=cuda but this machine has no usable GPU" in lines[0] and "Traceback" not in result.stderr


def test_too_few_gpus_is_one_line(monkeypatch):
    import torch

    from msam.engine import pick_device
    from msam.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"device=cuda:2 but only 2 GPU\(s\) are visible \(cuda:0..cuda:1\)"):
        pick_device("cuda:2")


def test_a_runs_folder_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    command = [sys.executable, "-m", "msam.train", "epochs=1", f"paths.runs={tmp_path}/a_file/runs", "device=cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"cannot write to {tmp_path}/a_file/runs" in lines[0] and "set paths.runs" in lines[0]


def test_a_sweep_goes_on_past_a_failing_job_and_exits_with_its_code(tmp_path):
    """Job 0 (m=3 does not divide 64) fails in one line; job 1 trains; the sweep then exits 2."""
    result = run_command(["-m", "method.m=3,4", "epochs=1", "log_every_steps=0"], tmp_path)
    errors = [line for line in result.stderr.strip().splitlines() if "error" in line]
    assert result.returncode == 2, result.stderr
    assert errors == ["msam-train: error: method.m=3 does not divide batch_size=64 into equal micro-batches",
                      "msam-train: error: 1 job(s) of the sweep failed, each with its line above"], result.stderr
    assert ["_m4_" in p.parent.name for p in (tmp_path / "runs").glob("*/summary.json")] == [True]


def test_under_torchrun_only_the_first_process_says_why(tmp_path, run_cli, capsys, monkeypatch):
    from msam.train import main

    monkeypatch.setenv("RANK", "1")
    assert run_cli(main, "method.m=3", f"paths.runs={tmp_path}/runs", "device=cpu") == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert run_cli(main, "method.m=3", f"paths.runs={tmp_path}/runs", "device=cpu") == 2
    assert "does not divide" in capsys.readouterr().err
