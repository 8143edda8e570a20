"""Sharpness of a finished run: rebuild its model from config.yaml and last.pt, read its training
set through its own evaluation pipeline, measure, and write sharpness.json into the run directory
(rank 0 only, under torchrun)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from msam import checkpoints, dist, runs
from msam.data.analysis import analysis_data
from msam.engine import per_sample_cross_entropy
from msam.domains import SEED_MAX, Bool, Choice, Int, Number, Optional, Text, check_domains
from msam.errors import ConfigError, RunError
from msam.mirror import build_mirror
from msam.models import build_model
from msam.precision import exact_fp32
from msam.sharpness.measure import measure_sharpness
from msam.sharpness.operator import PRODUCTS, ReIterable
from msam.paths import CONF_DIR

log = logging.getLogger("msam")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
ALGORITHMS = ("lanczos", "power")


def default_settings(**overrides) -> DictConfig:
    """conf/sharpness.yaml's settings (without Hydra's keys), with overrides: for library use."""
    settings = OmegaConf.load(CONF_DIR / "sharpness.yaml")
    for key in ("defaults", "hydra"):
        settings.pop(key, None)
    return OmegaConf.merge(settings, overrides)


def settings_domains() -> dict[str, dict]:
    """conf/sharpness.yaml's keys and what each may be (msam.domains)."""
    from msam.dist import BACKENDS

    return {"": {"run": Optional(Text()), "runs": Optional(Text()), "overwrite": Bool(),
                 "algorithm": Choice(ALGORITHMS), "max_iter": Int(1), "tol": Number(0, open_low=True),
                 "trace_probes": Int(0), "product": Choice(PRODUCTS), "batch_size": Int(1),
                 "max_samples": Optional(Int(1)), "dtype": Choice(tuple(DTYPES)), "device": Text(),
                 "dist_backend": Choice(BACKENDS), "seed": Int(0, SEED_MAX), "keep_unconverged": Bool(),
                 "gradient_passes": Int(1)}}


def check_settings(settings: DictConfig) -> None:
    """One line per bad setting, before any run is opened."""
    check_domains(settings, settings_domains())


def load_finished_run(run_dir: Path):
    if not run_dir.is_dir():
        raise ConfigError(f"run={run_dir} is not a folder: give a run directory (one with summary.json)")
    try:
        summary = runs.read_json(run_dir / "summary.json")
    except RunError as error:
        raise ConfigError(str(error)) from None
    if summary is None or not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"not a run directory (no summary.json/config.yaml): {run_dir}")
    if summary.get("status") != "finished":
        raise ConfigError(f"run is not finished (status {summary.get('status')!r}): {run_dir}")
    try:
        cfg = OmegaConf.load(run_dir / "config.yaml")
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise ConfigError(f"{run_dir}/config.yaml is unreadable ({type(error).__name__}); restore it") from None
    state, _ = checkpoints.load(run_dir)
    if state is None:
        raise ConfigError(f"no last.pt in {run_dir}")
    return cfg, state


def mirror_sharpness(cfg, run_dir: Path, result: dict) -> None:
    """Add lambda_max and the trace to the run's dashboard run, if it has one."""
    mirror = build_mirror(cfg.logger, run_dir.name, OmegaConf.to_container(cfg, resolve=True), str(run_dir))
    mirror.summary({key: result[key] for key in ("lambda_max", "trace", "trace_stderr", "converged")})
    mirror.finish()


def rebuilt_model(cfg, state: dict, input_shape, device: torch.device, dtype: torch.dtype, run_dir: Path):
    model = build_model(cfg.model, cfg.dataset.num_classes, input_shape, cfg.get("smoke"))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:  # the model the config builds is not the one trained
        first = str(error).strip().splitlines()[0]
        raise ConfigError(f"last.pt of {run_dir.name} does not fit the model its config builds: {first}") from None
    return model.to(device, dtype)


def measure_run(run_dir: str | Path, settings: DictConfig, ctx: dist.DistContext | None = None) -> dict:
    """Measure lambda_max and the trace at the run's final weights; rank 0 writes sharpness.json.
    settings: conf/sharpness.yaml (default_settings() for library use)."""
    run_dir = Path(run_dir)
    check_settings(settings)
    ctx = ctx or dist.DistContext()
    dtype = DTYPES[settings.dtype]
    cfg, state = load_finished_run(run_dir)
    data = analysis_data(cfg, settings.batch_size, settings.max_samples, settings.seed, ctx.device, dtype,
                         ctx.rank, ctx.world_size)
    checkpoints.check_same_data(state, run_dir / "last.pt", data.fingerprint, force=False)
    model = rebuilt_model(cfg, state, data.input_shape, ctx.device, dtype, run_dir)
    loss = per_sample_cross_entropy(cfg.label_smoothing)
    log.info(f"sharpness of {run_dir.name}: {data.num_samples} training samples over {ctx.world_size} process(es), "
             f"batches of {settings.batch_size}")
    # True float32 on CUDA too: PyTorch's default leaves cuDNN's TF32 on (10 mantissa bits per convolution)
    with exact_fp32(ctx.device.type):
        result = measure_sharpness(model, ReIterable(data.batches), data.num_samples, loss,
                                   algorithm=settings.algorithm, max_iter=settings.max_iter, tol=settings.tol,
                                   trace_probes=settings.trace_probes, seed=settings.seed,
                                   keep_unconverged=settings.keep_unconverged,
                                   gradient_passes=settings.gradient_passes, product=settings.product, ctx=ctx)
    result.update({
        "run": run_dir.name,
        "checkpoint_epoch": state["epoch"],
        "loss": f"mean cross-entropy with label_smoothing={cfg.label_smoothing} over the samples below; "
                "weight decay is not included",
        "data": {"dataset": cfg.dataset.name, "split": "train", "samples": data.num_samples,
                 "batch_size": settings.batch_size, "max_samples": settings.max_samples,
                 "input_shape": list(data.input_shape), "augmentation": "none", "order": "fixed",
                 "processes": ctx.world_size},
        "model_mode": "eval (BatchNorm running statistics, no dropout)",
        "dtype": settings.dtype,
        "provenance": runs.provenance(ctx.device),
    })
    if ctx.is_main:
        runs.write_json(run_dir / "sharpness.json", result)
        mirror_sharpness(cfg, run_dir, result)
    trace = "not measured" if result["trace"] is None else f"{result['trace']:.4g} ± {result['trace_stderr']:.2g}"
    log.info(f"lambda_max {result['lambda_max']:.4g} (converged {result['converged']}), trace {trace}, "
             f"{result['hvp_count']} HVPs in {result['seconds']:.1f}s "
             f"({result['hvp_cost_vs_gradient']:.2f}x a forward+backward each)")
    return result
