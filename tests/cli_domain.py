"""msam-train's command lines as a domain to draw from, and what one line ends in: shared by the
property test (tests/test_cli_property.py, Hypothesis) and scripts/fuzz_cli.py (a seeded tally).

A line is `smoke=on`, up to three group choices and one to three `key=value` overrides. Keys are
every leaf of the composed config (found by walking it, so a new key is drawn without editing
this file). Values are hostile literals (wrong type, negative, zero, NaN, inf, huge, empty,
unknown names) or valid ones taken from the key's own domain (msam.domains), so that valid values
meet in conflicting combinations: m against the batch size, precision against the method, a text
data set with an image model, a switch target...
"""

from __future__ import annotations

import tempfile
from unittest import mock

from omegaconf import OmegaConf, open_dict

from msam import engine
from msam.cli import compose_or_fail
from msam.config import check_config
from msam.domains import Bool, Choice, Either, Int, ListOf, Number, Optional, Text, domain_of, domains, leaves
from msam.errors import ConfigError, RunError
from msam.paths import CONF_DIR

# Models whose smoke run takes about a second (tests/test_experiments.py smoke-runs the paper's
# full-size ones); every data set and every other group choice.
MODELS = ["small_cnn", "resnet18", "vit_small", "vit_s32", "roberta_base"]
GROUPS = {group: sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
          for group in ("dataset", "method", "switch", "optim", "schedule")}
GROUPS["model"] = MODELS
GROUP_CHOICES = [f"{g}={c}" for g, cs in sorted(GROUPS.items()) for c in cs] + ["method=nope", "model=vit_b17"]
# The overlay's own settings and where things are written are not the user's hyper-parameters.
NOT_DRAWN = ("smoke", "paths.", "not_identity", "logger.")
HOSTILE = ["0", "-1", "1000000", "1e308", "-1e-9", "nan", "inf", "-inf", "-0.5", "1.5", "true", "false", "null",
           "''", "' '", "[]", "[1,2]", "[-1]", "[3,0,5]", "{}", "{a:1}", "'abc'", "99999999999999999999",
           "-1e+300", "cuda:3", "auto", "fp16", "vmap"]
COMPOSITIONS = (["method=msam"], ["method=rwsam", "switch=to_vanilla", "optim=adamw"],
                ["dataset=cifar10", "model=vit_small", "schedule=step"], ["dataset=sst2", "model=roberta_base"],
                ["dataset=imagenet", "switch=to_msam", "schedule=constant"])


def every_key() -> list[str]:
    """The leaves of the config under several group choices (each adds its own keys)."""
    keys = set()
    for choices in COMPOSITIONS:
        cfg = compose_or_fail("train", [*choices, "smoke=on"])
        keys |= {key for key, _ in leaves(OmegaConf.to_container(cfg, resolve=False))}
    return sorted(k for k in keys if not k.startswith(NOT_DRAWN) and k != "switch.then")  # set by switch=


def literal(value) -> str:
    """A Python value as a Hydra override value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, list):
        return "[" + ",".join(literal(v) for v in value) + "]"
    return repr(value)


def valid_values(domain) -> list:
    """A few values inside a domain: its ends, small steps into it, each choice."""
    if isinstance(domain, Optional):
        return [None, *valid_values(domain.inner)]
    if isinstance(domain, Either):
        return [*valid_values(domain.first), *valid_values(domain.second)]
    if isinstance(domain, Int):
        top = domain.high if domain.high is not None else domain.low + 8
        return sorted({domain.low, domain.low + 1, domain.low + 2, min(top, domain.low + 7)})
    if isinstance(domain, Number):
        low = domain.low if domain.low is not None else -1.0
        high = domain.high if domain.high is not None else low + 2.0
        inside = [low + (high - low) * f for f in (0.01, 0.5, 0.99)]
        return inside + ([low] if not domain.open_low and domain.low is not None else []) + (
            [high] if not domain.open_high and domain.high is not None else [])
    if isinstance(domain, Bool):
        return [True, False]
    if isinstance(domain, Choice):
        return [v for v in domain.values]
    if isinstance(domain, ListOf):
        items = valid_values(domain.item)
        length = domain.length or max(domain.min_length, 1)
        return [[items[(i + k) % len(items)] for k in range(length)] for i in range(len(items))]
    if isinstance(domain, Text):
        return ["x"]
    return []


KEYS = every_key()
TABLE = domains()
VALID = {key: [literal(v) for v in valid_values(domain_of(key, TABLE))] for key in KEYS}


def too_costly(cfg) -> bool:
    """Accepted lines whose smoke run would take more than seconds on 2 cores."""
    return (cfg.epochs > 3 or cfg.batch_size > 32 or cfg.compile.enabled or cfg.compile.step is True or cfg.smoke.train_batches > 4
            or cfg.impl_tuning.steps > 5)


def run_line(argv: list[str]) -> str:
    """What msam-train does with the line, in-process: "refused by Hydra" or "refused" (one
    ConfigError line before any training), "skipped" (accepted, too costly to smoke-run), "ran",
    or "stopped on non-finite values". Any other exception propagates: that is the failure."""
    try:
        cfg = compose_or_fail("train", argv)
    except ConfigError as error:
        assert "\n" not in str(error), f"{argv}: a ConfigError of several lines: {error}"
        return "refused by Hydra's composition"
    try:
        check_config(cfg)
    except ConfigError as error:
        assert "\n" not in str(error), f"{argv}: a ConfigError of several lines: {error}"
        return "refused by check_config"
    if too_costly(cfg):
        return "skipped (accepted; too costly for a smoke run)"
    return smoke_run(cfg)


def smoke_run(cfg) -> str:
    started = []
    real_epoch = engine.train_epoch

    def train_epoch(*args, **kwargs):
        started.append(True)
        return real_epoch(*args, **kwargs)

    with tempfile.TemporaryDirectory() as runs, mock.patch.object(engine, "train_epoch", train_epoch):
        with open_dict(cfg):
            cfg.paths.runs = runs
        try:
            summary = engine.train(cfg)
        except ConfigError as error:
            assert not started, f"refused after training started: {error}"
            assert "\n" not in str(error), f"a ConfigError of several lines: {error}"
            return "refused after building data or model (before training)"
        except RunError as error:
            assert "non-finite" in str(error), f"the run died: {error}"
            return "stopped on non-finite values"
    assert summary["status"] == "finished"
    return "ran"
