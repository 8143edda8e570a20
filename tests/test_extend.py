"""A user's own config folder, model and data set (docs/training.md, "Your own configs, model and
data"): the example project (docs/example_project) and variants of it, run from a folder outside
the repository, with the editable install. The same from an installed wheel: tests/test_install.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose
from omegaconf import open_dict

from msam import engine, runs
from msam.errors import RunError
from msam.bench import main as bench_main
from msam.search_path import hydra_initialised
from msam.train import main as train_main

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "example_project"
SMALL = ["dataset.train_size=128", "dataset.test_size=64", "epochs=2", "log_every_steps=0", "device=cpu"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A copy of the example project as the working folder, its package importable."""
    folder = tmp_path / "project"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("runs", "report", "bench", "__pycache__"))
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    for name in [n for n in sys.modules if n == "my_project" or n.startswith("my_project.")]:
        monkeypatch.delitem(sys.modules, name)
    return folder


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def the_run(folder: Path) -> Path:
    found = [p.parent for p in folder.glob("*/summary.json")]
    assert len(found) == 1, found
    return found[0]


def cfg_from(project: Path, *overrides: str):
    """The composed config of a command line with --config-dir conf, as msam-train composes it."""
    with hydra_initialised(project / "conf"):
        cfg = compose("train", overrides=[*SMALL, "++method.impl=loop", *overrides])
    with open_dict(cfg):
        cfg.paths.runs = str(project / "runs")
    return cfg


# --- user config folders --------------------------------------------------------------------

MINE = """# @package _global_
defaults:
  - override /method: sam
epochs: 1
seed: 7
optim:
  lr: 0.02
"""


@pytest.mark.parametrize("how", ["--config-dir", "hydra.searchpath file://", "hydra.searchpath pkg://"])
def test_an_experiment_in_a_users_folder_composes_and_runs(how, tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "user_pkg" / "__init__.py", "")
    write(tmp_path / "user_pkg" / "conf" / "__init__.py", "")  # Hydra's pkg:// reads packages
    write(tmp_path / "user_pkg" / "conf" / "experiment" / "mine.yaml", MINE)
    monkeypatch.syspath_prepend(str(tmp_path))
    where = {"--config-dir": ["--config-dir", "user_pkg/conf"],
             "hydra.searchpath file://": [f"hydra.searchpath=[file://{tmp_path}/user_pkg/conf]"],
             "hydra.searchpath pkg://": ["hydra.searchpath=[pkg://user_pkg.conf]"]}[how]
    assert run_cli(train_main, *where, "experiment=mine", "paths.runs=runs", "log_every_steps=0") == 0
    summary = json.loads((the_run(tmp_path / "runs") / "summary.json").read_text())
    assert (summary["status"], summary["method"], summary["seed"], summary["epochs"]) == ("finished", "sam", 7, 1)


def test_users_model_dataset_and_table_files_compose_and_run(project, run_cli):
    # The example's model and data set by name, and a table of the user's (a sweep) over them
    write(project / "conf" / "table" / "mine.yaml", """# @package _global_
hydra:
  mode: MULTIRUN
  sweeper:
    params:
      method: vanilla,sam
""")
    args = ["--config-dir", "conf", "dataset=shapes", "model=tiny_convnet", "table=mine", "paths.runs=runs",
            "++method.impl=loop", *SMALL]
    assert run_cli(train_main, *args) == 0
    summaries = [json.loads(p.read_text()) for p in (project / "runs").glob("*/summary.json")]
    assert sorted((s["method"], s["dataset"], s["model"], s["status"]) for s in summaries) == [
        ("sam", "shapes", "tiny_convnet", "finished"), ("vanilla", "shapes", "tiny_convnet", "finished")]


