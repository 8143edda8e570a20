"""The top Hessian eigenvalue and the Hessian trace, with hessian-eigenthings' algorithms.

lambda_max is the largest *algebraic* eigenvalue. Lanczos (the default, msam.sharpness.lanczos)
asks for the k largest directly and stops once their true residuals pass `tol`. Power iteration,
the paper's tool, finds the eigenvalue of largest *magnitude*; when that one is negative we run it
again on H - lambda I, whose dominant eigenvalue is lambda_max - lambda >= 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hessian_eigenthings import LambdaOperator, hutchinson, power_iteration_one

from msam.sharpness.lanczos import Eigenpairs, top_eigenpairs
from msam.sharpness.operator import TrainingLossHessian


@dataclass
class TopEigenvalue:
    value: float
    residual: float  # ||H v - lambda v|| / |lambda| for the returned unit vector
    iterations: int
    converged: bool
    largest_magnitude: float | None  # power iteration's dominant eigenvalue (None for Lanczos)
    vector: torch.Tensor  # its unit eigenvector (the landscape's eigenvector direction)
    pairs: Eigenpairs | None = None  # Lanczos: the k largest pairs it was asked for


def top_eigenvalue_lanczos(op: TrainingLossHessian, max_iter: int, tol: float, seed: int, k: int = 1) -> TopEigenvalue:
    pairs = top_eigenpairs(op, k, max_iter, tol, seed)
    return TopEigenvalue(pairs.values[0], pairs.residuals[0], pairs.iterations, pairs.residuals[0] <= tol, None,
                         pairs.vectors[0], pairs)


def power_top(op, max_iter: int, tol: float, seed: int):
    value, vector, residual, iterations, converged = power_iteration_one(op, max_iter=max_iter, tol=tol, seed=seed)
    return value, vector, residual, iterations, converged


def top_eigenvalue_power(op: TrainingLossHessian, max_iter: int, tol: float, seed: int, k: int = 1) -> TopEigenvalue:
    dominant, vector, residual, iterations, converged = power_top(op, max_iter, tol, seed)
    if dominant >= 0:
        return TopEigenvalue(dominant, residual / max(abs(dominant), 1e-300), iterations, converged, dominant, vector)
    shifted = LambdaOperator(lambda v: op.matvec(v) - dominant * v, op.size, op.device, op.dtype)
    gap, vector, residual, more, converged_shifted = power_top(shifted, max_iter, tol, seed + 1)
    return TopEigenvalue(gap + dominant, residual / max(abs(gap + dominant), 1e-300), iterations + more, converged and converged_shifted, dominant,
                         vector)


def hessian_trace(op: TrainingLossHessian, probes: int, seed: int) -> tuple[float, float]:
    """Hutchinson's estimate with Rademacher probes, and its standard error."""
    result = hutchinson(op, num_samples=probes, distribution="rademacher", seed=seed)
    return float(result.estimate), float(result.stderr)


ALGORITHMS = {"lanczos": top_eigenvalue_lanczos, "power": top_eigenvalue_power}


def top_eigenvalue(algorithm: str, op: TrainingLossHessian, max_iter: int, tol: float, seed: int,
                  k: int = 1) -> TopEigenvalue:
    """lambda_max; with Lanczos and k > 1 the k largest eigenpairs come from the same run."""
    return ALGORITHMS[algorithm](op, max_iter, tol, seed, k)
