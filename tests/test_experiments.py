"""Every experiment and table config composes and smoke-runs; a sample matches the paper's appendix."""

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from msam import engine, runs
from msam.config import check_config
from msam.domains import SEED_MAX

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
TABLES = sorted(p.stem for p in (CONF / "table").glob("*.yaml"))


def compose_cfg(*overrides, hydra_config=False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra_config)


def smoke_run(tmp_path, *overrides):
    cfg = compose_cfg(*overrides, "smoke=on")
    with open_dict(cfg):
        cfg.paths.runs = str(tmp_path / "runs")
    summary = engine.train(cfg)
    assert summary["status"] == "finished" and summary["derived"]["steps_per_epoch"] == 2
    return cfg, summary


def test_there_is_one_experiment_per_table_2_row():
    assert len([e for e in EXPERIMENTS if e.startswith("tab2_")]) == 27
    for data in ("c10", "c100"):
        for model in ("resnet50", "wrn28_10", "vit_b16"):
            for method in ("vanilla", "sam", "msam"):
                assert f"tab2_{data}_{model}_{method}" in EXPERIMENTS
    for model in ("resnet50", "wrn50_2", "vit_s32"):
        for method in ("vanilla", "sam", "msam"):
            assert f"tab2_in1k_{model}_{method}" in EXPERIMENTS


def test_there_is_one_experiment_per_rwsam_poster_cifar_row():
    import pandas as pd

    from msam.report.paper import PAPER_DIR

    poster = pd.read_csv(PAPER_DIR / "rwsam_accuracy.csv")
    cifar = poster[poster["dataset"].isin(["cifar10", "cifar100"]) & poster["model"].isin(["resnet18", "resnet50",
                                                                                           "wrn28_10"])]
    assert len(cifar) == 18
    for row in cifar.itertuples():
        short = {"cifar10": "c10", "cifar100": "c100"}[row.dataset]
        cfg = compose_cfg(f"experiment=rwsam_{short}_{row.model}_{row.method}")
        assert (cfg.dataset.name, cfg.model.name, cfg.method.name) == (row.dataset, row.model, row.method)
        check_config(compose_cfg(f"experiment=rwsam_{short}_{row.model}_{row.method}", "smoke=on"))
        assert f"{row.mean:.2f} ± {row.std:.2f}" in (CONF / "experiment" / f"rwsam_{short}_{row.model}_{row.method}.yaml").read_text()


# The poster's SGD and SAM rows reuse Table 2's recipes and methods (and resnet18's recipe is
# smoke-run by its RW-SAM row): the poster-row test composes them; smoke-running them too would
# add a minute to the suite and test nothing new. Likewise Table 2's CIFAR-10 rows are their
# CIFAR-100 twins with ten classes (same recipe, model, method and image pipeline; CIFAR-10 itself
# is smoke-run by the RW-SAM rows): they are composed and checked as the paper runs them
# (test_every_experiment_as_the_paper_runs_it_passes_the_checks), not smoke-run (1.5 min).
# The vanilla and SAM rows of the paper-sized models (ImageNet's at 224x224, ViT-B/16) are composed
# and checked too, not smoke-run: their mSAM row builds and trains the same model and recipe
# through the same SAM step (m = 2 there, m = 1 for SAM), and these eight rows' smoke runs cost
# a minute more.
# Two paper-sized mSAM rows are built and stepped, not smoke-run: ImageNet's WRN-50-2 and CIFAR-100's
# ViT-B/16 train through the code of the ImageNet ResNet-50 and ViT-S/32 rows' smoke runs (the
# same torchvision and timm builders, data pipelines, SAM step and impl=auto tuning; CIFAR's
# resize to 224 is smoke-run in test_sharpness_run.py). Their smoke runs cost 1.5 minutes, most of
# it impl=auto timing three implementations of a 69M- or 86M-parameter model twice each:
# test_the_built_only_rows_build_and_take_an_msam_step builds each from its own config and takes
# one mSAM step on inputs of its shape instead.
PAPER_SIZED = ("tab2_in1k_", "tab2_c100_vit_b16_")
BUILT_ONLY = {"tab2_in1k_wrn50_2_msam": 224, "tab2_c100_vit_b16_msam": 224}  # the model's input side
SMOKE_RUN = [e for e in EXPERIMENTS if not (e.startswith("rwsam_") and not e.endswith("_rwsam"))
             and not e.startswith("tab2_c10_") and not (e.startswith(PAPER_SIZED) and not e.endswith("_msam"))
             and e not in BUILT_ONLY]


