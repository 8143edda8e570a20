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
from msam.domains import SEED_MAX, Bool, Choice, Either, Int, ListOf, Number, Optional, Text, check_domains
from msam.errors import ConfigError, RunError
from msam.mirror import build_mirror
from msam.models import build_model
from msam.precision import exact_fp32
from msam.sharpness.landscape import check_same_architecture
from msam.sharpness.measures import MEASURES, Sizes, check_measures, measure
from msam.sharpness.operator import PRODUCTS, ReIterable
from msam.sharpness.settings import default_settings  # noqa: F401 (msam.sharpness's entry point)

log = logging.getLogger("msam")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
ALGORITHMS = ("lanczos", "power")


def settings_domains() -> dict[str, dict]:
    """conf/sharpness.yaml's keys and what each may be (msam.domains)."""
    from msam.dist import BACKENDS

    return {"": {"run": Optional(Text()), "runs": Optional(Text()), "overwrite": Bool(),
                 "match": Optional(ListOf(Text(), min_length=1)),
                 "algorithm": Choice(ALGORITHMS), "max_iter": Int(1), "tol": Number(0, open_low=True),
                 "trace_probes": Int(0), "product": Choice(PRODUCTS), "batch_size": Int(1),
                 "max_samples": Optional(Int(1)), "dtype": Choice(tuple(DTYPES)), "device": Text(),
                 "dist_backend": Choice(BACKENDS), "seed": Int(0, SEED_MAX), "keep_unconverged": Bool(),
                 "gradient_passes": Int(1), "measures": ListOf(Choice(MEASURES), min_length=1)},
            "topk": {"k": Int(1)},
            "density": {"probes": Int(1), "lanczos_steps": Int(2), "sigma": Optional(Number(0, open_low=True)),
                        "grid_points": Int(2), "negative_below": Number(0)},
            "sharpness": {"rho": Number(0, open_low=True), "kinds": ListOf(Choice(("worst", "average")), min_length=1),
                          "scales": ListOf(Choice(("plain", "adaptive")), min_length=1), "adaptive_eta": Number(0),
                          "ascent_steps": Int(1), "average_draws": Int(1),
                          "batch_sizes": ListOf(Either(Choice(("micro", "batch", "full")), Int(1)), min_length=1),
                          "max_batches": Optional(Int(1))},
            "landscape": {"directions": ListOf(Choice(("random", "eigenvector"))), "span": Number(0, open_low=True),
                          "eigenvector_span": Number(0, open_low=True), "points": Int(3), "points_2d": Int(0),
                          "against": Optional(Text()), "path_points": Int(2)}}


def check_settings(settings: DictConfig) -> None:
    """One line per bad setting, before any run is opened."""
    check_domains(settings, settings_domains())
    check_measures(settings)
    if settings.landscape.points % 2 == 0:
        raise ConfigError(f"landscape.points must be odd, so that a = 0 (the trained weights) is a point; "
                          f"got {settings.landscape.points}")
    if settings.landscape.points_2d == 1:
        raise ConfigError("landscape.points_2d must be 0 (no plane) or at least 2, got 1")
    against = settings.landscape.against
    if "landscape" in settings.measures and against is not None and not (Path(against) / "summary.json").is_file():
        raise ConfigError(f"landscape.against={against} is not a run directory (no summary.json): give the run "
                          "whose final weights end the linear path")


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


def dashboard_values(result: dict) -> dict:
    """sharpness.json's numbers as flat dashboard keys (sharpness/<measure>...)."""
    values = {key: result[key] for key in ("lambda_max", "trace", "trace_stderr", "converged") if key in result}
    if "topk" in result:
        values.update({f"sharpness/lambda_{i + 1}": v for i, v in enumerate(result["topk"]["eigenvalues"])})
    if "density" in result:
        values["sharpness/density_negative_mass"] = result["density"]["negative_mass"]
    for row in result.get("sharpness", {}).get("rows", []):
        values[f"sharpness/{row['kind']}_{row['scale']}_n{row['n_label']}"] = row["mean"]
    random = result.get("landscape", {}).get("slices", {}).get("random")
    if random is not None:
        values["sharpness/landscape_rise"] = (random["loss"][0] + random["loss"][-1]) / 2 - result["landscape"][
            "base_loss"]
    return values


def mirror_sharpness(cfg, run_dir: Path, result: dict) -> None:
    """Add the measures' numbers to the run's dashboard run, if it has one."""
    mirror = build_mirror(cfg.logger, run_dir.name, OmegaConf.to_container(cfg, resolve=True), str(run_dir))
    mirror.summary(dashboard_values(result))
    mirror.finish()


