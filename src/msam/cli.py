"""The contract of all four command-line tools (msam-train, msam-sharpness, msam-report, msam-bench).

- Bad input (a config value, a command line Hydra cannot parse or compose, a missing or unreadable
  data set or run folder): one line `<tool>: error: ...` on stderr, exit code 2, before any compute.
- A run that cannot go on (non-finite values, a full disk, a run directory in use, a crash inside
  torch): one line, exit code 1; what was written before stays intact.
- `HYDRA_FULL_ERROR=1` shows the full traceback instead of the line, for a bug report.

docs/faults.md ("When the input is wrong") is the user-facing page.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn, TypeVar

from hydra.errors import HydraException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from msam.errors import ConfigError, RunError
from msam.paths import CONF_DIR
from msam.search_path import (SWEEP_FLAGS, check_searchpath_folders, group_options, hydra_initialised,
                              parse_command_line)

T = TypeVar("T")
FULL_ERROR = "HYDRA_FULL_ERROR"
# Hydra's own options take values or change what runs (--cfg job, --help, ...): Hydra answers them.
OMEGACONF_DETAIL = ("full_key:", "object_type", "reference_type", "msg:")


def one_line(text: str) -> str:
    """An error message as one line: Hydra's and OmegaConf's span several (with indented details)."""
    lines = [line.strip() for line in str(text).splitlines()]
    return " ".join(line for line in lines if line and not line.startswith(OMEGACONF_DETAIL))


def message_of(error: BaseException) -> str:
    """The error's own message. One raised in a DataLoader worker (an unreadable image) comes back
    as the worker's whole traceback: its last line is the message."""
    text = str(error)
    if "Original Traceback (most recent call last)" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if f"{type(error).__name__}: " in last else last
    return text


def full_error() -> bool:
    return os.environ.get(FULL_ERROR) == "1"


def fail(prog: str, message: str, code: int) -> NoReturn:
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    sys.exit(code)


def config_key_message(error: OmegaConfBaseException) -> str:
    key = getattr(error, "full_key", None)
    return f"config key '{key}': {one_line(error)}" if key else one_line(error)


def classify(error: Exception) -> tuple[int, str]:
    """The exit code and the one line for an error."""
    if isinstance(error, ConfigError):
        return 2, message_of(error)
    if isinstance(error, OmegaConfBaseException):
        return 2, config_key_message(error)
    if isinstance(error, HydraException):
        return 2, str(error)
    if isinstance(error, RunError):
        return 1, message_of(error)
    return 1, f"{type(error).__name__}: {one_line(message_of(error)) or 'no message'} (a bug? {FULL_ERROR}=1 shows " \
              "the traceback)"


class JobFailed(RuntimeError):
    """One job of a sweep on a cluster failed; the launcher (submitit) records its one line."""


FAILED_JOBS: list[int] = []  # exit codes of the failed jobs of a local multirun


def sweep_job() -> str | None:
    """'local' or 'remote' (a submitit launcher) when running as one job of a Hydra multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return "remote" if "submitit" in str(HydraConfig.get().launcher.get("_target_", "")) else "local"


def is_first_process() -> bool:
    """Under torchrun every process fails alike: the first one says why."""
    return os.environ.get("RANK", "0") == "0"


def guarded(prog: str, task: Callable[[], T]) -> T | None:
    """Run `task` under the contract: every exception becomes one line and an exit code. In a
    local multirun the sweep goes on and finish_sweep exits with the worst code at its end; in a
    job on a cluster the job fails with the line as its error."""
    try:
        return task()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:  # noqa: BLE001 - the contract covers every error
        if full_error():
            raise
        code, message = classify(error)
        job = sweep_job()
        if job is None and not is_first_process():
            sys.exit(code)
        if job is None:
            fail(prog, message, code)
        print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
        if job == "remote":
            raise JobFailed(one_line(message)) from None
        FAILED_JOBS.append(code)
        return None


def finish_sweep(prog: str) -> None:
    """After a local multirun: one line and the worst exit code if any job failed."""
    codes = list(FAILED_JOBS)
    FAILED_JOBS.clear()
    if codes:
        fail(prog, f"{len(codes)} job(s) of the sweep failed, each with its line above", max(codes))


def single_job_overrides(overrides: list[str]) -> list[str] | None:
    """The first job of a sweep: each `key=a,b,c` (or range) with its first value; None for a
    sweep the preflight cannot expand."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType

    single = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.value_type in (ValueType.GLOB_CHOICE_SWEEP, ValueType.INTERVAL_SWEEP):
            return None  # glob() needs Hydra's config loader, interval() a sweeper plugin: Hydra checks them
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()), None)
            if first is None:
                raise ConfigError(f"'{override.input_line}' sweeps over no values")
            single.append(f"{override.get_key_element()}={first}")
        else:
            single.append(override.input_line)
    return single