@pytest.mark.parametrize("args, message", [
    (["--config-dir", "conf", "experiment=nope"], "unknown experiment 'nope'; valid: digits_axes, "),
    (["--config-dir", "conf", "model=nope"], "unknown model 'nope'; valid: "),
    (["hydra.searchpath=[file://conf]", "dataset=nope"], "unknown dataset 'nope'; valid: "),
    (["--config-dir", "no_such_folder", "experiment=shapes"], "--config-dir no_such_folder: no such folder"),
    (["hydra.searchpath=[file://no_such_folder]", "experiment=shapes"],
     "hydra.searchpath entry file://no_such_folder: no such folder"),
    (["--config-dir", "conf", "experiment=shapes", "optim.lr=-1"], "optim.lr must be"),
    (["--config-dir", "conf", "experiment=shapes", "dataset.mean=[0.1,0.2]"], "dataset.mean has 2 values"),
])
def test_bad_input_with_a_users_folder_is_one_line(args, message, project, run_cli, capsys):
    assert run_cli(train_main, *args, "paths.runs=runs") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("msam-train: error: ") and message in err[0], err
    if "unknown" in message:  # the user's own options are listed with msam's
        assert {"experiment": "shapes", "model": "tiny_convnet", "dataset": "shapes"}[message.split()[1]] in err[0]
    assert not (project / "runs").exists()


# --- a model and a data set of one's own (_target_) -------------------------------------------

@pytest.mark.parametrize("method, impl", [("vanilla", "loop"), ("sam", "loop"), ("asam", "loop"), ("rwsam", "loop"),
                                          ("msam", "loop"), ("msam", "vmap"), ("msam", "vmap_ascent")])
def test_every_method_trains_a_users_model_on_a_users_data_set(method, impl, project):
    cfg = cfg_from(project, "experiment=shapes", f"method={method}", f"++method.impl={impl}")
    summary = engine.train(cfg)
    assert summary["status"] == "finished" and summary["epochs_completed"] == 2
    if method in ("msam", "rwsam"):
        assert summary["derived"]["method.impl"] == impl
    built = json.loads((runs.run_dir_for(cfg) / "provenance.json").read_text())["built"]
    assert built["model"]["class"] == "my_project.models.TinyConvNet" and built["model"]["parameters"] == 1340
    assert built["model"]["source"]["file"] == str(project / "my_project" / "models.py")
    assert built["data"]["target"] == "my_project.data.shapes" and built["data"]["train_size"] == 128
    assert len(built["data"]["fingerprint"]) == 16


def test_the_vmap_implementations_equal_the_loop_on_a_users_model(project):
    # Same config, three implementations: the same training up to float32 rounding
    finals = {}
    for impl in ("loop", "vmap", "vmap_ascent"):
        cfg = cfg_from(project, "experiment=shapes", "method=msam", "method.m=4", f"++method.impl={impl}")
        with open_dict(cfg):
            cfg.paths.runs = str(project / "runs" / impl)
        assert engine.train(cfg)["derived"]["method.impl"] == impl  # it ran, not a fallback to the loop
        finals[impl] = torch.load(runs.run_dir_for(cfg) / "last.pt", weights_only=True)["model"]
    for impl in ("vmap", "vmap_ascent"):
        difference = max((finals[impl][k].double() - finals["loop"][k].double()).abs().max().item()
                         for k in finals["loop"])
        print(impl, difference)
        assert difference < 1e-5