def run_sizes(cfg) -> Sizes:
    """The run's batch size and micro-batch size (batch_size / m; vanilla has no micro-batches)."""
    m = 1 if cfg.method.name == "vanilla" else int(cfg.method.get("m", 1))
    return Sizes(micro=max(cfg.batch_size // m, 1), batch=int(cfg.batch_size))


def other_run_state(against: str, cfg, device: torch.device, dtype: torch.dtype) -> tuple[str, dict]:
    """landscape.against: the other run's final state dict, on the device, in the measuring dtype."""
    from msam.sharpness.landscape import check_same_architecture

    other_cfg, state = load_finished_run(Path(against))
    if OmegaConf.to_container(other_cfg.model) != OmegaConf.to_container(cfg.model):
        raise ConfigError(f"landscape.against={against} trained another model; the linear path needs two runs "
                          "of the same model")
    weights = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in state["model"].items()}
    return Path(against).name, weights


SECTIONS = ("topk", "density", "sharpness", "landscape")  # each carries its own data, cost and provenance


def merged(previous: dict | None, result: dict) -> dict:
    """A run's earlier measures stay; the ones measured now replace theirs. The top-level keys
    (lambda_max, the trace, and the data, cost and provenance of the call that measured them)
    change only when this call measured lambda_max or the trace."""
    if previous is None:
        return result
    out = dict(previous)
    if {"lambda_max", "trace"} & set(result["measures"]):
        out.update({key: value for key, value in result.items() if key not in SECTIONS})
    out.update({key: value for key, value in result.items() if key in SECTIONS})
    out["measures"] = [m for m in MEASURES if m in set(previous.get("measures", ["lambda_max", "trace"]))
                       | set(result["measures"])]
    return out


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
    against = None
    if "landscape" in settings.measures and settings.landscape.against is not None:
        against = other_run_state(settings.landscape.against, cfg, ctx.device, dtype)
        check_same_architecture(model.state_dict(), against[1], settings.landscape.against)
    loss = per_sample_cross_entropy(cfg.label_smoothing)
    log.info(f"sharpness of {run_dir.name}: {', '.join(settings.measures)} over {data.num_samples} training samples "
             f"on {ctx.world_size} process(es), batches of {settings.batch_size}")
    # True float32 on CUDA too: PyTorch's default leaves cuDNN's TF32 on (10 mantissa bits per convolution)
    with exact_fp32(ctx.device.type):
        result = measure(model, ReIterable(data.batches), data.num_samples, loss, settings, ctx, data=data,
                         sizes=run_sizes(cfg), against=against)
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
    section_data = {key: result["data"][key] for key in ("samples", "max_samples", "processes")}
    for name in SECTIONS:
        if name in result:
            result[name]["data"] = {**section_data, "dtype": settings.dtype, "seed": settings.seed,
                                    "checkpoint_epoch": state["epoch"]}
            result[name]["forward_backward_units"] = result["cost"]["forward_backward_units"].get(
                "eigen" if name == "topk" else name)
            result[name]["provenance"] = result["provenance"]
    if ctx.is_main:
        result = merged(runs.read_json(run_dir / "sharpness.json"), result)
        runs.write_json(run_dir / "sharpness.json", result)
        mirror_sharpness(cfg, run_dir, result)
    log.info(f"{run_dir.name}: {summary_line(result, settings.measures)} in {result['seconds']:.1f}s")
    return result


def summary_line(result: dict, measures) -> str:
    parts = []
    if "lambda_max" in measures:
        parts.append(f"lambda_max {result['lambda_max']:.4g} (converged {result['converged']}, "
                     f"{result['hvp_count_lambda_max']} products)")
    if "trace" in measures and result.get("trace") is not None:
        parts.append(f"trace {result['trace']:.4g} ± {result['trace_stderr']:.2g}")
    if "topk" in measures:
        parts.append("top-k " + ", ".join(f"{v:.4g}" for v in result["topk"]["eigenvalues"]))
    if "density" in measures:
        parts.append(f"density negative mass {result['density']['negative_mass']:.3g}")
    if "sharpness" in measures:
        parts.append("sharpness " + ", ".join(f"{r['kind']}/{r['scale']}@{r['n_label']} {r['mean']:.4g}"
                                              for r in result["sharpness"]["rows"]))
    if "landscape" in measures:
        parts.append(f"landscape {result['landscape']['forward_passes']} points")
    if result.get("hvp_cost_vs_gradient") is not None:
        parts.append(f"{result['hvp_count']} products at {result['hvp_cost_vs_gradient']:.2f}x a forward+backward")
    return "; ".join(parts)
