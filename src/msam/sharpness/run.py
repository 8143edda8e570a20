"""Sharpness of a finished run: rebuild its model from config.yaml and last.pt, measure, and
write sharpness.json into the run directory."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf

from msam import checkpoints, runs
from msam.data.analysis import analysis_batches
from msam.engine import per_sample_cross_entropy, pick_device
from msam.errors import ConfigError
from msam.mirror import build_mirror
from msam.models import build_model
from msam.sharpness.measure import measure_sharpness
from msam.sharpness.operator import ReIterable

log = logging.getLogger("msam")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def load_finished_run(run_dir: Path):
    summary = runs.read_json(run_dir / "summary.json")
    if summary is None or not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"not a run directory (no summary.json/config.yaml): {run_dir}")
    if summary["status"] != "finished":
        raise ConfigError(f"run is not finished (status {summary['status']!r}): {run_dir}")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    state, _ = checkpoints.load(run_dir)
    if state is None:
        raise ConfigError(f"no last.pt in {run_dir}")
    return cfg, state


def mirror_sharpness(cfg, run_dir: Path, result: dict) -> None:
    """Add lambda_max and the trace to the run's dashboard run, if it has one."""
    mirror = build_mirror(cfg.logger, run_dir.name, OmegaConf.to_container(cfg, resolve=True), str(run_dir))
    mirror.summary({key: result[key] for key in ("lambda_max", "trace", "trace_stderr", "converged")})
    mirror.finish()


def measure_run(run_dir: str | Path, *, algorithm: str = "lanczos", max_iter: int = 100, tol: float = 1e-4,
                trace_probes: int = 100, batch_size: int = 1024, max_samples: int | None = None,
                dtype: str = "float32", device: str = "auto", seed: int = 0,
                keep_unconverged: bool = False) -> dict:
    """Measure lambda_max and the trace at the run's final weights; write and return sharpness.json."""
    run_dir = Path(run_dir)
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}'; valid: {', '.join(DTYPES)}")
    cfg, state = load_finished_run(run_dir)
    if cfg.model.arch == "transformers":
        raise ConfigError(f"msam-sharpness measures the image classifiers; a GLUE run ({run_dir.name}) is not "
                          "supported yet")
    torch_device = pick_device(device)
    batches = analysis_batches(cfg.dataset, batch_size, max_samples, seed, torch_device, DTYPES[dtype])
    num_samples = sum(len(targets) for _, targets in batches)
    model = build_model(cfg.model, cfg.dataset.num_classes, tuple(batches[0][0].shape[1:]))
    model.load_state_dict(state["model"])
    model = model.to(torch_device, DTYPES[dtype])
    loss = per_sample_cross_entropy(cfg.label_smoothing)
    log.info(f"sharpness of {run_dir.name}: {num_samples} training samples in {len(batches)} batches")
    result = measure_sharpness(model, ReIterable(lambda: batches), len(batches), num_samples, loss,
                               algorithm=algorithm, max_iter=max_iter, tol=tol, trace_probes=trace_probes,
                               seed=seed, keep_unconverged=keep_unconverged)
    result.update({
        "run": run_dir.name,
        "checkpoint_epoch": state["epoch"],
        "loss": f"mean cross-entropy with label_smoothing={cfg.label_smoothing} over the samples below; "
                "weight decay is not included",
        "data": {"dataset": cfg.dataset.name, "split": "train", "samples": num_samples,
                 "batch_size": batch_size, "max_samples": max_samples, "augmentation": "none",
                 "order": "fixed"},
        "model_mode": "eval (BatchNorm running statistics, no dropout)",
        "dtype": dtype,
        "provenance": runs.provenance(torch_device),
    })
    runs.write_json(run_dir / "sharpness.json", result)
    mirror_sharpness(cfg, run_dir, result)
    trace = "not measured" if result["trace"] is None else f"{result['trace']:.4g} ± {result['trace_stderr']:.2g}"
    log.info(f"lambda_max {result['lambda_max']:.4g} (converged {result['converged']}), trace {trace}, "
             f"{result['hvp_count']} HVPs in {result['seconds']:.1f}s")
    return result