def test_a_users_run_resumes_bit_identical(project, train_interrupted):
    cfg = cfg_from(project, "experiment=shapes", "method=msam", "method.m=4", "epochs=3")
    engine.train(cfg)
    interrupted = cfg.copy()
    interrupted.paths.runs = str(project / "interrupted")
    train_interrupted(interrupted, in_epoch=2)
    a = torch.load(runs.run_dir_for(cfg) / "last.pt", weights_only=True)["model"]
    b = torch.load(runs.run_dir_for(interrupted) / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_users_data_set_that_changes_between_calls_is_refused_on_resume(project, train_interrupted, monkeypatch):
    cfg = cfg_from(project, "experiment=shapes", "method=sam", "epochs=3")
    real, calls = engine.train_epoch, {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_epoch", dies)
    with pytest.raises(KeyboardInterrupt):
        engine.train(cfg)
    monkeypatch.setattr(engine, "train_epoch", real)
    # the same config, other code: the data set's function now returns other images
    data = project / "my_project" / "data.py"
    data.write_text(data.read_text().replace("generator=gen)).clamp", "generator=gen) + 0.01).clamp"))
    for name in ("my_project", "my_project.data"):  # imported afresh (a new process would)
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(RunError, match="returned other data than .*last.pt was trained on"):
        engine.train(cfg)


def test_sharpness_and_reports_of_a_users_run(project, run_cli):
    from msam.report.cli import main as report_main
    from msam.sharpness import measure_run
    from msam.sharpness.run import default_settings

    cfg = cfg_from(project, "experiment=shapes", "method=sam", "model.width=4")  # 384 weights: a dense Hessian
    engine.train(cfg)
    run_dir = runs.run_dir_for(cfg)
    result = measure_run(run_dir, default_settings(max_iter=30, tol=1e-3, trace_probes=4, batch_size=64))
    assert result["data"]["samples"] == 128 and result["lambda_max"] > 0
    # lambda_max by a dense eigendecomposition, built from the user's code directly: their function's
    # training images normalised by the config's mean and std, their model with the run's weights
    from my_project.data import shapes
    from my_project.models import TinyConvNet

    raw = shapes(train_size=128, test_size=64, side=12, noise=0.3, seed=0)
    inputs, targets = ((raw["train_images"] - 0.20) / 0.29).double(), raw["train_labels"]
    model = TinyConvNet(1, 4, width=4).double().eval()
    model.load_state_dict(torch.load(run_dir / "last.pt", weights_only=True)["model"])
    names = [n for n, p in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(flat):
        split, start = {}, 0
        for n in names:
            split[n] = flat[start:start + params[n].numel()].view_as(params[n])
            start += params[n].numel()
        logits = torch.func.functional_call(model, {**split, **dict(model.named_buffers())}, (inputs,))
        return torch.nn.functional.cross_entropy(logits, targets)

    flat = torch.cat([params[n].flatten() for n in names])
    dense = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))
    assert abs(result["lambda_max"] - dense[-1].item()) < 1e-3 * dense[-1].item()
    assert run_cli(report_main, "tables=[tab2,tab4]", "runs=runs", "out=report") == 0
    # measured again on other data than the run was trained on: refused
    data = project / "my_project" / "data.py"
    data.write_text(data.read_text().replace("generator=gen)).clamp", "generator=gen) + 0.01).clamp"))
    for name in ("my_project", "my_project.data"):  # imported afresh (a new process would)
        sys.modules.pop(name)
    with pytest.raises(RunError, match="returned other data than .* was trained on"):
        measure_run(run_dir, default_settings(max_iter=30, tol=1e-3, trace_probes=4, batch_size=64))
    table = (project / "report" / "tab4.md").read_text()
    assert "| shapes | tiny_convnet | sam |" in table and f"{result['lambda_max']:.3f}" in table


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_train_a_users_model_as_one(project):
    common = ["--config-dir", "conf", "experiment=shapes", "method=msam", "method.m=4", "method.impl=loop", *SMALL]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(project), os.environ.get("PYTHONPATH")]))}
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    ddp = subprocess.run([torchrun, "--nproc-per-node=2", "--master-port", str(free_port()), "-m", "msam.train",
                          *common, "paths.runs=ddp"], capture_output=True, text=True, timeout=300, cwd=project, env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "msam.train", *common, "paths.runs=single"], capture_output=True,
                            text=True, timeout=300, cwd=project, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    a_dir, b_dir = the_run(project / "ddp"), the_run(project / "single")
    assert a_dir.name == b_dir.name
    assert json.loads((a_dir / "summary.json").read_text())["derived"]["processes"] == 2
    a = torch.load(a_dir / "last.pt", weights_only=True)["model"]
    b = torch.load(b_dir / "last.pt", weights_only=True)["model"]
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) < 1e-4


def test_msam_bench_times_a_users_model(project, run_cli):
    args = ["--config-dir", "conf", "models=[tiny_convnet]", "image_size=12", "channels=1", "num_classes=4",
            "batch_sizes=[32]", "ms=[4]", "impls=[loop]", "baselines=[vanilla,sam]", "repeats=1", "warmup=0",
            "out=bench", "name=mine", "device=cpu"]
    assert run_cli(bench_main, *args) == 0
    rows = json.loads((project / "bench" / "mine.json").read_text())["rows"]
    assert {(r["model"], r["impl"]) for r in rows} == {("tiny_convnet", "vanilla"), ("tiny_convnet", "sam"),
                                                      ("tiny_convnet", "loop")}


