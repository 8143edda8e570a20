"""Measure lambda_max and the trace of a model's training-loss Hessian, deterministically.

The operator is deterministic: the model is in eval mode (BatchNorm uses its running
statistics, dropout is off), the batches come in a fixed order without augmentation, and no
autocast is active. The model's mode is restored afterwards; its weights are never written.
Weight decay is not part of the loss.
"""

from __future__ import annotations

import torch
from torch import nn

from msam import timing
from msam.errors import ConfigError
from msam.sharpness.operator import PerSampleLoss, ReIterable, training_loss_hessian
from msam.sharpness.spectrum import hessian_trace, top_eigenvalue


class NotConverged(ConfigError):
    """The eigenvalue did not converge and the user did not ask to keep such a result."""


def seconds_per_gradient(model: nn.Module, batches: ReIterable, per_sample_loss: PerSampleLoss) -> float:
    """One forward+backward over the same batches: the unit a Hessian-vector product costs."""
    device = next(model.parameters()).device
    start = timing.now(device)
    for inputs, targets in batches:
        per_sample_loss(model(inputs), targets).sum().backward()
    seconds = timing.now(device) - start
    model.zero_grad(set_to_none=True)
    return seconds


def measure_sharpness(model: nn.Module, batches: ReIterable, num_batches: int, num_samples: int,
                      per_sample_loss: PerSampleLoss, *, algorithm: str, max_iter: int, tol: float,
                      trace_probes: int, seed: int, keep_unconverged: bool) -> dict:
    was_training = model.training
    model.eval()
    try:
        op = training_loss_hessian(model, batches, num_batches, num_samples, per_sample_loss)
        device = next(model.parameters()).device
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
        gradient_seconds = seconds_per_gradient(model, batches, per_sample_loss)
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
        "hvp_count": op.count,
        "hvp_count_lambda_max": eigen_hvps,
        "seconds": seconds,
        "seconds_per_hvp": seconds / max(op.count, 1),
        "seconds_per_gradient": gradient_seconds,
        "hvp_cost_vs_gradient": (seconds / max(op.count, 1)) / gradient_seconds,
    }
