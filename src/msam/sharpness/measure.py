"""Measure lambda_max and the trace of a model's training-loss Hessian, deterministically.

The operator is deterministic: the model is in eval mode (BatchNorm uses its running
statistics, dropout is off), the batches come in a fixed order without augmentation, and no
autocast is active. The model's mode is restored afterwards; its weights are never written.
Weight decay is not part of the loss.
"""

from __future__ import annotations

import logging
import statistics

import torch
from torch import nn

from msam import timing
from msam.dist import DistContext
from msam.errors import ConfigError
from msam.methods.base import model_output
from msam.sharpness.operator import PerSampleLoss, ReIterable, TrainingLossHessian
from msam.sharpness.spectrum import hessian_trace, top_eigenvalue

log = logging.getLogger("msam")


class NotConverged(ConfigError):
    """The eigenvalue did not converge and the user did not ask to keep such a result."""


def seconds_per_gradient(model: nn.Module, batches: ReIterable, per_sample_loss: PerSampleLoss,
                         passes: int) -> float:
    """One forward+backward over the same batches, the unit a Hessian-vector product costs: the
    median of `passes` timed passes, so that one pass slowed by other work on the machine does not
    make the products look cheap (a single pass gave 1.3x to 5.9x for the same model)."""
    device = next(model.parameters()).device
    times = []
    for _ in range(passes):
        start = timing.now(device)
        for inputs, targets in batches:
            per_sample_loss(model_output(model, inputs), targets).sum().backward()
        times.append(timing.now(device) - start)
    model.zero_grad(set_to_none=True)
    return statistics.median(times)


def timed_product(op: TrainingLossHessian, seed: int) -> float:
    """Seconds of one product (not counted), to announce the cost before the algorithms run."""
    vector = torch.randn(op.size, generator=torch.Generator().manual_seed(seed), dtype=op.dtype).to(op.device)
    start = timing.now(op.device)
    op.matvec(vector)
    op.count -= 1
    return timing.now(op.device) - start


def measure_sharpness(model: nn.Module, batches: ReIterable, num_samples: int, per_sample_loss: PerSampleLoss, *,
                      algorithm: str, max_iter: int, tol: float, trace_probes: int, seed: int,
                      keep_unconverged: bool, gradient_passes: int, product: str = "double_backward",
                      ctx: DistContext | None = None) -> dict:
    """lambda_max and the trace of the mean training loss over num_samples samples (all processes)."""
    was_training = model.training
    model.eval()
    try:
        op = TrainingLossHessian(model, batches, num_samples, per_sample_loss, product, ctx)
        first = timed_product(op, seed)
        most = max_iter * (2 if algorithm == "power" else 1) + trace_probes
        log.info(f"sharpness: at most {most} Hessian-vector products ({algorithm} max_iter={max_iter}, "
                 f"trace_probes={trace_probes}), {first:.3g} s each by {product}: at most {most * first / 60:.1f} min")
        device = op.device
        start = timing.now(device)
        top = top_eigenvalue(algorithm, op, max_iter, tol, seed)
        if not top.converged and not keep_unconverged:
            raise NotConverged(
                f"lambda_max did not converge in {top.iterations} iterations (residual {top.residual:.3g}, "
                f"estimate {top.value:.6g}); raise max_iter or tol, or pass keep_unconverged=true"
            )
        eigen_hvps = op.count
        trace, trace_stderr = hessian_trace(op, trace_probes, seed) if trace_probes > 0 else (None, None)
        seconds = timing.now(device) - start
        gradient_seconds = seconds_per_gradient(model, batches, per_sample_loss, gradient_passes)
    finally:
        model.train(was_training)
    return {
        "lambda_max": top.value,
        "lambda_max_residual": top.residual,
        "lambda_largest_magnitude": top.largest_magnitude,
        "converged": top.converged,
        "algorithm": algorithm,
        "iterations": top.iterations,
        "tol": tol,
        "trace": trace,
        "trace_stderr": trace_stderr,
        "trace_probes": trace_probes,
        "hvp_method": product,
        "hvp_count": op.count,
        "hvp_count_lambda_max": eigen_hvps,
        "estimated_seconds_at_most": most * first,
        "seconds": seconds,
        "seconds_per_hvp": seconds / max(op.count, 1),
        "seconds_per_gradient": gradient_seconds,
        "gradient_passes": gradient_passes,
        "hvp_cost_vs_gradient": (seconds / max(op.count, 1)) / gradient_seconds,
    }
