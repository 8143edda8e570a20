"""Checks on a composed config (one clear line before any compute) and the derived values.

Derived values (micro-batch size, steps, warm-up steps, ...) are computed here and only here,
and the engine logs them and stores them in summary.json.
"""

from __future__ import annotations

from omegaconf import DictConfig

from msam.data import GLUE_TASKS, check_data
from msam.dist import BACKENDS as DIST_BACKENDS
from msam.errors import ConfigError
from msam.guard import MODES as NONFINITE_MODES
from msam.methods import (DESCENT_LOSSES, METHOD_NAMES, MSAM_IMPLEMENTATIONS, NORM_SCALES, PERTURBED, PROBE_BN_MODES,
                          RWSAM_IMPLEMENTATIONS)
from msam.models import check_model
from msam.optim import OPTIMIZER_NAMES
from msam.schedule import SCHEDULE_NAMES, schedule_steps

PRECISIONS = ("fp32", "bf16", "fp16")
RESUME_MODES = ("auto", "never", "force")


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_method(method: DictConfig, batch_size: int, key: str = "method") -> None:
    require(method.name in METHOD_NAMES, f"unknown {key} '{method.name}'; valid: {', '.join(METHOD_NAMES)}")
    require(is_int(method.m) and method.m >= 1, f"{key}.m must be an integer >= 1, got {method.m!r}")
    require(is_number(method.rho) and method.rho >= 0, f"{key}.rho must be a number >= 0, got {method.rho!r}")
    require(batch_size % method.m == 0,
            f"{key}.m={method.m} does not divide batch_size={batch_size} into equal micro-batches")
    if method.name in ("vanilla", "sam", "asam"):
        require(method.m == 1, f"{key}={method.name} uses one batch (m=1); use msam for m={method.m}")
    if method.name in PERTURBED:
        check_perturbation(method, key)
    if method.name == "msam":
        require(method.impl in MSAM_IMPLEMENTATIONS,
                f"unknown {key}.impl '{method.impl}'; valid: {', '.join(MSAM_IMPLEMENTATIONS)}")
    if method.name == "rwsam":
        check_reweighting(method, key)


def check_perturbation(method: DictConfig, key: str) -> None:
    for flag in ("normalize", "adaptive"):
        require(isinstance(method.get(flag), bool), f"{key}.{flag} must be true or false, got {method.get(flag)!r}")
    require(is_number(method.eta) and method.eta >= 0, f"{key}.eta must be a number >= 0, got {method.eta!r}")
    if method.name == "asam":
        require(method.adaptive, f"{key}=asam is SAM with adaptive=true; use {key}=sam for SAM")


def check_reweighting(method: DictConfig, key: str) -> None:
    require(is_number(method["lambda"]) and method["lambda"] >= 0,
            f"{key}.lambda must be a number >= 0, got {method['lambda']!r}")
    require(is_number(method.delta) and method.delta > 0, f"{key}.delta must be > 0, got {method.delta!r}")
    require(is_int(method.probes) and method.probes >= 1, f"{key}.probes must be an integer >= 1, got {method.probes!r}")
    require(method.norm_scale in NORM_SCALES,
            f"unknown {key}.norm_scale '{method.norm_scale}'; valid: {', '.join(NORM_SCALES)}")
    require(method.probe_bn in PROBE_BN_MODES,
            f"unknown {key}.probe_bn '{method.probe_bn}'; valid: {', '.join(PROBE_BN_MODES)}")
    require(method.get("impl", "loop") in RWSAM_IMPLEMENTATIONS,
            f"unknown {key}.impl '{method.get('impl')}' for RW-SAM; valid: {', '.join(RWSAM_IMPLEMENTATIONS)}")
    require(method.descent_loss in DESCENT_LOSSES,
            f"unknown {key}.descent_loss '{method.descent_loss}'; valid: {', '.join(DESCENT_LOSSES)}")


def check_switch(cfg: DictConfig) -> None:
    """Hybrid training: the second method and the fraction of epochs run by the first."""
    if cfg.switch.then is None:
        return
    fraction = cfg.switch.fraction
    require(is_number(fraction) and 0 < fraction < 1, f"switch.fraction must be in (0, 1), got {fraction!r}")
    check_method(cfg.switch.then, cfg.batch_size, key="switch.then")


