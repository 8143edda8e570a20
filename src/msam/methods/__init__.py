"""The gradient rules and their registry: a config's method.name picks one."""

from __future__ import annotations

from omegaconf import DictConfig

from msam.errors import ConfigError
from msam.methods.autotune import STEP, Choice, vmap_refused
from msam.methods.base import Method
from msam.methods.compiled import CompiledStep
from msam.methods.msam_loop import DESCENT_LOSSES, SAMLoop
from msam.methods.msam_vmap import SAMVmap
from msam.methods.msam_vmap_ascent import SAMVmapAscent
from msam.methods.reweight import NORM_ESTIMATORS, NORM_SCALES, PROBE_BN_MODES, GibbsReweighting
from msam.methods.vanilla import Vanilla
from msam.precision import FP32, Precision

METHOD_NAMES = ("vanilla", "sam", "msam", "asam", "rwsam")
PERTURBED = ("sam", "msam", "asam", "rwsam")  # methods with an ascent step e(g)
MSAM_IMPLEMENTATIONS = ("loop", "vmap", "vmap_ascent", "auto")  # auto: measured at the start of a run (autotune.py)
VMAP_IMPLEMENTATIONS = ("vmap", "vmap_ascent")  # torch.func: tensor inputs, no torch.compile
RWSAM_IMPLEMENTATIONS = ("loop", "auto")  # RW-SAM's probe runs in the loop; auto is the loop


def uses_auto(cfg: DictConfig) -> bool:
    return cfg.name in ("msam", "rwsam") and cfg.get("impl") == "auto"


def check_vmap_precision(model, precision: Precision) -> None:
    """On the CPU, vmap's batch_norm rule under autocast gets bf16 inputs with float32 running
    statistics and stops ("expected scalar type BFloat16 but found Float"). CUDA's kernels take
    mixed dtypes; scripts/gpu_check.sh runs vmap with BatchNorm in bf16 there."""
    reason = vmap_refused(model, precision)
    if reason is not None:
        raise ConfigError(reason)


def method_label(cfg: DictConfig) -> str:
    """The method's name in run names, metrics and reports: the config's name, plus the
    perturbation variant where it is not the name's own (msam-adaptive, sam-unnormalized, ...)."""
    label = cfg.name
    if cfg.name in PERTURBED:
        if cfg.adaptive and cfg.name != "asam":
            label += "-adaptive"
        if not cfg.normalize:
            label += "-unnormalized"
    return label


def build_method(cfg: DictConfig, processes: int = 1, model=None, precision: Precision = FP32,
                 choice: Choice | None = None) -> Method:
    """Build the method named by cfg.name; values were validated by msam.config. Under K
    processes each one runs m / K micro-batches of its share of the batch (msam.dist). The
    precision decides the autocast region of every forward and fp16's loss scale. With
    impl=auto, `choice` is what the tuning (autotune.py) picked."""
    if cfg.name == "vanilla":
        return Vanilla(precision)
    common = dict(m=cfg.m // processes, rho=cfg.rho, eps=cfg.eps, name=method_label(cfg), precision=precision,
                  normalize=cfg.normalize, adaptive=cfg.adaptive, eta=cfg.eta)
    if cfg.name in ("sam", "asam"):
        return SAMLoop(**common)
    if cfg.name == "rwsam":
        return SAMLoop(**common, reweighting=GibbsReweighting.from_config(cfg), descent_loss=cfg.descent_loss)
    if cfg.name == "msam":
        if cfg.impl == "auto" and choice is None:
            raise ValueError("method.impl=auto is resolved by msam.methods.autotune before the method is built")
        choice = choice or Choice(cfg.impl, cfg.get("chunk_size"))
        if choice.impl == "loop":
            return SAMLoop(**common)
        if choice.impl in VMAP_IMPLEMENTATIONS:
            check_vmap_precision(model, precision)
            vmapped = SAMVmap if choice.impl == "vmap" else SAMVmapAscent
            return vmapped(**common, chunk_size=choice.chunk_size)
        raise ConfigError(f"unknown method.impl '{cfg.impl}'; valid: {', '.join(MSAM_IMPLEMENTATIONS)}")
    raise ConfigError(f"unknown method '{cfg.name}'; valid: {', '.join(METHOD_NAMES)}")


def fixed_choice(cfg: DictConfig, compiled: bool) -> Choice:
    """The implementation a config names (not impl=auto): mSAM's impl, RW-SAM's loop, or the
    one step of the other methods; compiled under compile.step=true."""
    if cfg.name == "msam":
        return Choice(cfg.impl, cfg.get("chunk_size"), compiled)
    return Choice("loop" if cfg.name == "rwsam" else STEP, compiled=compiled)


def build_step(cfg: DictConfig, compile_cfg: DictConfig, processes: int = 1, model=None,
               precision: Precision = FP32, choice: Choice | None = None) -> Method:
    """build_method, with the whole step under torch.compile where the choice is compiled
    (compile.step; the settings are conf/train.yaml's compile.*)."""
    method = build_method(cfg, processes, model, precision, choice if cfg.name == "msam" else None)
    if choice is None or not choice.compiled:
        return method
    return CompiledStep(method, backend=compile_cfg.backend, mode=compile_cfg.mode, dynamic=compile_cfg.dynamic,
                        cache_dir=compile_cfg.cache_dir, fallback_random=compile_cfg.fallback_random)