def test_the_rows_not_smoke_run_pass_the_smoke_checks(monkeypatch):
    import msam.config

    monkeypatch.setattr(msam.config, "check_data", lambda *a, **k: None)
    skipped = [e for e in EXPERIMENTS if e not in SMOKE_RUN]
    assert len(skipped) == 9 + 12 + 8 + 2  # Table 2 CIFAR-10, the poster's SGD/SAM rows, paper-sized vanilla/SAM, BUILT_ONLY
    for name in skipped:
        check_config(compose_cfg(f"experiment={name}", "smoke=on"))


def test_cifar10_rows_are_their_cifar100_twins_with_ten_classes():
    for name in (e for e in EXPERIMENTS if e.startswith("tab2_c10_")):
        ten, hundred = compose_cfg(f"experiment={name}"), compose_cfg(f"experiment={name.replace('c10', 'c100')}")
        assert (ten.dataset.num_classes, hundred.dataset.num_classes) == (10, 100)
        for key in ("model", "method", "optim", "schedule", "batch_size", "epochs", "label_smoothing"):
            assert ten[key] == hundred[key], (name, key)
        assert ten.dataset.get("resize") == hundred.dataset.get("resize")


@pytest.mark.parametrize("name", SMOKE_RUN)
def test_experiment_smoke_runs(name, tmp_path):
    cfg, summary = smoke_run(tmp_path, f"experiment={name}")
    real = compose_cfg(f"experiment={name}")
    assert (cfg.dataset.name, cfg.model.name, cfg.method.name) == (real.dataset.name, real.model.name, real.method.name)
    if "image_shape" in real.dataset:
        assert tuple(cfg.dataset.image_shape) == tuple(real.dataset.image_shape)  # same shape as the real data
    else:  # GLUE: token sequences within the real max_length, a tiny RoBERTa instead of RoBERTa-base
        assert cfg.dataset.max_length == real.dataset.max_length and summary["model"] == "roberta_base"


@pytest.mark.parametrize("name", sorted(BUILT_ONLY))
def test_the_built_only_rows_build_and_take_an_msam_step(name):
    import torch

    from msam.engine import per_sample_cross_entropy
    from msam.methods import build_method
    from msam.methods.autotune import Choice
    from msam.models import build_model

    cfg = compose_cfg(f"experiment={name}", "smoke=on")
    side, classes = BUILT_ONLY[name], cfg.dataset.num_classes
    assert compose_cfg(f"experiment={name}").model.name == cfg.model.name
    torch.manual_seed(0)
    model = build_model(cfg.model, classes, (3, side, side), cfg.get("smoke")).train()
    method = build_method(cfg.method, model=model, choice=Choice("loop"))
    assert method.m == 2  # the smoke overlay's mSAM
    inputs, targets = torch.randn(2, 3, side, side), torch.randint(0, classes, (2,))
    loss, logits = method(model, per_sample_cross_entropy(0.0), (inputs, targets))
    assert logits.shape == (2, classes) and torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


# (experiment, dataset, model, optimizer, lr, batch, epochs, momentum, weight decay, label smoothing,
#  warm-up, clip, rho, m): typed from the paper's Tables C.1 and C.2, independently of conf/.
APPENDIX = [
    ("tab2_c10_resnet50_msam", "cifar10", "resnet50", "sgd", 0.5, 512, 200, 0.9, 5e-4, 0.1, 0.05, None, 0.2, 32),
    ("tab2_c100_resnet50_sam", "cifar100", "resnet50", "sgd", 0.5, 512, 200, 0.9, 5e-4, 0.1, 0.05, None, 0.2, 1),
    ("tab2_c100_wrn28_10_msam", "cifar100", "wrn28_10", "sgd", 0.75, 512, 200, 0.9, 5e-4, 0.1, 0.05, None, 0.2, 32),
    ("tab2_c10_vit_b16_msam", "cifar10", "vit_b16", "adamw", 1e-3, 512, 20, None, 0.3, 0.0, 0.05, 1.0, 0.3, 32),
    ("tab2_in1k_resnet50_msam", "imagenet", "imagenet_resnet50", "sgd", 0.8, 2048, 90, 0.9, 1e-4, 0.1, 0.177, None,
     0.05, 4),
    ("tab2_in1k_wrn50_2_msam", "imagenet", "imagenet_wrn50_2", "sgd", 0.5, 2048, 100, 0.9, 1e-4, 0.1, 0.01, None,
     0.05, 8),
    ("tab2_in1k_vit_s32_sam", "imagenet", "vit_s32", "adamw", 3e-3, 4096, 300, None, 0.3, 0.0, 0.10, 1.0, 0.05, 1),
    ("tab2_in1k_vit_s32_vanilla", "imagenet", "vit_s32", "adamw", 3e-3, 4096, 300, None, 0.3, 0.0, 0.10, 1.0, 0.0, 1),
]


