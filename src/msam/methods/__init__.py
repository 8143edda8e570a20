"""The gradient rules and their registry: a config's method.name picks one."""

from __future__ import annotations

from omegaconf import DictConfig
from torch.nn.modules.batchnorm import _BatchNorm

from msam.errors import ConfigError
from msam.methods.base import Method
from msam.methods.msam_loop import DESCENT_LOSSES, MicroBatchSAMLoop
from msam.methods.msam_vmap import MicroBatchSAMVmap
from msam.methods.reweight import NORM_SCALES, PROBE_BN_MODES, GibbsReweighting
from msam.methods.vanilla import Vanilla
from msam.precision import FP32, Precision

METHOD_NAMES = ("vanilla", "sam", "msam", "asam", "rwsam")
PERTURBED = ("sam", "msam", "asam", "rwsam")  # methods with an ascent step e(g)
MSAM_IMPLEMENTATIONS = ("loop", "vmap", "auto")
# impl=auto, a rule rather than a start-up measurement, so that a run and its resumed
# continuation always use the same implementation. On a CPU the loop: on the 2-core CPU it beat
# vmap for ResNet-18 and a small ViT at every m (results/bench/cpu_2core_quick.md). On CUDA,
# vmap for models without BatchNorm once m >= AUTO_VMAP_MIN_M: many tiny passes leave a GPU idle,
# while vmap turns them into batched products. The CUDA branch is an expectation, not yet a
# measurement of ours: run msam-bench on your GPU.
AUTO_VMAP_MIN_M = 8


def auto_implementation(device_type: str, has_batchnorm: bool, m: int) -> str:
    return "vmap" if device_type == "cuda" and not has_batchnorm and m >= AUTO_VMAP_MIN_M else "loop"


def choose_implementation(impl: str, m: int, model) -> str:
    if impl != "auto":
        return impl
    if model is None:
        return "loop"
    device_type = next(model.parameters()).device.type
    return auto_implementation(device_type, any(isinstance(x, _BatchNorm) for x in model.modules()), m)


def check_vmap_precision(model, precision: Precision) -> None:
    """On the CPU, vmap's batch_norm rule under autocast gets bf16 inputs with float32 running
    statistics and stops ("expected scalar type BFloat16 but found Float"). CUDA's kernels take
    mixed dtypes; scripts/gpu_check.sh runs vmap with BatchNorm in bf16 there."""
    if model is None or not precision.mixed or precision.device_type != "cpu":
        return
    if any(isinstance(x, _BatchNorm) for x in model.modules()):
        raise ConfigError("method.impl=vmap with bf16/fp16 autocast does not run BatchNorm models on a CPU; "
                          "use method.impl=loop (or precision=fp32)")


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


def perturbation_options(cfg: DictConfig) -> dict:
    return {"normalize": cfg.normalize, "adaptive": cfg.adaptive, "eta": cfg.eta}


def build_method(cfg: DictConfig, processes: int = 1, model=None, precision: Precision = FP32) -> Method:
    """Build the method named by cfg.name; values were validated by msam.config. Under K
    processes each one runs m / K micro-batches of its share of the batch (msam.dist). The
    precision decides the autocast region of every forward and fp16's loss scale."""
    name = method_label(cfg)
    if cfg.name == "vanilla":
        return Vanilla(precision)
    if cfg.name in ("sam", "asam"):
        return MicroBatchSAMLoop(m=cfg.m // processes, rho=cfg.rho, eps=cfg.eps, name=name, precision=precision,
                                 **perturbation_options(cfg))
    if cfg.name == "rwsam":
        return MicroBatchSAMLoop(m=cfg.m // processes, rho=cfg.rho, eps=cfg.eps, name=name,
                                 reweighting=GibbsReweighting.from_config(cfg), descent_loss=cfg.descent_loss,
                                 precision=precision, **perturbation_options(cfg))
    if cfg.name == "msam":
        impl = choose_implementation(cfg.impl, cfg.m // processes, model)
        if impl == "loop":
            return MicroBatchSAMLoop(m=cfg.m // processes, rho=cfg.rho, eps=cfg.eps, name=name,
                                     precision=precision, **perturbation_options(cfg))
        if impl == "vmap":
            check_vmap_precision(model, precision)
            return MicroBatchSAMVmap(m=cfg.m // processes, rho=cfg.rho, eps=cfg.eps,
                                     chunk_size=cfg.get("chunk_size"), name=name, precision=precision,
                                     **perturbation_options(cfg))
        raise ConfigError(f"unknown method.impl '{cfg.impl}'; valid: {', '.join(MSAM_IMPLEMENTATIONS)}")
    raise ConfigError(f"unknown method '{cfg.name}'; valid: {', '.join(METHOD_NAMES)}")
