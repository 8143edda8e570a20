"""Hostile data and environments: each is one line naming the thing and what to do (docs/faults.md).

Running as root (CI does) ignores file permissions and cannot mount a read-only file system, so
permission and read-only faults are injected from outside: `open`, `os.scandir` or `mkstemp`
raise the error the operating system would.
"""

import builtins
import errno
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
from test_data import write_image_folder, write_tiny_cifar

from msam import engine
from msam.bench import main as bench_main
from msam.data import build_data
from msam.errors import ConfigError, RunError
from msam.models import build_model
from msam.report.cli import main as report_main
from msam.sharpness.cli import main as sharpness_main
from msam.train import main as train_main

CPU = torch.device("cpu")


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


def deny(monkeypatch, module, name: str, under: Path) -> None:
    """module.name (open, os.scandir, ...) raises PermissionError for paths under `under`."""
    real = getattr(module, name)

    def denied(path, *args, **kwargs):
        if str(path).startswith(str(under)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(module, name, denied)


# --- CIFAR pickles ---------------------------------------------------------------------------

@pytest.mark.parametrize("damage, reason", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "EOFError|UnpicklingError"),
    (lambda p: p.write_bytes(b"\x00garbage" * 64), "UnpicklingError"),
    (lambda p: p.write_bytes(pickle.dumps({"data": [1, 2, 3]})), "KeyError|ValueError"),  # not CIFAR's layout
])
def test_a_damaged_cifar_pickle_is_one_line(make_cfg, tmp_path, damage, reason):
    cfg = make_cfg("dataset=cifar10")
    write_tiny_cifar(tmp_path / "data" / "cifar10", "cifar10")
    damage(tmp_path / "data" / "cifar10" / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(ConfigError) as error:
        build_data(cfg.dataset, 10, 10, 0, CPU)
    assert f"cifar10 at {tmp_path}/data/cifar10/cifar-10-batches-py is unreadable" in one_line(error)
    assert "copy the 'python version' again" in str(error.value)
    assert __import__("re").search(reason, str(error.value))


def test_cifar_without_read_permission_is_one_line(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg("dataset=cifar100")
    write_tiny_cifar(tmp_path / "data" / "cifar100", "cifar100")
    deny(monkeypatch, builtins, "open", tmp_path / "data")
    with pytest.raises(ConfigError) as error:
        build_data(cfg.dataset, 10, 10, 0, CPU)
    assert "cifar100 at" in one_line(error) and "Permission denied" in str(error.value)


# --- ImageNet folders ------------------------------------------------------------------------

def imagenet_cfg(make_cfg, *extra):
    return make_cfg("dataset=imagenet", "dataset.num_classes=2", "dataset.image_size=32", "dataset.resize=36",
                    "dataset.num_workers=0", *extra)


def test_an_empty_class_folder_is_one_line(make_cfg, tmp_path):
    write_image_folder(tmp_path / "data" / "imagenet")
    (tmp_path / "data" / "imagenet" / "train" / "n03").mkdir()
    with pytest.raises(ConfigError) as error:
        build_data(imagenet_cfg(make_cfg).dataset, 2, 2, 0, CPU)
    assert "imagenet train folder" in one_line(error) and "n03" in str(error.value)


def test_validation_classes_that_differ_from_training_are_one_line(make_cfg, tmp_path):
    root = tmp_path / "data" / "imagenet"
    write_image_folder(root)
    (root / "val" / "n02").rename(root / "val" / "n09")
    with pytest.raises(ConfigError) as error:
        build_data(imagenet_cfg(make_cfg).dataset, 2, 2, 0, CPU)
    assert "val/ needs the same class folders as train/" in one_line(error) and "first: n02" in str(error.value)


def test_an_unreadable_image_folder_is_one_line(make_cfg, tmp_path, monkeypatch):
    write_image_folder(tmp_path / "data" / "imagenet")
    deny(monkeypatch, os, "scandir", tmp_path / "data" / "imagenet" / "train")
    with pytest.raises(ConfigError) as error:
        build_data(imagenet_cfg(make_cfg).dataset, 2, 2, 0, CPU)
    assert "imagenet train folder" in one_line(error) and "Permission denied" in str(error.value)


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_jpeg_stops_the_run_naming_the_file(make_cfg, tmp_path, workers, run_cli, capsys):
    """Stop, not skip (src/msam/data/imagenet.py says why); in a DataLoader worker too."""
    root = tmp_path / "data" / "imagenet"
    write_image_folder(root)
    (root / "train" / "n02" / "img1.JPEG").write_bytes(b"not a jpeg at all")
    code = run_cli(train_main, "dataset=imagenet", f"dataset.root={root}", "dataset.num_classes=2",
                   "dataset.image_size=32", "dataset.resize=36", f"dataset.num_workers={workers}", "method=vanilla",
                   "batch_size=3", "eval_batch_size=6", "epochs=1", "device=cpu", "log_every_steps=0",
                   f"paths.runs={tmp_path}/runs")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "Original Traceback" not in err[0], err  # a worker's, cut to its message
    assert f"unreadable image {root}/train/n02/img1.JPEG" in err[0] and "resumes from the last checkpoint" in err[0]


# --- GLUE TSV --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("", "is unreadable (EmptyDataError"),
    ("text\tlabel\nthe cat\t1\n", "no column 'sentence'"),
    ("sentence\tlabel\nthe cat\tpositive\n", "label 'positive' on data row 1 is not one of 0..1"),
    ("sentence\tlabel\nthe cat\t1\nthe dog\t7\n", "label '7' on data row 2"),
])
def test_a_malformed_glue_tsv_is_one_line(tmp_path, text, message):
    from msam.data.glue import read_tsv

    (tmp_path / "train.tsv").write_text(text)
    with pytest.raises(ConfigError) as error:
        read_tsv(str(tmp_path / "train.tsv"), "sst2", 2)
    assert f"GLUE sst2 file {tmp_path}/train.tsv" in one_line(error) and message in str(error.value)


