"""RW-SAM's per-sample gradient norms on trained runs: the one-probe finite-difference estimate
against the exact norms, and the effective sample size of the Gibbs weights.

    .venv/bin/python scripts/rwsam_norms.py runs/digits/rwsam --out results/digits/rwsam/norms

For every finished RW-SAM run under RUNS, at two points: its final weights (last.pt) and a
fresh initialisation of its model (torch.manual_seed(seed), as msam-train seeds before building
it). On --batches batches of the run's micro-batch size B / m (what one reweighting sees) drawn
from the training set as msam-sharpness draws its subset (a random subset fixed by the run's
seed, in index order, no augmentation), in training mode with the run's probe_bn (as the step
sees them), BatchNorm's running statistics frozen, per batch:

- the exact norms ||grad f_i|| (norm_estimator=exact) and the finite-difference estimate with the
  run's delta and probes (norm_estimator=finite_difference, what the poster proposes);
- the estimate's error: the Pearson correlation of the two over the batch, and the median of
  |estimate - exact| / exact over its samples;
- the effective sample size of the Gibbs weights p = softmax(lambda x scaled norms) under the
  run's lambda and norm_scale, 1 / sum p_i^2 (B for uniform weights, 1 for one sample), from the
  exact norms and from the estimate.

Written: OUT.csv (one row per run, point and batch) and OUT.md (mean ± std over the runs' seeds
and batches, per norm_estimator the run trained with, norm_scale, lambda and point). A run whose
config predates a key of conf/method/rwsam.yaml reads that file's value for it.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import pandas as pd
import torch
import yaml
from omegaconf import OmegaConf

from msam.data.analysis import analysis_data
from msam.engine import per_sample_cross_entropy
from msam.methods.batchnorm import running_stats_frozen
from msam.methods.reweight import GibbsReweighting, rng_state
from msam.models import build_model
from msam.paths import CONF_DIR
from msam.sharpness.run import load_finished_run, rebuilt_model


def effective_sample_size(weights: torch.Tensor) -> float:
    return float(1.0 / weights.double().pow(2).sum())


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-300))


def compare(reweighting: GibbsReweighting, model, loss_fn, inputs, targets) -> dict:
    """Exact norms against the estimate on one batch, and both ESS (the model left as it was)."""
    model.train()
    randomness = rng_state(targets.device)
    with torch.no_grad(), running_stats_frozen(model):  # probe_bn=running reads them: the trained ones
        clean = loss_fn(model(inputs), targets)
    exact = reweighting.exact_grad_norms(model, loss_fn, inputs, targets, randomness).double()
    estimate = reweighting.sample_grad_norms(model, loss_fn, inputs, targets, clean, randomness).double()
    relative = (estimate - exact).abs() / exact.clamp_min(1e-30)
    return {"correlation": correlation(estimate, exact), "median_relative_error": float(relative.median()),
            "ess_exact": effective_sample_size(reweighting.weights(exact)),
            "ess_estimate": effective_sample_size(reweighting.weights(estimate)),
            "mean_norm": float(exact.mean()), "max_over_mean": float(exact.max() / exact.mean())}


def measure_run(run_dir: Path, batches: int) -> list[dict]:
    cfg, state = load_finished_run(run_dir)
    method = OmegaConf.merge(OmegaConf.load(CONF_DIR / "method" / "rwsam.yaml"), cfg.method)
    reweighting = GibbsReweighting.from_config(method)
    size = cfg.batch_size // method.m  # each micro-batch (under K processes: each process's share) is reweighed
    data = analysis_data(cfg, size, batches * size, cfg.seed, torch.device("cpu"), torch.float32)
    trained = rebuilt_model(cfg, state, data.input_shape, torch.device("cpu"), torch.float32, run_dir)
    torch.manual_seed(cfg.seed)
    fresh = build_model(cfg.model, cfg.dataset.num_classes, data.input_shape, cfg.get("smoke"))
    loss_fn = per_sample_cross_entropy(cfg.label_smoothing)
    rows = []
    for point, model in (("init", fresh), ("final", trained)):
        model = copy.deepcopy(model)
        torch.manual_seed(cfg.seed)  # the probes' draws
        for index, (inputs, targets) in enumerate(data.batches()):
            if index == batches:
                break
            rows.append({"run": run_dir.name, "seed": cfg.seed, "trained_with": method.norm_estimator,
                         "norm_scale": method.norm_scale, "lambda": float(method["lambda"]), "B": len(targets),
                         "point": point, "batch": index,
                         **compare(reweighting, model, loss_fn, inputs, targets)})
    return rows


def is_finished_rwsam(run_dir: Path) -> bool:
    """A finished RW-SAM run (one still training, or stopped, has no final weights to measure)."""
    if not (run_dir / "config.yaml").is_file():
        return False
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    summary = json.loads((run_dir / "summary.json").read_text())
    return (config.get("method") or {}).get("name") == "rwsam" and summary.get("status") == "finished"


def fmt(values: pd.Series, digits: int) -> str:
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.{digits}f} ± {std:.{digits}f}"


def markdown(rows: pd.DataFrame, command: str) -> str:
    lines = ["# RW-SAM's per-sample gradient norms: the finite-difference estimate against the exact norms", "",
             f"`{command}`. Per run (its final weights, and a fresh initialisation), training batches of its "
             "micro-batch size B in training mode with its probe_bn: the correlation of the one-probe estimate with "
             "the exact norms over a batch, the median of |estimate - exact| / exact, and the effective sample "
             "size 1/Σp² of the Gibbs weights under the run's λ and norm_scale, from the exact norms and from the "
             "estimate (B: uniform weights; 1: one sample). Mean ± std over seeds and batches. max/mean: the "
             "largest exact norm over the batch mean. At init every λ and norm_scale of a seed sees the same "
             "weights and batches: its correlation, error and max/mean repeat from group to group; only the ESS "
             "depends on λ.", "",
             "| trained with | norm_scale | λ | point | n | correlation | median rel. error | ESS (exact) | "
             "ESS (estimate) | max/mean |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    keys = ["trained_with", "norm_scale", "lambda", "point"]
    for (trained_with, scale, lam, point), group in rows.groupby(keys, sort=True):
        lines.append(f"| {trained_with} | {scale} | {lam:g} | {point} | {len(group)} | {fmt(group.correlation, 3)} | "
                     f"{fmt(group.median_relative_error, 3)} | {fmt(group.ess_exact, 1)} | "
                     f"{fmt(group.ess_estimate, 1)} | {fmt(group.max_over_mean, 1)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="a folder of run directories (searched recursively)")
    parser.add_argument("--batches", type=int, default=4, help="training batches per run and point")
    parser.add_argument("--out", type=Path, default=None, help="OUT.csv and OUT.md (default: print only)")
    args = parser.parse_args(argv)
    run_dirs = sorted(p.parent for p in args.runs.rglob("summary.json") if is_finished_rwsam(p.parent))
    if not run_dirs:
        parser.error(f"no finished RW-SAM run directory under {args.runs}")
    rows = pd.DataFrame([row for run_dir in run_dirs for row in measure_run(run_dir, args.batches)])
    command = f"scripts/rwsam_norms.py {args.runs} --batches {args.batches}"
    table = markdown(rows, command)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        rows.to_csv(args.out.with_suffix(".csv"), index=False)
        args.out.with_suffix(".md").write_text(table)
    return rows


if __name__ == "__main__":
    main()