def compose_or_fail(config_name: str, argv: list[str], groups: tuple[str, ...] = ()):
    """The config the command line asks for, composed as Hydra would (msam's tree, then the user's
    --config-dir and hydra.searchpath folders: msam.search_path), with Hydra's and OmegaConf's
    errors (a typo in a key, an override it cannot parse, a missing group option) raised as
    ConfigError: Hydra itself would print them over several lines with exit code 1. An unknown
    option of one of `groups` is one line listing the valid ones, the user's included.
    Interpolations are resolved by each tool's checks, after the checks whose messages say more (a
    GLUE task's tokenizer interpolates model.checkpoint, which only text models have). None for a
    sweep that Hydra must expand itself (glob, interval), and for Hydra's own options (--help)."""
    from hydra import compose

    command = parse_command_line(argv, config_name)
    if command.hydra_answers:
        return None
    overrides = [a for a in command.args if a not in SWEEP_FLAGS]
    try:
        check_searchpath_folders(overrides)
        with hydra_initialised(command.config_dir):
            check_group_choices(overrides, groups, command.config_name)
            if len(overrides) < len(command.args):
                overrides = single_job_overrides(overrides)
                if overrides is None:
                    return None
            return compose(command.config_name, overrides=overrides)
    except OverrideParseException as error:
        raise ConfigError(f"cannot parse the override '{unparsable(overrides)}': {one_line(error)}") from error
    except OmegaConfBaseException as error:
        raise ConfigError(config_key_message(error)) from error
    except HydraException as error:
        raise ConfigError(one_line(error)) from error


def check_group_choices(overrides: list[str], groups: tuple[str, ...], config_name: str) -> None:
    """Unknown config-group options get one line listing the valid ones over the whole search path
    (Hydra prints a stack)."""
    for arg in overrides:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if not sep or key not in groups or value.startswith(("glob(", "choice(", "range(")):
            continue  # Hydra's sweep functions: Hydra checks what they expand to
        valid = group_options(key, config_name, overrides)
        for choice in value.split(","):
            if choice not in valid:
                raise ConfigError(f"unknown {key} '{choice}'; valid: {', '.join(valid)}")


def unparsable(overrides: list[str]) -> str:
    """The first override Hydra's grammar rejects (its error message does not name it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in overrides:
        try:
            OverridesParser.create().parse_overrides([override])
        except OverrideParseException:
            return override
    return " ".join(overrides)


def run_tool(prog: str, config_name: str, hydra_main: Callable[[], None], groups: tuple[str, ...] = ()) -> None:
    """A tool's entry point: check the command line, let Hydra run it (each tool's task runs
    under `guarded`), then say whether a sweep's jobs failed."""
    if not CONF_DIR.is_dir():
        fail(prog, f"msam's config tree is missing (looked in {CONF_DIR}); reinstall msam", 2)
    preflight(prog, config_name, sys.argv[1:], groups)
    hydra_main()
    finish_sweep(prog)


def preflight(prog: str, config_name: str, argv: list[str], groups: tuple[str, ...] = ()) -> None:
    """Check the command line before Hydra runs it; Hydra's own options (--help, --cfg, ...) are
    left to Hydra."""
    guarded(prog, lambda: compose_or_fail(config_name, argv, groups))
