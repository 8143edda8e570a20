"""msam-train: the Hydra app over conf/ that trains one run (or a sweep with -m)."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from msam.cli import guarded, run_tool
from msam.paths import CONF_DIR

PROG = "msam-train"
# Config groups whose options the preflight checks by name (msam's and the user's folders).
GROUPS = ("dataset", "model", "method", "switch", "optim", "schedule", "logger", "launcher", "experiment",
          "table", "smoke")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    from msam.engine import train  # imported here so `--help` and bad input stay fast

    summary = guarded(PROG, lambda: train(cfg))
    return None if summary is None else summary["test_acc"]


def main() -> None:
    """The contract of every msam tool (msam.cli): bad input is one line and exit code 2 before any
    compute, a run that cannot go on one line and exit code 1."""
    logging.getLogger("msam").setLevel(logging.INFO)
    run_tool(PROG, "train", hydra_main, GROUPS)


if __name__ == "__main__":
    main()
