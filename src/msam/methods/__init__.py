"""The gradient rules and their registry: a config's method.name picks one."""

from __future__ import annotations

from omegaconf import DictConfig

from msam.errors import ConfigError
from msam.methods.base import Method
from msam.methods.msam_loop import MicroBatchSAMLoop
from msam.methods.msam_vmap import MicroBatchSAMVmap
from msam.methods.vanilla import Vanilla

METHOD_NAMES = ("vanilla", "sam", "msam")
MSAM_IMPLEMENTATIONS = ("loop", "vmap")


def build_method(cfg: DictConfig, processes: int = 1) -> Method:
    """Build the method named by cfg.name; values were validated by msam.config. Under K
    processes each one runs m / K micro-batches of its share of the batch (msam.dist)."""
    if cfg.name == "vanilla":
        return Vanilla()
    if cfg.name == "sam":
        return MicroBatchSAMLoop(m=1, rho=cfg.rho, eps=cfg.eps, name="sam")
    if cfg.name == "msam":
        if cfg.impl == "loop":
            return MicroBatchSAMLoop(m=cfg.m // processes, rho=cfg.rho, eps=cfg.eps, name="msam")
        if cfg.impl == "vmap":
            return MicroBatchSAMVmap(m=cfg.m // processes, rho=cfg.rho, eps=cfg.eps,
                                     chunk_size=cfg.get("chunk_size"), name="msam")
        raise ConfigError(f"unknown method.impl '{cfg.impl}'; valid: {', '.join(MSAM_IMPLEMENTATIONS)}")
    raise ConfigError(f"unknown method '{cfg.name}'; valid: {', '.join(METHOD_NAMES)}")
