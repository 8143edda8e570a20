"""The domain of every config key a user may set: its type and range, checked by check_config
before any compute (one ConfigError line each). Relations between keys (m divides the batch
size, a text data set takes a text model, ...) are checked in msam.config.

The defaults live in conf/; this file says only what a value may be. tests/test_cli_property.py
walks the composed config and fails for any key without a domain here, so a new key needs one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import OmegaConf

from msam.errors import ConfigError

SEED_MAX = 2**32 - 1  # numpy's and scikit-learn's seeds are 32-bit
INT64_MAX = 2**63 - 1  # torch turns Python numbers into int64 or float64 tensors


def is_int(value) -> bool:
    """An int torch can hold (int64), not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= INT64_MAX


def is_number(value) -> bool:
    """A finite int or float torch can hold (not a bool, not NaN or inf)."""
    if isinstance(value, int):
        return is_int(value)
    return isinstance(value, float) and math.isfinite(value)


class Domain:
    """What a key's value may be: accepts(value) and a description for the error line."""

    def accepts(self, value) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def problem(self, value) -> str | None:
        return None if self.accepts(value) else self.describe()


@dataclass(frozen=True)
class Int(Domain):
    low: int = 0
    high: int | None = None

    def accepts(self, value) -> bool:
        return is_int(value) and value >= self.low and (self.high is None or value <= self.high)

    def describe(self) -> str:
        return f"an integer >= {self.low}" + (f" and <= {self.high}" if self.high is not None else "")


@dataclass(frozen=True)
class Number(Domain):
    """A finite number in the interval; open_low / open_high exclude that end."""
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def accepts(self, value) -> bool:
        if not is_number(value):
            return False
        above = self.low is None or value > self.low or (not self.open_low and value == self.low)
        below = self.high is None or value < self.high or (not self.open_high and value == self.high)
        return above and below

    def describe(self) -> str:
        low = "(-inf" if self.low is None else f"{'(' if self.open_low else '['}{self.low:g}"
        high = "inf)" if self.high is None else f"{self.high:g}{')' if self.open_high else ']'}"
        return f"a finite number in {low}, {high}"


@dataclass(frozen=True)
class Bool(Domain):
    def accepts(self, value) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Choice(Domain):
    values: tuple

    def accepts(self, value) -> bool:
        return isinstance(value, (str, type(None))) and value in self.values

    def describe(self) -> str:
        return "one of " + ", ".join("null" if v is None else str(v) for v in self.values)


@dataclass(frozen=True)
class Text(Domain):
    """A non-empty string (a path, a library's model name, a project name)."""

    def accepts(self, value) -> bool:
        return isinstance(value, str) and value.strip() != ""

    def describe(self) -> str:
        return "a non-empty string"


@dataclass(frozen=True)
class Mapping(Domain):
    """Key-value settings handed to a library (a transformers config)."""

    def accepts(self, value) -> bool:
        return isinstance(value, dict)

    def describe(self) -> str:
        return "a mapping {key: value, ...}"


@dataclass(frozen=True)
class Optional(Domain):
    inner: Domain

    def accepts(self, value) -> bool:
        return value is None or self.inner.accepts(value)

    def describe(self) -> str:
        return f"null or {self.inner.describe()}"


@dataclass(frozen=True)
class Either(Domain):
    first: Domain
    second: Domain

    def accepts(self, value) -> bool:
        return self.first.accepts(value) or self.second.accepts(value)

    def describe(self) -> str:
        return f"{self.first.describe()} or {self.second.describe()}"


@dataclass(frozen=True)
class ListOf(Domain):
    item: Domain
    length: int | None = None
    min_length: int = 0

    def accepts(self, value) -> bool:
        return (isinstance(value, list) and len(value) >= self.min_length
                and (self.length is None or len(value) == self.length) and all(self.item.accepts(v) for v in value))

    def problem(self, value) -> str | None:
        if self.accepts(value):
            return None
        bad = [v for v in value if not self.item.accepts(v)] if isinstance(value, list) else []
        return self.describe() + (f" ({bad[0]!r} is not)" if bad else "")

    def describe(self) -> str:
        size = f"{self.length} " if self.length is not None else ("" if not self.min_length else "1 or more ")
        return f"a list of {size}items, each {self.item.describe()}"


