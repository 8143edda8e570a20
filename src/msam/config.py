"""Checks on a composed config (one clear line before any compute) and the derived values.

Derived values (micro-batch size, steps, warm-up steps, ...) are computed here and only here,
and the engine logs them and stores them in summary.json.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from msam.cli import config_key_message
from msam.data import GLUE_TASKS, check_data, input_side
from msam.domains import check_domains
from msam.errors import ConfigError
from msam.methods import MSAM_IMPLEMENTATIONS, RWSAM_IMPLEMENTATIONS, VMAP_IMPLEMENTATIONS
from msam.models import check_input_size, check_model
from msam.schedule import schedule_steps
from msam.targets import has_target


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_method(method: DictConfig, batch_size: int, key: str = "method") -> None:
    """A method's keys together (each key's own domain is checked by msam.domains)."""
    require(batch_size % method.m == 0,
            f"{key}.m={method.m} does not divide batch_size={batch_size} into equal micro-batches")
    if method.name in ("vanilla", "sam", "asam"):
        require(method.m == 1, f"{key}={method.name} uses one batch (m=1); use msam for m={method.m}")
    if method.name == "asam":
        require(method.adaptive, f"{key}=asam is SAM with adaptive=true; use {key}=sam for SAM")
    if method.name == "msam":
        require(method.impl in MSAM_IMPLEMENTATIONS,
                f"unknown {key}.impl '{method.impl}'; valid: {', '.join(MSAM_IMPLEMENTATIONS)}")
    if method.name == "rwsam":
        require(method.get("impl", "loop") in RWSAM_IMPLEMENTATIONS,
                f"unknown {key}.impl '{method.get('impl')}' for RW-SAM; valid: {', '.join(RWSAM_IMPLEMENTATIONS)}")


def check_switch(cfg: DictConfig) -> None:
    """Hybrid training: the second method and the fraction of epochs run by the first."""
    if cfg.switch.then is None:
        return
    require(cfg.switch.fraction is not None, "switch.fraction must be in (0, 1) when switch.then is set, got None")
    check_method(cfg.switch.then, cfg.batch_size, key="switch.then")


def check_device(cfg: DictConfig) -> None:
    require(cfg.device in ("auto", "cpu", "cuda") or str(cfg.device).startswith("cuda:"),
            f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")


def check_pairing(cfg: DictConfig) -> None:
    """Text data sets go with text models, images with image models (first: the other checks
    read keys that only the right pairing has, such as the tokenizer's model.checkpoint)."""
    text_data, text_model = cfg.dataset.name in GLUE_TASKS, cfg.model.get("arch") == "transformers"
    require(text_data == text_model, f"dataset={cfg.dataset.name} does not go with model={cfg.model.name}: GLUE tasks "
            f"({', '.join(GLUE_TASKS)}) take a transformers model (model=roberta_base), image data sets the others")
    for method in (cfg.method, cfg.switch.then):
        require(not (text_data and method is not None and method.name == "msam" and method.impl in VMAP_IMPLEMENTATIONS),
                "method.impl=vmap and vmap_ascent take image tensors; GLUE batches (token dicts) run with impl=loop")


def check_images(cfg: DictConfig) -> None:
    """An image's channels and the normalisation's; its size and the model's patches or pooling."""
    if cfg.dataset.name in GLUE_TASKS:
        return
    channels = cfg.dataset.image_shape[0]
    for key in ("mean", "std"):
        require(len(cfg.dataset[key]) in (1, channels), f"dataset.{key} has {len(cfg.dataset[key])} values for "
                f"{channels}-channel images (dataset.image_shape={list(cfg.dataset.image_shape)})")
    check_input_size(cfg.model, input_side(cfg.dataset), channels, smallest_micro_batch(cfg))


def smallest_micro_batch(cfg: DictConfig) -> int:
    """The fewest samples one forward pass in training sees: B/m per micro-batch, and with K
    processes (torchrun sets WORLD_SIZE) at most B/K each."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    largest_m = max(method.m for method in (cfg.method, cfg.switch.then) if method is not None)
    return cfg.batch_size // max(largest_m, processes)


def check_compile(cfg: DictConfig) -> None:
    """torch.compile wraps the module's forward; torch.func's functional calls (impl=vmap and vmap_ascent, RW-SAM's
    probe) swap its parameters on every call, which a compiled forward would recompile for. compile.step
    compiles the method's call instead (methods/compiled.py), which vmap can be part of; RW-SAM's probe
    replays random state (torch.random.fork_rng), which a compiled step does not reproduce."""
    if cfg.compile.step is not False:
        require(not cfg.compile.enabled, "compile.step and compile.enabled=true both compile the forward pass; "
                "use compile.step (the whole step) or compile.enabled (the model), not both")
        for method in (cfg.method, cfg.switch.then):
            require(method is None or method.name != "rwsam",
                    f"compile.step={str(cfg.compile.step).lower()} does not compile RW-SAM (its probe replays "
                    "random state, which a compiled step does not reproduce); use compile.step=false")
    if not cfg.compile.enabled and cfg.compile.step is False:
        return
    for method in (cfg.method, cfg.switch.then):
        if method is None or not cfg.compile.enabled:
            continue
        require(method.name != "rwsam", "compile.enabled=true does not combine with method=rwsam (its probe "
                "calls the model with swapped parameters); turn one off")
        require(not (method.name == "msam" and method.impl in VMAP_IMPLEMENTATIONS),
                f"compile.enabled=true does not combine with method.impl={method.impl} (torch.func over a compiled "
                "module); use impl=loop")
    from torch._dynamo import list_backends

    backends = list_backends(exclude_tags=())
    require(cfg.compile.backend in backends,
            f"unknown compile.backend '{cfg.compile.backend}'; valid: {', '.join(sorted(backends))}")


def check_optimisation(cfg: DictConfig) -> None:
    optim, schedule = cfg.optim, cfg.schedule
    if optim.name == "sgd" and optim.nesterov:
        require(optim.momentum > 0 and optim.dampening == 0,
                f"optim.nesterov=true needs optim.momentum > 0 and optim.dampening=0 (torch's SGD), got "
                f"momentum={optim.momentum}, dampening={optim.dampening}")
    if schedule.name == "onecycle":
        require(schedule.warmup_fraction > 0, "schedule=onecycle needs schedule.warmup_fraction > 0")
    if schedule.name == "step":
        require(list(schedule.milestones) == sorted(schedule.milestones),
                f"schedule.milestones must increase, got {list(schedule.milestones)}")


def check_config(cfg: DictConfig) -> None:
    """Everything that can be checked without touching data or building anything heavy: each
    key's domain (msam.domains), then the keys together. A key the config lacks (removed with
    ~key) is a ConfigError too."""
    try:
        check_all(cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(config_key_message(error)) from None


def check_all(cfg: DictConfig) -> None:
    check_pairing(cfg)
    check_domains(cfg)
    check_device(cfg)
    check_method(cfg.method, cfg.batch_size)
    check_switch(cfg)
    check_compile(cfg)
    check_optimisation(cfg)
    check_model(cfg.model)
    if has_target(cfg.dataset):  # the keys check_images reads, named in the data set's own terms
        check_data(cfg.dataset, cfg.get("smoke"))
    check_images(cfg)
    check_data(cfg.dataset, cfg.get("smoke"))


def derived_values(cfg: DictConfig, train_size: int, steps_per_epoch: int) -> dict:
    """The values a run computes from its config and data; logged and kept in summary.json."""
    require(steps_per_epoch >= 1,
            f"batch_size={cfg.batch_size} is larger than the training set ({train_size} samples)")
    total_steps = cfg.epochs * steps_per_epoch
    # torch's OneCycleLR divides by its warm-up length, pct_start * total_steps - 1
    require(cfg.schedule.name != "onecycle" or cfg.schedule.warmup_fraction * total_steps != 1,
            f"schedule.warmup_fraction={cfg.schedule.warmup_fraction} of {total_steps} steps is a warm-up of exactly 1 "
            "step, which torch's OneCycleLR cannot take; change the fraction or the number of steps")
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
