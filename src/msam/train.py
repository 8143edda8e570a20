"""msam-train: the Hydra app over conf/ that trains one run (or a sweep with -m)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from msam.cli import fail, guarded, run_tool
from msam.errors import ConfigError

PROG = "msam-train"
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
        if value.startswith(("glob(", "choice(", "range(")):
            continue  # Hydra's sweep functions: Hydra checks what they expand to
        for choice in value.split(","):
            if choice not in valid:
                raise ConfigError(f"unknown {key} '{choice}'; valid: {', '.join(valid)}")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    from msam.engine import train  # imported here so `--help` and bad input stay fast

    summary = guarded(PROG, lambda: train(cfg))
    return None if summary is None else summary["test_acc"]


def main() -> None:
    """The contract of every msam tool (msam.cli): bad input is one line and exit code 2 before any
    compute, a run that cannot go on one line and exit code 1."""
    if not CONF_DIR.is_dir():
        fail(PROG, f"config tree not found at {CONF_DIR}; install msam with `pip install -e .`", 2)
    guarded(PROG, lambda: check_group_choices(sys.argv[1:]))
    logging.getLogger("msam").setLevel(logging.INFO)
    run_tool(PROG, CONF_DIR, "train", hydra_main)


if __name__ == "__main__":
    main()
