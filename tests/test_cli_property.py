"""Property: whatever a user puts on msam-train's command line, it is either refused with one
ConfigError line before any compute, or accepted and then a smoke run of it succeeds.

Hypothesis draws command lines over every key of the composed config (found by walking the
config, so a new key is covered without editing this file), with values from outside their
domains (wrong type, negative, zero, NaN, inf, huge, empty, unknown names) and from inside them
(so that valid values meet in conflicting combinations: m against the batch size, precision
against the method, a text data set with an image model, a switch target...), plus group choices.
Each drawn line goes through what msam-train runs: Hydra's composition (msam.cli), then
engine.train under the smoke overlay (synthetic data of the data set's shape, 2 steps).

Allowed outcomes: a one-line ConfigError before the first training epoch; a finished run; a run
that stops on non-finite values (a huge learning rate is a user's right; the guard stops it in one
line). Anything else is a failure, and Hypothesis shrinks it to the smallest command line.

`make test` runs the `ci` profile (fixed seed, 60 examples). The long profile, for a nightly-style
run: `.venv/bin/python -m pytest tests/test_cli_property.py --hypothesis-profile=long` (docs/cli.md).
"""

import tempfile
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf, open_dict

from msam import engine
from msam.cli import compose_or_fail
from msam.errors import ConfigError, RunError
from msam.train import CONF_DIR

settings.register_profile("ci", max_examples=60, derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.register_profile("long", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.load_profile("ci")

# Models the smoke run builds in about a second (the paper's full-size ones are smoke-run by
# tests/test_experiments.py); every data set and every other group choice.
MODELS = ["small_cnn", "resnet18", "vit_small", "vit_s32", "roberta_base"]
GROUPS = {group: sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
          for group in ("dataset", "method", "switch", "optim", "schedule")}
GROUPS["model"] = MODELS
# The overlay's own settings and where things are written are not the user's hyper-parameters.
NOT_DRAWN = ("smoke.", "paths.", "not_identity", "logger.")


def leaf_keys(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def every_key() -> list[str]:
    """The leaves of the config under several group choices (each adds its own keys)."""
    keys = set()
    for choices in (["method=msam"], ["method=rwsam", "switch=to_vanilla", "optim=adamw"],
                    ["dataset=cifar10", "model=vit_small", "schedule=step"], ["dataset=sst2", "model=roberta_base"],
                    ["dataset=imagenet", "switch=to_msam", "schedule=constant"]):
        cfg = compose_or_fail(CONF_DIR, "train", [*choices, "smoke=on"])
        keys |= set(leaf_keys(OmegaConf.to_container(cfg, resolve=False)))
    return sorted(k for k in keys if not k.startswith(NOT_DRAWN))


KEYS = every_key()
NAMES = ["msam", "sam", "vanilla", "rwsam", "asam", "loop", "vmap", "auto", "fp32", "bf16", "fp16", "sgd", "adamw",
         "onecycle", "cpu", "cuda", "cuda:3", "auto", "never", "force", "stop", "skip", "off", "gloo", "nccl",
         "inductor", "eager", "running", "batch", "sigmoid", "digits", "cifar10", "sst2", "small_cnn", "roberta_base"]
VALUES = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", "3", "4", "8", "1000000", "1e308", "-1e-9", "nan", "inf", "-inf", "0.5",
                     "-0.5", "0.999", "1.0", "true", "false", "null", "''", "[]", "[1,2]", "[-1]", "[3,0,5]",
                     "[1,8,8]", "[3,32,32]", "{}", "{a:1}", "[0.5]", "[0.1,0.2,0.3]"]),
    st.sampled_from(NAMES),
    st.integers(min_value=-(2**66), max_value=2**66).map(str),
    st.floats().map(repr),
    st.text(alphabet="abcxyz_:-./ ", max_size=6).map(lambda s: f"'{s}'"),
)
COMMAND_LINES = st.tuples(
    st.lists(st.sampled_from([f"{g}={c}" for g, cs in GROUPS.items() for c in cs] + ["method=nope", "model=vit_b17"]),
             max_size=3),
    st.lists(st.tuples(st.sampled_from(KEYS), VALUES).map("=".join), min_size=1, max_size=3),
)


def too_costly(cfg) -> bool:
    """Accepted lines whose smoke run would take more than seconds on 2 cores."""
    return (cfg.epochs > 3 or cfg.batch_size > 32 or cfg.compile.enabled or cfg.smoke.train_batches > 4
            or cfg.get("impl_tuning", {}).get("steps", 1) > 5)


def outcome(argv: list[str]) -> str:
    try:
        cfg = compose_or_fail(CONF_DIR, "train", argv)
        with tempfile.TemporaryDirectory() as runs:
            with open_dict(cfg):
                cfg.paths.runs = runs
            return smoke_run(cfg)
    except ConfigError as error:
        assert "\n" not in str(error), f"{argv}: a ConfigError of several lines: {error}"
        return "refused"


def smoke_run(cfg) -> str:
    from msam.config import check_config

    check_config(cfg)
    assume(not too_costly(cfg))
    started = []
    real_epoch = engine.train_epoch

    def train_epoch(*args, **kwargs):
        started.append(True)
        return real_epoch(*args, **kwargs)

    with mock.patch.object(engine, "train_epoch", train_epoch):
        try:
            summary = engine.train(cfg)
        except ConfigError as error:
            assert not started, f"refused after training started: {error}"
            raise
        except RunError as error:
            assert "non-finite" in str(error), f"the run died: {error}"
            return "stopped on non-finite values"
    assert summary["status"] == "finished"
    return "ran"


@given(COMMAND_LINES)
def test_a_command_line_is_refused_in_one_line_or_runs(line):
    groups, values = line
    outcome(["smoke=on", *groups, *values])


def test_the_drawn_keys_cover_the_config():
    assert {"method.m", "batch_size", "precision", "switch.fraction", "method.lambda", "optim.betas",
            "dataset.image_shape", "model.width", "schedule.warmup_fraction", "device"} <= set(KEYS)
    assert Path(CONF_DIR / "train.yaml").is_file() and len(KEYS) > 60
