"""Every measure msam-sharpness offers, on one model and one training set: what `measures=[...]`
runs, its cost estimate before it starts, and the cost it recorded.

    lambda_max  the largest Hessian eigenvalue (Lanczos or power iteration)
    trace       the Hessian trace (Hutchinson)
    topk        the k largest eigenvalues (the same Lanczos run as lambda_max)
    density     the eigenvalue density (stochastic Lanczos quadrature)
    sharpness   worst- and average-case sharpness on batches of n samples (msam.sharpness.perturbed)
    landscape   1-D and 2-D slices and the linear path to another run (msam.sharpness.landscape)

All of them see the same loss, data and model mode (eval, no autocast, no weight decay); all run
under torchrun with one all-reduce per product, per gradient or per set of points.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from hessian_eigenthings.algorithms.spectral_density import spectral_density
from omegaconf import DictConfig
from torch import nn

from msam import dist, timing
from msam.data.analysis import AnalysisData
from msam.errors import ConfigError
from msam.sharpness import landscape as slices
from msam.sharpness.lanczos import EARLY_CHECKS, top_eigenpairs
from msam.sharpness.loss import TrainingLoss
from msam.sharpness.measure import NotConverged, seconds_per_gradient, timed_product
from msam.sharpness.operator import PerSampleLoss, ReIterable, TrainingLossHessian
from msam.sharpness.perturbed import average_case, batch_positions, scaling, worst_case
from msam.sharpness.spectrum import hessian_trace, top_eigenvalue

log = logging.getLogger("msam")
MEASURES = ("lambda_max", "trace", "topk", "density", "sharpness", "landscape")
FORWARD_PER_GRADIENT = 1 / 3  # the cost estimate's assumption: a forward pass is a third of a forward+backward


@dataclass
class Sizes:
    """The run's own batch sizes, for sharpness.batch_sizes' names."""
    micro: int
    batch: int


def resolved_batch_sizes(names, sizes: Sizes, num_samples: int) -> list[tuple[str, int]]:
    """(label, n) for each entry of sharpness.batch_sizes; n = num_samples means the full set.
    Two labels of the same n (SAM's micro-batch is its batch) are measured once."""
    out = []
    for entry in names:
        if entry in ("micro", "batch"):
            n = getattr(sizes, entry)
        elif entry == "full":
            n = num_samples
        else:
            n = int(entry)
        label = str(entry)
        if n >= num_samples:
            n, label = num_samples, "full" if entry == "full" else label
        if (label, n) not in out:
            out.append((label, n))
    return out


def needs_eigenvector(measures, settings: DictConfig) -> bool:
    return "landscape" in measures and "eigenvector" in settings.landscape.directions


def plan(measures, settings: DictConfig, sizes: list[tuple[str, int]], num_samples: int) -> dict:
    """The most work each measure asks for: products, forward+backward and forward passes over the
    measured samples."""
    k = settings.topk.k if "topk" in measures else 1
    work = {}
    if {"lambda_max", "topk"} & set(measures) or needs_eigenvector(measures, settings):
        iterations = settings.max_iter * (2 if settings.algorithm == "power" else 1)
        checks = 0 if settings.algorithm == "power" else k * (EARLY_CHECKS + 1)  # residual checks of k products
        work["eigen"] = {"products": iterations + checks}
        if "topk" in measures and settings.algorithm == "power":
            work["topk"] = {"products": settings.max_iter + (EARLY_CHECKS + 1) * settings.topk.k}
    if "trace" in measures and settings.trace_probes > 0:
        work["trace"] = {"products": settings.trace_probes}
    if "density" in measures:
        work["density"] = {"products": settings.density.probes * settings.density.lanczos_steps}
    if "sharpness" in measures:
        s = settings.sharpness
        covered = 0.0
        for n in dict.fromkeys(n for _, n in sizes):
            batches = num_samples // n if s.max_batches is None else min(num_samples // n, s.max_batches)
            covered += batches * n / num_samples
        scales = len(s.scales)
        worst = "worst" in s.kinds
        work["sharpness"] = {
            "forward_backward": covered * ((1 + scales * (s.ascent_steps - 1)) if worst else 0),
            "forward": covered * ((scales if worst else 0) + ((0 if worst else 1) + 2 * scales * s.average_draws
                                                               if "average" in s.kinds else 0))}
    if "landscape" in measures:
        land = settings.landscape
        points = land.points * len(land.directions) + land.points_2d ** 2
        points += land.path_points if land.against is not None else 0
        work["landscape"] = {"forward": points}
    return work


def estimate_seconds(work: dict, product_seconds: float, gradient_seconds: float) -> float:
    return sum(part.get("products", 0) * product_seconds + part.get("forward_backward", 0) * gradient_seconds
               + part.get("forward", 0) * gradient_seconds * FORWARD_PER_GRADIENT for part in work.values())


def announce(work: dict, seconds: float, product: str, product_seconds: float, gradient_seconds: float) -> None:
    parts = []
    for name, part in work.items():
        units = [f"{part['products']} products" if part.get("products") else "",
                 f"{part['forward_backward']:.3g} forward+backward passes" if part.get("forward_backward") else "",
                 f"{part['forward']:.3g} forward passes" if part.get("forward") else ""]
        parts.append(f"{name}: " + ", ".join(u for u in units if u))
    log.info(f"sharpness: at most {'; '.join(parts)} over the samples; a product {product_seconds:.3g} s "
             f"({product}), a forward+backward {gradient_seconds:.3g} s: at most {seconds / 60:.1f} min")


def eigen_section(pairs, seconds: float, products: int) -> dict:
    return {"k": len(pairs.values), "eigenvalues": pairs.values, "residuals": pairs.residuals,
            "converged": pairs.converged, "iterations": pairs.iterations, "hvp_count": products, "seconds": seconds}


def density_section(op: TrainingLossHessian, settings: DictConfig, seed: int) -> dict:
    d = settings.density
    steps = min(d.lanczos_steps, op.size)
    start, products = timing.now(op.device), op.count
    result = spectral_density(op, num_runs=d.probes, lanczos_steps=steps, num_grid_points=d.grid_points,
                              sigma=d.sigma, seed=seed)
    nodes = [[x for x in row.tolist() if x == x] for row in result.raw_eigenvalues]  # NaN pads short runs
    weights = [row[:len(n)] for row, n in zip(result.raw_weights.tolist(), nodes)]
    # below -negative_below x the largest |node|: the near-zero bulk's nodes land on either side of 0
    # by rounding and by the quadrature's resolution, and would make "negative" mostly noise
    cutoff = -d.negative_below * max(abs(x) for ns in nodes for x in ns)
    negative = sum(w for ns, ws in zip(nodes, weights) for x, w in zip(ns, ws) if x < cutoff) / d.probes
    return {"probes": d.probes, "lanczos_steps": steps, "sigma": float(result.sigma), "nodes": nodes,
            "weights": weights, "grid": result.grid.tolist(), "density": result.density.tolist(),
            "negative_mass": negative, "negative_below": cutoff, "hvp_count": op.count - products,
            "seconds": timing.now(op.device) - start}


def batch_values(loss: TrainingLoss, settings: DictConfig, seed: int, combos) -> list[float]:
    """One value per (kind, scale) in combos, on one batch (or the full set)."""
    s = settings.sharpness
    start = loss.value_and_grad(None) if "worst" in s.kinds else None
    base = start[0] if start is not None else None  # L_S(w), read once for every (kind, scale)
    values = []
    for kind, scale in combos:
        t = scaling(loss, scale, s.adaptive_eta)
        if kind == "worst":
            values.append(worst_case(loss, s.rho, s.ascent_steps, t, start)[1])
        else:
            base, rise = average_case(loss, s.rho, s.average_draws, seed, t, base)
            values.append(rise)
    return values


def sharpness_section(model: nn.Module, data: AnalysisData, per_sample_loss: PerSampleLoss, settings: DictConfig,
                      sizes: list[tuple[str, int]], ctx: dist.DistContext) -> dict:
    """Worst/average, plain/adaptive sharpness for each n: the mean over batches and its standard
    error. Whole batches are dealt to the processes (batch j to rank j mod K); the full set is
    sharded like the Hessian products. One all-reduce per n (per gradient for the full set)."""
    s = settings.sharpness
    combos = [(kind, scale) for kind in s.kinds for scale in s.scales]
    start = timing.now(ctx.device)
    rows, forward_backward, forward = [], 0.0, 0.0
    alone = dist.DistContext(device=ctx.device)
    for n in dict.fromkeys(n for _, n in sizes):
        labels = [label for label, size in sizes if size == n]
        if n == data.num_samples:
            loss = TrainingLoss(model, ReIterable(data.batches), n, per_sample_loss, ctx)
            table = torch.tensor([batch_values(loss, settings, settings.seed, combos)], dtype=torch.float64)
            forward_backward += loss.forward_backward
            forward += loss.forward
        else:
            positions = batch_positions(data.index, n, settings.seed, s.max_batches)
            table = torch.zeros(len(positions), len(combos), dtype=torch.float64, device=ctx.device)
            work = torch.zeros(2, dtype=torch.float64, device=ctx.device)
            for j in range(ctx.rank, len(positions), ctx.world_size):
                batch = ReIterable(lambda chosen=positions[j]: data.subset_batches(chosen))
                loss = TrainingLoss(model, batch, n, per_sample_loss, alone)
                table[j] = torch.tensor(batch_values(loss, settings, settings.seed * 1_000_003 + j, combos),
                                        dtype=torch.float64)
                work += torch.tensor([loss.forward_backward, loss.forward], dtype=torch.float64,
                                     device=ctx.device) * n / data.num_samples
            dist.all_reduce_sum([table, work], ctx)
            forward_backward += float(work[0])
            forward += float(work[1])
            table = table.cpu()
        count = table.shape[0]
        for label in labels:
            for c, (kind, scale) in enumerate(combos):
                column = table[:, c]
                stderr = float(column.std() / count ** 0.5) if count > 1 else None
                rows.append({"kind": kind, "scale": scale, "n": n, "n_label": label, "mean": float(column.mean()),
                             "stderr": stderr, "batches": count})
    return {"rho": s.rho, "ascent_steps": s.ascent_steps, "average_draws": s.average_draws,
            "adaptive_eta": s.adaptive_eta, "rows": rows, "forward_backward": forward_backward, "forward": forward,
            "seconds": timing.now(ctx.device) - start}


def landscape_section(loss: TrainingLoss, settings: DictConfig, eigen: tuple[float, torch.Tensor] | None,
                      against: tuple[str, dict] | None, model: nn.Module) -> dict:
    land = settings.landscape
    start, passes = timing.now(loss.weights[0].device), loss.forward
    generator = torch.Generator().manual_seed(settings.seed)
    base = loss.value(None)
    out = {"span": land.span, "eigenvector_span": land.eigenvector_span, "points": land.points,
           "points_2d": land.points_2d, "base_loss": base, "slices": {}}
    if "random" in land.directions:
        alphas = slices.grid(land.span, land.points)
        direction = slices.filter_normalized(loss, generator)
        out["slices"]["random"] = {"alpha": alphas, "loss": slices.line(loss, direction, alphas)}
    if "eigenvector" in land.directions:
        value, vector = eigen
        # an eigenvector's sign is arbitrary (it follows Lanczos' start vector): orient it uphill,
        # v . grad L >= 0, so that +a means the same side for every run and seeds can be averaged
        if float(torch.dot(vector, loss.value_and_grad(None)[1])) < 0:
            vector = -vector
        alphas = slices.grid(land.eigenvector_span, land.points)
        out["slices"]["eigenvector"] = {"alpha": alphas, "loss": slices.line(loss, vector, alphas), "eigenvalue": value}
    if land.points_2d > 0:
        first, second = slices.filter_normalized(loss, generator), slices.filter_normalized(loss, generator)
        alphas = slices.grid(land.span, land.points_2d)
        out["plane"] = {"alpha": alphas, "beta": alphas, "loss": slices.plane(loss, first, second, alphas, alphas)}
    if against is not None:
        name, other = against
        mine = {k: v.detach() for k, v in model.state_dict().items()}
        ts = torch.linspace(0, 1, land.path_points, dtype=torch.float64).tolist()
        out["path"] = {"against": name, "t": ts, "loss": slices.path(loss, mine, other, ts)}
    out["forward_passes"] = loss.forward - passes
    out["seconds"] = timing.now(loss.weights[0].device) - start
    return out


def measure(model: nn.Module, batches: ReIterable, num_samples: int, per_sample_loss: PerSampleLoss,
            settings: DictConfig, ctx: dist.DistContext | None = None, *, data: AnalysisData | None = None,
            sizes: Sizes | None = None, against: tuple[str, dict] | None = None) -> dict:
    """The measures in settings.measures (conf/sharpness.yaml) of the mean loss over num_samples
    samples (all processes): sharpness.json's sections, and its top-level lambda_max and trace
    keys as before. Sharpness on batches also needs `data` (to read any batch) and `sizes`."""
    measures = list(settings.measures)
    ctx = ctx or dist.DistContext(device=next(model.parameters()).device)
    if "sharpness" in measures and (data is None or sizes is None):
        raise ConfigError("measures=[sharpness] needs the training set's positions and the run's batch sizes")
    was_training = model.training
    model.eval()
    try:
        op = TrainingLossHessian(model, batches, num_samples, per_sample_loss, settings.product, ctx)
        gradient_seconds = seconds_per_gradient(model, batches, per_sample_loss, settings.gradient_passes)
        product_seconds = timed_product(op, settings.seed)
        batch_sizes = resolved_batch_sizes(settings.sharpness.batch_sizes, sizes, num_samples) if sizes else []
        work = plan(measures, settings, batch_sizes, num_samples)
        estimate = estimate_seconds(work, product_seconds, gradient_seconds)
        announce(work, estimate, settings.product, product_seconds, gradient_seconds)
        start = timing.now(op.device)
        units = {}  # each section's seconds over one forward+backward's: its measured cost in those units
        result: dict = {"measures": [m for m in MEASURES if m in measures and
                                     not (m == "trace" and settings.trace_probes == 0)]}
        eigen = None
        if "eigen" in work:
            k = settings.topk.k if "topk" in measures and settings.algorithm == "lanczos" else 1
            top = top_eigenvalue(settings.algorithm, op, settings.max_iter, settings.tol, settings.seed, k)
            if not top.converged and not settings.keep_unconverged:
                raise NotConverged(
                    f"lambda_max did not converge in {top.iterations} iterations (residual {top.residual:.3g}, "
                    f"estimate {top.value:.6g}); raise max_iter or tol, or pass keep_unconverged=true")
            eigen = (top.value, top.vector)
            eigen_products, eigen_seconds = op.count, timing.now(op.device) - start
            units["eigen"] = eigen_seconds
            if "lambda_max" in measures:
                result.update({"lambda_max": top.value, "lambda_max_residual": top.residual,
                               "lambda_largest_magnitude": top.largest_magnitude, "converged": top.converged,
                               "algorithm": settings.algorithm, "iterations": top.iterations, "tol": settings.tol,
                               "hvp_count_lambda_max": eigen_products})
            if "topk" in measures:
                if top.pairs is not None:
                    result["topk"] = eigen_section(top.pairs, eigen_seconds, eigen_products)
                else:  # power iteration gives one pair; the k largest come from Lanczos
                    before, begun = op.count, timing.now(op.device)
                    pairs = top_eigenpairs(op, settings.topk.k, settings.max_iter, settings.tol, settings.seed)
                    result["topk"] = eigen_section(pairs, timing.now(op.device) - begun, op.count - before)
                    units["topk"] = result["topk"]["seconds"]
        if "trace" in measures and settings.trace_probes > 0:  # 0 probes: the trace is not asked for
            begun = timing.now(op.device)
            trace, stderr = hessian_trace(op, settings.trace_probes, settings.seed)
            result.update({"trace": trace, "trace_stderr": stderr, "trace_probes": settings.trace_probes})
            units["trace"] = timing.now(op.device) - begun
        if "density" in measures:
            result["density"] = density_section(op, settings, settings.seed)
            units["density"] = result["density"]["seconds"]
        hvp_seconds = sum(units.values())
        if "sharpness" in measures:
            result["sharpness"] = sharpness_section(model, data, per_sample_loss, settings, batch_sizes, ctx)
            units["sharpness"] = result["sharpness"]["seconds"]
        if "landscape" in measures:
            loss = TrainingLoss(model, batches, num_samples, per_sample_loss, ctx)
            result["landscape"] = landscape_section(loss, settings, eigen, against, model)
            units["landscape"] = result["landscape"]["seconds"]
        seconds = timing.now(op.device) - start
    finally:
        model.train(was_training)
    result.update({
        "hvp_method": settings.product,
        "hvp_count": op.count,
        "estimated_seconds_at_most": estimate,
        "seconds": seconds,
        "seconds_per_hvp": hvp_seconds / op.count if op.count else None,
        "seconds_per_gradient": gradient_seconds,
        "gradient_passes": settings.gradient_passes,
        "hvp_cost_vs_gradient": hvp_seconds / op.count / gradient_seconds if op.count else None,
        "cost": {"at_most": {name: dict(part) for name, part in work.items()},
                 "forward_backward_units": {name: value / gradient_seconds for name, value in units.items()}},
    })
    return result


def measure_sharpness(model: nn.Module, batches: ReIterable, num_samples: int, per_sample_loss: PerSampleLoss, *,
                      algorithm: str, max_iter: int, tol: float, trace_probes: int, seed: int,
                      keep_unconverged: bool, gradient_passes: int, product: str = "double_backward",
                      ctx: dist.DistContext | None = None) -> dict:
    """lambda_max and the trace of the mean training loss over num_samples samples (all processes):
    `measure` with measures=[lambda_max, trace]."""
    from msam.sharpness.settings import default_settings

    settings = default_settings(measures=["lambda_max", "trace"], algorithm=algorithm, max_iter=max_iter, tol=tol,
                                trace_probes=trace_probes, seed=seed, keep_unconverged=keep_unconverged,
                                gradient_passes=gradient_passes, product=product)
    return measure(model, batches, num_samples, per_sample_loss, settings, ctx)


def check_measures(settings: DictConfig) -> None:
    unknown = [m for m in settings.measures if m not in MEASURES]
    if unknown or not settings.measures:
        raise ConfigError(f"measures={list(settings.measures)}: each must be one of {', '.join(MEASURES)}")