def test_glue_lines_with_too_many_or_too_few_fields_are_skipped_and_counted(tmp_path, caplog):
    from msam.data.glue import read_tsv

    lines = ["src\t1\t\tthe cat sat", "src\t0\t*\ta mat", "src\t1", "src\t0\t*\ttoo\tmany fields", "src\t1\t\tgood"]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING", logger="msam"):
        columns, labels = read_tsv(str(tmp_path / "train.tsv"), "cola", 2)
    assert columns == [["the cat sat", "a mat", "good"]] and labels == [1, 0, 1]
    assert "skipped 2 malformed line(s) of 5" in caplog.text


# --- model.checkpoint of another architecture --------------------------------------------------

@pytest.mark.parametrize("model", ["imagenet_resnet50", "vit_s32"])
@pytest.mark.parametrize("content", ["another model's weights", "not a checkpoint"])
def test_a_checkpoint_of_another_model_is_one_line(make_cfg, tmp_path, model, content):
    path = tmp_path / "weights.pt"
    if content == "not a checkpoint":
        path.write_text("hello")
    else:
        torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    cfg = make_cfg(f"model={model}", f"model.checkpoint={path}").model
    with pytest.raises(ConfigError) as error:
        build_model(cfg, 10, (3, 32, 32))
    assert f"model.checkpoint={path} does not load into model={model}" in one_line(error)


# --- run folders -------------------------------------------------------------------------------

def test_a_read_only_file_system_is_one_line_before_any_compute(make_cfg, monkeypatch):
    import msam.runs

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(msam.runs.tempfile, "mkstemp", read_only)
    monkeypatch.setattr(engine, "setup", lambda *a, **k: pytest.fail("setup ran: compute before the check"))
    with pytest.raises(ConfigError) as error:
        engine.train(make_cfg())
    assert "cannot write to" in one_line(error) and "Read-only file system" in str(error.value)
    assert "set paths.runs (or MSAM_RUNS) to a folder you can write" in str(error.value)


