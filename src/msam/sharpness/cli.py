"""msam-sharpness: measure a finished run's sharpness (Hydra app over conf/sharpness.yaml)."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from msam.errors import ConfigError
from msam.train import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="sharpness")
def hydra_main(cfg: DictConfig) -> float:
    from msam.sharpness.run import measure_run

    try:
        result = measure_run(cfg.run, algorithm=cfg.algorithm, max_iter=cfg.max_iter, tol=cfg.tol,
                             trace_probes=cfg.trace_probes, batch_size=cfg.batch_size,
                             max_samples=cfg.max_samples, dtype=cfg.dtype, device=cfg.device, seed=cfg.seed,
                             keep_unconverged=cfg.keep_unconverged)
    except ConfigError as error:
        print(f"msam-sharpness: error: {error}", file=sys.stderr)
        sys.exit(2)
    return result["lambda_max"]


def main() -> None:
    logging.getLogger("msam").setLevel(logging.INFO)
    hydra_main()


if __name__ == "__main__":
    main()
