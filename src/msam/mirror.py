"""Mirrors of a run to a dashboard (wandb). The run directory stays the source of truth, and a
dashboard failure never stops training: it is logged once and the mirror turns itself off."""

from __future__ import annotations

import logging

from msam.errors import ConfigError

LOGGER_NAMES = ("none", "wandb")
log = logging.getLogger("msam")


class NoMirror:
    def log(self, row: dict, step: int) -> None:
        pass

    def summary(self, values: dict) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbMirror:
    """One wandb run per run directory: its id is the directory's name, so a resumed or
    requeued run, and a later msam-sharpness, continue the same wandb run."""

    def __init__(self, cfg, run_id: str, config: dict, run_dir: str) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("logger=wandb needs the wandb package: pip install -e '.[wandb]'") from None
        method = config["method"]
        group = cfg.group or f"{config['dataset']['name']}_{config['model']['name']}"
        tags = [method["name"], f"m={method['m']}", f"rho={method['rho']}", f"seed={config['seed']}", *cfg.tags]
        self.run = None
        try:
            self.run = wandb.init(project=cfg.project, entity=cfg.entity, mode=cfg.mode, group=group,
                                  job_type=method["name"], tags=tags, id=run_id, name=run_id, resume="allow",
                                  config=config, dir=run_dir)
        except Exception as error:  # noqa: BLE001 - a dashboard must not stop a run
            self.failed("init", error)

    def failed(self, what: str, error: Exception) -> None:
        log.warning(f"wandb {what} failed ({error.__class__.__name__}: {error}); continuing without wandb")
        self.run = None

    def log(self, row: dict, step: int) -> None:
        if self.run is not None:
            try:
                self.run.log(row, step=step)
            except Exception as error:  # noqa: BLE001
                self.failed("log", error)

    def summary(self, values: dict) -> None:
        if self.run is not None:
            try:
                self.run.summary.update(values)
            except Exception as error:  # noqa: BLE001
                self.failed("summary", error)

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as error:  # noqa: BLE001
                self.failed("finish", error)


def build_mirror(cfg, run_id: str, config: dict, run_dir: str):
    if cfg.name == "none":
        return NoMirror()
    if cfg.name == "wandb":
        return WandbMirror(cfg, run_id, config, run_dir)
    raise ConfigError(f"unknown logger '{cfg.name}'; valid: {', '.join(LOGGER_NAMES)}")