# torch.compile's settings, as conf/train.yaml's compile.* (and msam-bench's compile.*) name them
COMPILE_SETTINGS = {"backend": Text(), "cache_dir": Optional(Text()), "fallback_random": Bool(),
                    "mode": Choice((None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")),
                    "dynamic": Optional(Bool())}


def _method() -> dict:
    from msam.methods import (DESCENT_LOSSES, METHOD_NAMES, NORM_ESTIMATORS, NORM_SCALES, PROBE_BN_MODES, MSAM_IMPLEMENTATIONS,
                              RWSAM_IMPLEMENTATIONS)

    return {"name": Choice(METHOD_NAMES), "m": Int(1), "rho": Number(0), "eps": Number(0, open_low=True),
            "normalize": Bool(), "adaptive": Bool(), "eta": Number(0),
            "impl": Choice(tuple(dict.fromkeys(MSAM_IMPLEMENTATIONS + RWSAM_IMPLEMENTATIONS))),
            "chunk_size": Optional(Int(1)), "lambda": Number(0), "delta": Number(0, open_low=True),
            "probes": Int(1), "norm_scale": Choice(NORM_SCALES), "probe_bn": Choice(PROBE_BN_MODES),
            "norm_estimator": Choice(NORM_ESTIMATORS), "norm_chunk": Optional(Int(1)),
            "descent_loss": Choice(DESCENT_LOSSES)}


def domains() -> dict[str, dict]:
    """Section (a dotted prefix; "" for the top level) -> key -> domain."""
    from msam.data import BUILDERS
    from msam.data.glue import TASKS
    from msam.dist import BACKENDS
    from msam.guard import MODES
    from msam.models import ARCHITECTURES
    from msam.optim import OPTIMIZER_NAMES
    from msam.schedule import SCHEDULE_NAMES

    fraction = Number(0, 1, open_high=True)
    return {
        "": {"seed": Int(0, SEED_MAX), "epochs": Int(1), "batch_size": Int(1), "eval_batch_size": Int(1),
             "label_smoothing": Number(0, 1), "grad_clip_norm": Optional(Number(0, open_low=True)),
             "precision": Choice(("fp32", "bf16", "fp16")), "tf32": Bool(), "channels_last": Bool(),
             "device": Text(), "dist_backend": Choice(BACKENDS), "resume": Choice(("auto", "never", "force")),
             "checkpoint_every_steps": Int(0), "nonfinite": Choice(MODES), "nonfinite_check_every": Int(1),
             "log_every_steps": Int(0), "preemption_check_every": Int(1)},
        "fp16_scaler": {"init_scale": Number(0, open_low=True), "growth_interval": Int(1)},
        "impl_tuning": {"steps": Int(1), "max_seconds": Number(0, open_low=True), "keep_within": Number(1),
                        "compile_seconds_guess": Number(0)},
        "compile": {"enabled": Bool(), "step": Either(Bool(), Choice(("auto",))), **COMPILE_SETTINGS},
        "cpu_allocator": {"tune": Bool(), "mmap_threshold": Int(0), "trim_threshold": Int(0)},
        "paths": {"data": Text(), "runs": Text()},
        "logger": {"name": Choice(("none", "wandb")), "project": Text(), "entity": Optional(Text()),
                   "group": Optional(Text()), "tags": ListOf(Text()),
                   "mode": Choice(("offline", "online", "disabled", "shared"))},
        "dataset": {"name": Choice(tuple(sorted(BUILDERS))), "num_classes": Int(2), "image_shape": ListOf(Int(1), 3),
                    "test_fraction": Number(0, 1, open_low=True, open_high=True), "split_seed": Int(0, SEED_MAX),
                    "mean": ListOf(Number(), min_length=1), "std": ListOf(Number(0, open_low=True), min_length=1),
                    "augment": Bool(), "crop_padding": Int(0), "flip": Bool(), "resize": Optional(Int(1)),
                    "root": Text(), "download": Bool(), "train_size": Int(1), "test_size": Int(1),
                    "data_seed": Int(0, SEED_MAX), "image_size": Int(1), "min_scale": Number(0, 1, open_low=True),
                    "num_workers": Int(0), "task": Choice(TASKS), "path": Text(), "tokenizer": Optional(Text()),
                    "max_length": Int(8), "metrics": ListOf(Choice(("mcc", "f1")))},
        "model": {"name": Text(), "arch": Choice(ARCHITECTURES), "width": Int(1), "depth": Int(1),
                  "dropout": fraction, "checkpoint": Optional(Text()), "pretrained_required": Bool(),
                  "torchvision_name": Text(), "timm_name": Text(), "patch_size": Optional(Int(1)),
                  "model_type": Text(), "config": Optional(Mapping())},
        "method": _method(),
        "switch": {"fraction": Optional(Number(0, 1, open_low=True, open_high=True))},
        "switch.then": _method(),
        "optim": {"name": Choice(OPTIMIZER_NAMES), "lr": Number(0, open_low=True), "momentum": Number(0, 1),
                  "nesterov": Bool(), "dampening": Number(0, 1), "weight_decay": Number(0),
                  "weight_decay_exclude_1d": Bool(), "betas": ListOf(Number(0, 1, open_high=True), 2),
                  "eps": Number(0, open_low=True)},
        "schedule": {"name": Choice(SCHEDULE_NAMES), "warmup_fraction": fraction, "anneal": Choice(("cos", "linear")),
                     "div_factor": Number(0, open_low=True), "final_div_factor": Number(0, open_low=True),
                     "cycle_momentum": Bool(), "milestones": ListOf(Number(0, 1, open_low=True, open_high=True)),
                     "gamma": Number(0, open_low=True)},
    }


# Keys that are the overlay's or the project's own bookkeeping, not a user's setting.
NOT_CHECKED = ("smoke", "not_identity", "model.config")


def leaves(node, prefix: str = ""):
    """(dotted key, value) of every leaf of a plain container."""
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in NOT_CHECKED:
            yield from leaves(value, f"{path}.")
        else:
            yield path, value


def domain_of(key: str, table: dict[str, dict]):
    section, _, name = key.rpartition(".")
    return table.get(section, {}).get(name)


def check_value(key: str, value, domain: Domain | None) -> None:
    problem = domain.problem(value) if domain is not None else None
    if problem:
        raise ConfigError(f"{key} must be {problem}, got {value!r}")


def with_targets(table: dict[str, dict], plain: dict) -> dict[str, dict]:
    """A model or data set given by _target_ (msam.targets): only msam's own keys are checked, and
    its name is any text; the other keys are its callable's arguments, which it checks itself."""
    from msam.data.target import TARGET_DATA_KEYS
    from msam.models import TARGET_MODEL_KEYS

    table = dict(table)
    for section, own in (("model", TARGET_MODEL_KEYS), ("dataset", TARGET_DATA_KEYS)):
        node = plain.get(section) if isinstance(plain, dict) else None
        if section in table and isinstance(node, dict) and "_target_" in node:
            table[section] = {key: domain for key, domain in table[section].items() if key in own}
            table[section]["name"] = Text()
    return table


def check_domains(cfg, table: dict[str, dict] | None = None) -> None:
    """Every key of the table that the config has, in its domain (msam-train's table by default);
    the first one outside is one ConfigError line. A dict where a value belongs is outside too."""
    table = domains() if table is None else table
    plain = OmegaConf.to_container(cfg, resolve=True)
    table = with_targets(table, plain)
    for section, keys in table.items():
        node = plain
        for part in section.split(".") if section else ():
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        for key, domain in keys.items():
            if key in node:
                check_value(f"{section}.{key}" if section else key, node[key], domain)


def unchecked_keys(cfg) -> list[str]:
    """Keys of a composed config that have no domain here (for the test that keeps this complete);
    a section left empty (switch.then: null) is not a key."""
    table = domains()
    plain = OmegaConf.to_container(cfg, resolve=True)
    return [key for key, _ in leaves(plain)
            if not key.startswith(NOT_CHECKED) and key not in table and domain_of(key, table) is None]
