"""Mirrors of a run's metrics to a dashboard. The run directory stays the source of truth."""

from __future__ import annotations

from msam.errors import ConfigError

LOGGER_NAMES = ("none", "wandb")


class NoMirror:
    def log(self, row: dict, step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbMirror:
    def __init__(self, cfg, run_id: str, config: dict, run_dir: str) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("logger=wandb needs the wandb package: pip install -e '.[wandb]'") from None
        # The run id is the run directory's name, so a resumed or requeued run continues its wandb run.
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, mode=cfg.mode, group=cfg.group,
                              tags=list(cfg.tags), id=run_id, name=run_id, resume="allow",
                              config=config, dir=run_dir)

    def log(self, row: dict, step: int) -> None:
        self.run.log(row, step=step)

    def finish(self) -> None:
        self.run.finish()


def build_mirror(cfg, run_id: str, config: dict, run_dir: str):
    if cfg.name == "none":
        return NoMirror()
    if cfg.name == "wandb":
        return WandbMirror(cfg, run_id, config, run_dir)
    raise ConfigError(f"unknown logger '{cfg.name}'; valid: {', '.join(LOGGER_NAMES)}")