@pytest.mark.parametrize("row", APPENDIX, ids=[r[0] for r in APPENDIX])
def test_experiment_matches_the_papers_appendix(row):
    name, dataset, model, optimizer, lr, batch, epochs, momentum, wd, smoothing, warmup, clip, rho, m = row
    cfg = compose_cfg(f"experiment={name}")
    assert (cfg.dataset.name, cfg.model.name, cfg.optim.name) == (dataset, model, optimizer)
    assert (cfg.optim.lr, cfg.batch_size, cfg.epochs) == (lr, batch, epochs)
    assert cfg.optim.get("momentum") == momentum and cfg.optim.weight_decay == wd
    assert cfg.label_smoothing == smoothing and cfg.grad_clip_norm == clip
    assert cfg.schedule.name == "onecycle" and cfg.schedule.warmup_fraction == warmup
    assert (cfg.method.rho, cfg.method.m) == (rho, m)


def test_vit_b16_rows_refuse_to_start_without_pretrained_weights(tmp_path):
    from msam.errors import ConfigError

    cfg = compose_cfg("experiment=tab2_c100_vit_b16_msam")
    with pytest.raises(ConfigError, match="model.checkpoint=PATH"):
        check_config(cfg)


def sweep_jobs(table):
    """The jobs of a table's sweep: the cartesian product of hydra.sweeper.params."""
    params = compose_cfg(f"table={table}", hydra_config=True).hydra.sweeper.params
    choices = [[f"{key}={value}" for value in str(values).split(",")] for key, values in params.items()]
    return list(itertools.product(*choices))


EXPECTED_JOBS = {"tab2_c10": 45, "tab2_c100": 45, "tab2_in1k": 45, "tab4": 30, "fig1": 30, "figB1_msam_first": 24,
                 "figB1_vanilla_first": 24, "tabB1_c100": 27, "tab5_in1k": 27, "rwsam_c10": 27, "rwsam_c100": 27, "tab3": 60,
                 # scripts/reproduce_digits.sh's sweeps (its smoke version runs them: tests/test_reproduce_digits.py)
                 "digits_reference": 15, "digits_m": 25, "digits_rho_sam": 6, "digits_rho": 12, "digits_rwsam": 48,
                 "digits_switch_to_vanilla": 9, "digits_switch_to_msam": 9, "digits_rwsam_exact": 18}


@pytest.mark.parametrize("table", TABLES)
def test_table_sweep_composes_every_configuration_and_smoke_runs_one(table, tmp_path, monkeypatch):
    import msam.config

    cfg = compose_cfg(f"table={table}", hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    jobs = sweep_jobs(table)
    assert len(jobs) == EXPECTED_JOBS[table]
    if not table.startswith("digits_"):  # the digits sweeps run end to end in tests/test_reproduce_digits.py
        smoke_run(tmp_path, f"table={table}", *jobs[0], *smoke_extra(jobs[0]))  # one job through the engine
    # Every job as the paper runs it passes the input checks (no false refusal of a real config);
    # the data sets and pretrained weights are not on this machine.
    monkeypatch.setattr(msam.config, "check_data", lambda *a, **k: None)
    for job in jobs_but_seeds(jobs):
        check_config(compose_cfg(f"table={table}", *job, "++model.pretrained_required=false"))


def jobs_but_seeds(jobs):
    """One job per configuration: the seed is the one value the input checks take alone (its range),
    and composing every seed of every row again would cost a minute of the suite."""
    seeds = {o for job in jobs for o in job if o.startswith("seed=")}
    assert all(0 <= int(o.split("=")[1]) <= SEED_MAX for o in seeds), seeds
    configurations = list(dict.fromkeys(tuple(o for o in job if not o.startswith("seed=")) for job in jobs))
    assert len(configurations) * max(len(seeds), 1) == len(jobs)  # every configuration with every seed
    return configurations


def test_every_experiment_as_the_paper_runs_it_passes_the_checks(monkeypatch):
    import msam.config

    monkeypatch.setattr(msam.config, "check_data", lambda *a, **k: None)  # no data sets on this machine
    for name in EXPERIMENTS:
        check_config(compose_cfg(f"experiment={name}", "++model.pretrained_required=false"))


def smoke_extra(job):
    """The smoke overlay shrinks `method.m`; a swept switch.then.m must shrink with it."""
    return ("switch.then.m=2", "batch_size=2") if any(o.startswith("switch.then.m=") for o in job) else ()


def test_a_table_launches_its_sweep_from_the_command_line(tmp_path):
    command = [sys.executable, "-m", "msam.train", "table=tab4", "smoke=on", f"paths.runs={tmp_path}/runs",
               "hydra.sweeper.params.experiment='tab2_c100_resnet50_vanilla,tab2_c100_resnet50_sam'",
               "hydra.sweeper.params.seed=0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    names = sorted(p.parent.name for p in (tmp_path / "runs").glob("*/summary.json"))
    assert len(names) == 2 and names[0].startswith("cifar100_resnet50_")