def check_training(cfg: DictConfig) -> None:
    require(is_int(cfg.epochs) and cfg.epochs >= 1, f"epochs must be an integer >= 1, got {cfg.epochs!r}")
    require(is_int(cfg.batch_size) and cfg.batch_size >= 1,
            f"batch_size must be an integer >= 1, got {cfg.batch_size!r}")
    require(is_int(cfg.eval_batch_size) and cfg.eval_batch_size >= 1,
            f"eval_batch_size must be an integer >= 1, got {cfg.eval_batch_size!r}")
    require(is_number(cfg.label_smoothing) and 0 <= cfg.label_smoothing < 1,
            f"label_smoothing must be in [0, 1), got {cfg.label_smoothing!r}")
    require(cfg.grad_clip_norm is None or (is_number(cfg.grad_clip_norm) and cfg.grad_clip_norm > 0),
            f"grad_clip_norm must be null or > 0, got {cfg.grad_clip_norm!r}")
    require(cfg.precision in PRECISIONS, f"unknown precision '{cfg.precision}'; valid: {', '.join(PRECISIONS)}")
    require(cfg.resume in RESUME_MODES, f"unknown resume '{cfg.resume}'; valid: {', '.join(RESUME_MODES)}")
    require(is_int(cfg.checkpoint_every_steps) and cfg.checkpoint_every_steps >= 0,
            f"checkpoint_every_steps must be an integer >= 0, got {cfg.checkpoint_every_steps!r}")
    require(is_int(cfg.nonfinite_check_every) and cfg.nonfinite_check_every >= 1,
            f"nonfinite_check_every must be an integer >= 1, got {cfg.nonfinite_check_every!r}")
    require(cfg.nonfinite in NONFINITE_MODES,
            f"unknown nonfinite '{cfg.nonfinite}'; valid: {', '.join(NONFINITE_MODES)}")
    require(isinstance(cfg.tf32, bool), f"tf32 must be true or false, got {cfg.tf32!r}")
    require(is_int(cfg.impl_tuning.steps) and cfg.impl_tuning.steps >= 1,
            f"impl_tuning.steps must be an integer >= 1, got {cfg.impl_tuning.steps!r}")
    require(is_number(cfg.impl_tuning.max_seconds) and cfg.impl_tuning.max_seconds > 0,
            f"impl_tuning.max_seconds must be > 0, got {cfg.impl_tuning.max_seconds!r}")
    require(cfg.dist_backend in DIST_BACKENDS,
            f"unknown dist_backend '{cfg.dist_backend}'; valid: {', '.join(DIST_BACKENDS)}")
    check_compile(cfg)
    require(cfg.device in ("auto", "cpu", "cuda") or str(cfg.device).startswith("cuda:"),
            f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")


def check_pairing(cfg: DictConfig) -> None:
    """Text data sets go with text models, images with image models."""
    text_data, text_model = cfg.dataset.name in GLUE_TASKS, cfg.model.arch == "transformers"
    require(text_data == text_model, f"dataset={cfg.dataset.name} does not go with model={cfg.model.name}: GLUE tasks "
            f"({', '.join(GLUE_TASKS)}) take a transformers model (model=roberta_base), image data sets the others")
    for method in (cfg.method, cfg.switch.then):
        require(not (text_data and method is not None and method.name == "msam" and method.impl == "vmap"),
                "method.impl=vmap takes image tensors; GLUE batches (token dicts) run with impl=loop")


def check_compile(cfg: DictConfig) -> None:
    """torch.compile wraps the module's forward; torch.func's functional calls (impl=vmap, RW-SAM's
    probe) swap its parameters on every call, which a compiled forward would recompile for."""
    if not cfg.compile.enabled:
        return
    for method in (cfg.method, cfg.switch.then):
        if method is None:
            continue
        require(method.name != "rwsam", "compile.enabled=true does not combine with method=rwsam (its probe "
                "calls the model with swapped parameters); turn one off")
        require(not (method.name == "msam" and method.impl == "vmap"),
                "compile.enabled=true does not combine with method.impl=vmap (torch.func over a compiled "
                "module); use impl=loop")


def check_optimisation(cfg: DictConfig) -> None:
    require(cfg.optim.name in OPTIMIZER_NAMES, f"unknown optim '{cfg.optim.name}'; valid: {', '.join(OPTIMIZER_NAMES)}")
    require(is_number(cfg.optim.lr) and cfg.optim.lr > 0, f"optim.lr must be > 0, got {cfg.optim.lr!r}")
    require(is_number(cfg.optim.weight_decay) and cfg.optim.weight_decay >= 0,
            f"optim.weight_decay must be >= 0, got {cfg.optim.weight_decay!r}")
    schedule = cfg.schedule
    require(schedule.name in SCHEDULE_NAMES, f"unknown schedule '{schedule.name}'; valid: {', '.join(SCHEDULE_NAMES)}")
    require(is_number(schedule.warmup_fraction) and 0 <= schedule.warmup_fraction < 1,
            f"schedule.warmup_fraction must be in [0, 1), got {schedule.warmup_fraction!r}")
    if schedule.name == "onecycle":
        require(schedule.warmup_fraction > 0, "schedule=onecycle needs schedule.warmup_fraction > 0")


def check_config(cfg: DictConfig) -> None:
    """Everything that can be checked without touching data or building anything heavy."""
    check_training(cfg)
    check_method(cfg.method, cfg.batch_size)
    check_switch(cfg)
    check_optimisation(cfg)
    check_pairing(cfg)
    check_model(cfg.model)
    check_data(cfg.dataset, cfg.get("smoke"))


def derived_values(cfg: DictConfig, train_size: int, steps_per_epoch: int) -> dict:
    """The values a run computes from its config and data; logged and kept in summary.json."""
    require(steps_per_epoch >= 1,
            f"batch_size={cfg.batch_size} is larger than the training set ({train_size} samples)")
    total_steps = cfg.epochs * steps_per_epoch
    derived = {
        "micro_batch_size": cfg.batch_size // cfg.method.m,
        "steps_per_epoch": steps_per_epoch,
        "samples_dropped_per_epoch": train_size - steps_per_epoch * cfg.batch_size,
        **schedule_steps(cfg.schedule, total_steps),
    }
    if cfg.switch.then is not None:
        # The switch happens at an epoch boundary: "the first 20% of epochs" (paper, Appendix B).
        derived["switch_epoch"] = round(cfg.switch.fraction * cfg.epochs)
        derived["switch_step"] = derived["switch_epoch"] * steps_per_epoch
    return derived
