"""The top Hessian eigenvalue and the Hessian trace, with hessian-eigenthings' algorithms.

lambda_max is the largest *algebraic* eigenvalue. Lanczos (the default) asks for it directly
(which="LA") with an explicit Krylov dimension: hessian-eigenthings' lanczos(k=1) would
otherwise run only 2 steps. Power iteration, the paper's tool, finds the eigenvalue of largest
*magnitude*; when that one is negative we run it again on H - lambda I, whose dominant
eigenvalue is lambda_max - lambda >= 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from hessian_eigenthings import LambdaOperator, hutchinson, lanczos, power_iteration_one

from msam.sharpness.operator import TrainingLossHessian


@dataclass
class TopEigenvalue:
    value: float
    residual: float  # ||H v - lambda v|| for the returned unit vector (Lanczos: its Ritz estimate)
    iterations: int
    converged: bool
    largest_magnitude: float | None  # power iteration's dominant eigenvalue (None for Lanczos)


def top_eigenvalue_lanczos(op: TrainingLossHessian, max_iter: int, tol: float, seed: int) -> TopEigenvalue:
    steps = min(max_iter, op.size)
    result = lanczos(op, k=1, max_iter=steps, tol=tol, reorthogonalize=True, which="LA", seed=seed)
    return TopEigenvalue(float(result.eigenvalues[0]), float(result.residuals[0]), steps,
                         bool(result.converged[0]), None)


def power_top(op, max_iter: int, tol: float, seed: int):
    value, vector, residual, iterations, converged = power_iteration_one(op, max_iter=max_iter, tol=tol, seed=seed)
    return value, residual, iterations, converged


def top_eigenvalue_power(op: TrainingLossHessian, max_iter: int, tol: float, seed: int) -> TopEigenvalue:
    dominant, residual, iterations, converged = power_top(op, max_iter, tol, seed)
    if dominant >= 0:
        return TopEigenvalue(dominant, residual, iterations, converged, dominant)
    shifted = LambdaOperator(lambda v: op.matvec(v) - dominant * v, op.size, op.device, op.dtype)
    gap, residual, more, converged_shifted = power_top(shifted, max_iter, tol, seed + 1)
    return TopEigenvalue(gap + dominant, residual, iterations + more, converged and converged_shifted, dominant)


def hessian_trace(op: TrainingLossHessian, probes: int, seed: int) -> tuple[float, float]:
    """Hutchinson's estimate with Rademacher probes, and its standard error."""
    result = hutchinson(op, num_samples=probes, distribution="rademacher", seed=seed)
    return float(result.estimate), float(result.stderr)


ALGORITHMS = {"lanczos": top_eigenvalue_lanczos, "power": top_eigenvalue_power}


def top_eigenvalue(algorithm: str, op: TrainingLossHessian, max_iter: int, tol: float, seed: int) -> TopEigenvalue:
    return ALGORITHMS[algorithm](op, max_iter, tol, seed)
