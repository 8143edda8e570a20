"""msam-sharpness: measure finished runs' sharpness (Hydra app over conf/sharpness.yaml).

    msam-sharpness run=runs/<run dir>      one run
    msam-sharpness runs=runs/demo          every finished run under a folder not yet measured
    msam-sharpness run=... measures=[topk,density,sharpness,landscape]   the other measures (conf/sharpness.yaml)
    torchrun --nproc-per-node=4 -m msam.sharpness.cli run=...   each process reads its share of the data
"""

from __future__ import annotations

import fnmatch
import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from msam import dist
from msam.cli import guarded, run_tool
from msam.errors import ConfigError
from msam.paths import CONF_DIR

PROG = "msam-sharpness"
log = logging.getLogger("msam")


def run_dirs(cfg: DictConfig) -> list[Path]:
    if (cfg.run is None) == (cfg.runs is None):
        raise ConfigError("give either run=<run dir> or runs=<folder of run dirs>")
    if cfg.run is not None:
        return [Path(cfg.run)]
    if not Path(cfg.runs).is_dir():
        raise ConfigError(f"runs={cfg.runs} is not a folder; give the folder your runs were written to (paths.runs)")
    found = sorted(p.parent for p in Path(cfg.runs).rglob("summary.json"))
    if not found:
        raise ConfigError(f"no run directories (no summary.json) under {cfg.runs}")
    if cfg.match is not None:
        found = [d for d in found if any(fnmatch.fnmatchcase(d.name, pattern) for pattern in cfg.match)]
        if not found:
            raise ConfigError(f"no run directory under {cfg.runs} matches match={list(cfg.match)}")
    asked = [m for m in cfg.measures if not (m == "trace" and cfg.trace_probes == 0)]  # 0 probes: no trace
    return [d for d in found if cfg.overwrite or not holds_every_measure(d / "sharpness.json", asked)]


def holds_every_measure(path: Path, measures) -> bool:
    """sharpness.json exists and holds each measure asked for (a file from before `measures`
    existed holds lambda_max and the trace); an unreadable one holds nothing."""
    if not path.is_file():
        return False
    try:
        held = json.loads(path.read_text()).get("measures", ["lambda_max", "trace"])
    except (OSError, ValueError, AttributeError):
        return False
    return set(measures) <= set(held)


def measure_all(cfg: DictConfig, ctx: dist.DistContext) -> list[dict]:
    """Every run asked for; in a folder sweep a run that cannot be measured is skipped with its
    reason (one line) and the sweep goes on."""
    from msam.sharpness.run import check_settings, measure_run

    check_settings(cfg)
    results = []
    for run_dir in run_dirs(cfg):
        try:
            results.append(measure_run(run_dir, cfg, ctx))
        except Exception as error:  # noqa: BLE001 - a sweep outlives any one run
            if cfg.run is not None:
                raise
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            log.warning(f"skipped {run_dir}: {reason}")
    return results


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="sharpness")
def hydra_main(cfg: DictConfig) -> None:
    guarded(PROG, lambda: measure_on_every_process(cfg))


def measure_on_every_process(cfg: DictConfig) -> None:
    from msam.engine import pick_device

    ctx = dist.init_distributed(pick_device(cfg.device), cfg.dist_backend)
    if not ctx.is_main:
        logging.getLogger("msam").setLevel(logging.WARNING)
    try:
        measure_all(cfg, ctx)
    finally:
        dist.shutdown(ctx)


def main() -> None:
    logging.getLogger("msam").setLevel(logging.INFO)
    run_tool(PROG, "sharpness", hydra_main)


if __name__ == "__main__":
    main()
