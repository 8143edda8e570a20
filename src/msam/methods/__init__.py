"""The gradient rules and their registry: a config's method.name picks one."""

from __future__ import annotations

from omegaconf import DictConfig
from torch.nn.modules.batchnorm import _BatchNorm

from msam.errors import ConfigError
from msam.methods.base import Method
from msam.methods.msam_loop import MicroBatchSAMLoop
from msam.methods.msam_vmap import MicroBatchSAMVmap
from msam.methods.vanilla import Vanilla

METHOD_NAMES = ("vanilla", "sam", "msam")
MSAM_IMPLEMENTATIONS = ("loop", "vmap", "auto")
# impl=auto: vmap for models without BatchNorm (transformers) once m >= AUTO_VMAP_MIN_M, else the
# loop. On the 2-core CPU the loop beat vmap for BatchNorm CNNs at every m, and vmap beat the loop
# for a ViT at m = 32 (README, "Performance"). A rule, not a start-up measurement, so that a run and
# its resumed continuation always use the same implementation.
AUTO_VMAP_MIN_M = 8


def choose_implementation(impl: str, m: int, model) -> str:
    if impl != "auto":
        return impl
    has_batchnorm = model is not None and any(isinstance(x, _BatchNorm) for x in model.modules())
    return "vmap" if (not has_batchnorm and m >= AUTO_VMAP_MIN_M) else "loop"


def build_method(cfg: DictConfig, processes: int = 1, model=None) -> Method:
    """Build the method named by cfg.name; values were validated by msam.config. Under K
    processes each one runs m / K micro-batches of its share of the batch (msam.dist)."""
    if cfg.name == "vanilla":
        return Vanilla()
    if cfg.name == "sam":
        return MicroBatchSAMLoop(m=1, rho=cfg.rho, eps=cfg.eps, name="sam")
    if cfg.name == "msam":
        impl = choose_implementation(cfg.impl, cfg.m // processes, model)
        if impl == "loop":
            return MicroBatchSAMLoop(m=cfg.m // processes, rho=cfg.rho, eps=cfg.eps, name="msam")
        if impl == "vmap":
            return MicroBatchSAMVmap(m=cfg.m // processes, rho=cfg.rho, eps=cfg.eps,
                                     chunk_size=cfg.get("chunk_size"), name="msam")
        raise ConfigError(f"unknown method.impl '{cfg.impl}'; valid: {', '.join(MSAM_IMPLEMENTATIONS)}")
    raise ConfigError(f"unknown method '{cfg.name}'; valid: {', '.join(METHOD_NAMES)}")
