"""msam-sharpness: measure finished runs' sharpness (Hydra app over conf/sharpness.yaml).

    msam-sharpness run=runs/<run dir>      one run
    msam-sharpness runs=runs/demo          every finished run under a folder without sharpness.json
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from msam.errors import ConfigError
from msam.train import CONF_DIR

log = logging.getLogger("msam")


def run_dirs(cfg: DictConfig) -> list[Path]:
    if (cfg.run is None) == (cfg.runs is None):
        raise ConfigError("give either run=<run dir> or runs=<folder of run dirs>")
    if cfg.run is not None:
        return [Path(cfg.run)]
    found = sorted(p.parent for p in Path(cfg.runs).rglob("summary.json"))
    if not found:
        raise ConfigError(f"no run directories under {cfg.runs}")
    return [d for d in found if cfg.overwrite or not (d / "sharpness.json").is_file()]


def measure_all(cfg: DictConfig) -> list[dict]:
    from msam.sharpness.run import measure_run

    results = []
    for run_dir in run_dirs(cfg):
        try:
            results.append(measure_run(run_dir, algorithm=cfg.algorithm, max_iter=cfg.max_iter, tol=cfg.tol,
                                       trace_probes=cfg.trace_probes, batch_size=cfg.batch_size,
                                       max_samples=cfg.max_samples, dtype=cfg.dtype, device=cfg.device,
                                       seed=cfg.seed, keep_unconverged=cfg.keep_unconverged))
        except ConfigError as error:
            if cfg.run is not None:
                raise
            log.warning(f"skipped {run_dir}: {error}")  # a folder sweep goes on past one bad run
    return results


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="sharpness")
def hydra_main(cfg: DictConfig) -> None:
    try:
        measure_all(cfg)
    except ConfigError as error:
        print(f"msam-sharpness: error: {error}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    logging.getLogger("msam").setLevel(logging.INFO)
    hydra_main()


if __name__ == "__main__":
    main()