def test_a_damaged_summary_in_the_run_directory_is_one_line(make_cfg):
    cfg = make_cfg("epochs=1")
    run_dir = engine.runs.run_dir_for(cfg)
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text('{"status": "fini')
    with pytest.raises(RunError) as error:
        engine.train(cfg)
    assert f"{run_dir}/summary.json is unreadable (JSONDecodeError" in one_line(error)


@pytest.mark.parametrize("arg, message", [
    ("run={p}/empty", "not a run directory (no summary.json/config.yaml): {p}/empty"),
    ("run={p}/file.txt", "run={p}/file.txt is not a folder"),
    ("runs={p}/missing", "runs={p}/missing is not a folder"),
    ("runs={p}/empty", "no run directories (no summary.json) under {p}/empty"),
    ("run={p}/damaged", "{p}/damaged/summary.json is unreadable"),
])
def test_sharpness_pointed_at_something_that_is_no_run_is_one_line(arg, message, tmp_path, run_cli, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "summary.json").write_text("[1, 2")
    (tmp_path / "damaged" / "config.yaml").write_text("seed: 0\n")
    assert run_cli(sharpness_main, arg.format(p=tmp_path), "device=cpu") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(p=tmp_path) in err[0], err


# --- the contract of all four tools --------------------------------------------------------------

TOOLS = {"msam-train": train_main, "msam-sharpness": sharpness_main, "msam-report": report_main,
         "msam-bench": bench_main}


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("arg, message", [
    ("sed=1", "Could not override 'sed'"),              # a typo in a key
    ("seed=[1,", "cannot parse the override 'seed=[1,': no viable alternative"),  # an override Hydra cannot parse
    ("+x=${nope}", "config key 'x': Interpolation key 'nope' not found"),
])
def test_every_tool_answers_bad_command_lines_in_one_line_with_exit_2(tool, arg, message, run_cli, capsys):
    assert run_cli(TOOLS[tool], arg) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{tool}: error: ") and message in err[0], err


@pytest.mark.parametrize("args, message", [
    (["models=[resnet9]"], "unknown model 'resnet9'; valid: imagenet_resnet50, imagenet_wrn50_2, resnet18"),
    (["ms=[0,4]"], "ms must be a list of 1 or more items, each an integer >= 1 (0 is not), got [0, 4]"),
    (["baselines=[sam]"], "baselines must include vanilla and sam"),
    (["ms=[4]", "batch_sizes=[6]"], "no m in ms=[4] divides a batch size in batch_sizes=[6]"),
    (["name=a/b"], "name must be a file name"),
])
def test_bench_checks_its_config_before_building_a_model(args, message, run_cli, capsys, monkeypatch):
    import msam.bench

    monkeypatch.setattr(msam.bench, "bench_model", lambda *a: pytest.fail("a model was built"))
    assert run_cli(bench_main, *args, "device=cpu") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_hydra_full_error_shows_the_traceback(tmp_path):
    import subprocess

    command = [sys.executable, "-m", "msam.report.cli", "tables=tab9", f"runs={tmp_path}"]
    plain = subprocess.run(command, capture_output=True, text=True, timeout=120)
    full = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ,
                                                                                     "HYDRA_FULL_ERROR": "1"})
    assert plain.returncode == 2 and plain.stderr.strip().count("\n") == 0, plain.stderr
    assert "Traceback (most recent call last)" in full.stderr and "ConfigError: unknown table 'tab9'" in full.stderr


def test_an_unexpected_error_is_one_line_with_exit_1(make_cfg, run_cli, capsys, monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(engine, "setup", broken)
    assert run_cli(train_main, "epochs=1", "device=cpu", f"paths.runs={tmp_path}/runs") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["msam-train: error: ZeroDivisionError: division by zero (a bug? HYDRA_FULL_ERROR=1 shows the "
                   "traceback)"]
