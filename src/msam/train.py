"""msam-train: the Hydra app over conf/ that trains one run (or a sweep with -m)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from msam.errors import ConfigError, RunError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ("dataset", "model", "method", "switch", "optim", "schedule", "logger", "launcher", "experiment",
          "table", "smoke")


def check_group_choices(argv: list[str]) -> None:
    """Unknown config-group options get one line listing the valid ones (Hydra prints a stack)."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if not sep or key not in GROUPS:
            continue
        valid = sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml"))
        for choice in value.split(","):
            if choice not in valid:
                raise ConfigError(f"unknown {key} '{choice}'; valid: {', '.join(valid)}")


def fail(error: ConfigError | RunError) -> None:
    """One line on stderr; exit 2 for bad input, 1 for a run that could not go on."""
    print(f"msam-train: error: {error}", file=sys.stderr)
    sys.exit(2 if isinstance(error, ConfigError) else 1)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    from msam.engine import train  # imported here so `--help` and bad input stay fast

    try:
        summary = train(cfg)
    except (ConfigError, RunError) as error:
        fail(error)
    return summary["test_acc"]


def main() -> None:
    if not CONF_DIR.is_dir():
        fail(ConfigError(f"config tree not found at {CONF_DIR}; install msam with `pip install -e .`"))
    try:
        check_group_choices(sys.argv[1:])
    except ConfigError as error:
        fail(error)
    logging.getLogger("msam").setLevel(logging.INFO)
    hydra_main()


if __name__ == "__main__":
    main()