BAD = '''
import torch
from torch import nn

from my_project.data import shapes

CONSTANT = 3


def not_a_module(in_channels, num_classes, width):
    return {"weights": None}


def frozen(in_channels, num_classes, width):
    return nn.Linear(1, 1).requires_grad_(False)


class BatchNormMLP(nn.Module):
    def __init__(self, in_channels, num_classes, width):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.LazyLinear(width), nn.BatchNorm1d(width), nn.ReLU(),
                                    nn.Linear(width, num_classes))

    def forward(self, images):
        return self.layers(images)


def uint8_images(**kwargs):
    data = shapes(**kwargs)
    return {**data, "train_images": (255 * data["train_images"]).to(torch.uint8)}


def nan_images(**kwargs):
    data = shapes(**kwargs)
    data["test_images"][0, 0, 0, 0] = float("nan")
    return data


def float_labels(**kwargs):
    data = shapes(**kwargs)
    return {**data, "train_labels": data["train_labels"].float()}


def three_splits(**kwargs):
    data = shapes(**kwargs)
    return data["train_images"], data["train_labels"], data["test_images"]


def without_test_labels(**kwargs):
    data = shapes(**kwargs)
    del data["test_labels"]
    return data
'''


@pytest.mark.parametrize("args, message", [
    (["model._target_=no_such_module.Net"], "model._target_=no_such_module.Net cannot be imported "
                                             "(ModuleNotFoundError: No module named 'no_such_module')"),
    (["model._target_=my_project.models.Nothing"], "model._target_=my_project.models.Nothing cannot be imported"),
    (["model._target_=my_project.bad.CONSTANT"], "is a int, not something to call"),
    (["model._target_=my_project.bad.not_a_module"], "returned a dict, not a torch.nn.Module"),
    (["model._target_=my_project.bad.frozen"], "built a module without trainable parameters"),
    (["+model.depth=3"], "model._target_=my_project.models.TinyConvNet failed: TypeError"),
    (["+model.arch=small_cnn"], "model tiny_convnet has both _target_ and arch"),
    (["~model.name"], "config key 'model.name': Key 'name' is not in struct"),
    (["model.num_classes=3"], "model=tiny_convnet must return logits of shape [batch, 4] (the data set's "
                              "num_classes) for images of shape [1, 12, 12]; it returned [2, 3]"),
    (["model.in_channels=3"], "model=tiny_convnet cannot take this data set's images of shape [1, 12, 12]"),
    (["model._target_=my_project.bad.BatchNormMLP", "batch_size=8", "method=msam", "method.m=8"],
     "model=tiny_convnet fails in training mode on micro-batches of 1 image(s) (batch_size / method.m, per process): "
     "Expected more than 1 value per channel when training"),
    (["~dataset.std"], "a data set given by _target_ needs dataset.std"),
    (["dataset.name=digits"], "dataset.name=digits is one of msam's own data sets"),
    (["model.name=a/b"], "model.name='a/b' names run directories: give a name without '/'"),
    (["dataset.image_shape=[1,10,10]"], "train_images have shape [128, 1, 12, 12], but dataset.image_shape=[1, 10, "
                                        "10]"),
    (["dataset.num_classes=3"], "train_labels run from 0 to 3, outside [0, 3) (dataset.num_classes=3)"),
    (["dataset.mean=[100.0]"], "after (x - dataset.mean) / dataset.std the training images have per-channel mean"),
    (["dataset.std=[0.001]"], "set dataset.mean and dataset.std to the images' own"),
    (["+dataset.colour=red"], "dataset._target_=my_project.data.shapes failed: TypeError"),
    (["dataset._target_=my_project.bad.uint8_images"], "train_images are torch.uint8"),
    (["dataset._target_=my_project.bad.nan_images"], "test_images hold NaN or inf values"),
    (["dataset._target_=my_project.bad.float_labels"], "train_labels are torch.float32; give integer class indices"),
    (["dataset._target_=my_project.bad.three_splits"], "returned a tuple; it must return train_images, train_labels, "
                                                       "test_images, test_labels"),
    (["dataset._target_=my_project.bad.without_test_labels"], "returned a mapping without 'test_labels'"),
])
def test_bad_models_and_data_sets_of_ones_own_are_one_line(args, message, project, run_cli, capsys):
    write(project / "my_project" / "bad.py", BAD)
    assert run_cli(train_main, "--config-dir", "conf", "experiment=shapes", *SMALL, *args, "paths.runs=runs") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("msam-train: error: ") and message in err[0], err
    assert not list((project / "runs").glob("*/last.pt"))  # stopped before training
