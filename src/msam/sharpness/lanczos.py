"""The k largest eigenpairs of a symmetric operator by Lanczos, stopping once they have converged.

Why our own and not hessian-eigenthings' `lanczos`: the library always runs all `max_iter` steps
(its `tol` only labels the result), and its residual is the Ritz estimate |beta_m s_m|, which
float rounding drives to exactly 0 once the Krylov space holds the eigenvector. Here:

- every step is fully reorthogonalised against the basis (as the library does for short runs);
- after step m >= k, the tridiagonal T_m is diagonalised (float64, on the CPU: m x m) and the
  Ritz estimate |beta_m s_{m,i}| of each of the top k Ritz values theta_i is compared with
  tol |theta_i|;
- when every estimate passes, the Ritz vectors v_i are formed and their *true* relative residuals
  ||H v_i - theta_i v_i|| / |theta_i| are computed with k more products. The result counts as
  converged only if these pass too; if not, Lanczos goes on from where it was, and the Ritz
  estimate must first fall by another factor of 10 before the next check (so a check that fails
  does not cost k products at every step). After EARLY_CHECKS failed checks only the last step is
  checked, so a run costs at most max_iter + (EARLY_CHECKS + 1) k products;
- it also stops at max_iter, or when beta_m is 0 (the Krylov space is invariant: exact).

The start vector is torch.randn on a CPU generator seeded with `seed`, as in the library, so every
process of a distributed run draws the same one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EARLY_CHECKS = 3
INVARIANT = 1e-12  # beta below this (relative to the largest |alpha|): the Krylov space is invariant


@dataclass
class Eigenpairs:
    values: list[float]  # the k largest algebraic eigenvalues, descending
    vectors: torch.Tensor  # (k, n), unit norm, on the operator's device
    residuals: list[float]  # true relative residuals ||H v - lambda v|| / |lambda|
    iterations: int  # Lanczos steps taken
    products: int  # operator products, the residual checks included
    converged: bool  # every residual <= tol


def tridiagonal(alphas: list[float], betas: list[float]) -> torch.Tensor:
    m = len(alphas)
    matrix = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(betas[:m - 1], dtype=torch.float64)
        matrix += torch.diag(off, 1) + torch.diag(off, -1)
    return matrix


def ritz_pairs(basis: list[torch.Tensor], coefficients: torch.Tensor) -> torch.Tensor:
    """(k, n): sum_j coefficients[j, i] basis[j] for each of the k columns."""
    vectors = torch.zeros(coefficients.shape[1], basis[0].numel(), dtype=basis[0].dtype, device=basis[0].device)
    for j, vector in enumerate(basis):
        vectors.addr_(coefficients[j].to(vectors), vector)
    return vectors / vectors.norm(dim=1, keepdim=True)


def true_residuals(op, values: list[float], vectors: torch.Tensor) -> list[float]:
    return [float((op.matvec(v) - value * v).norm()) / max(abs(value), 1e-300) for value, v in zip(values, vectors)]


def top_eigenpairs(op, k: int, max_iter: int, tol: float, seed: int) -> Eigenpairs:
    """The k largest algebraic eigenpairs of op (a hessian-eigenthings CurvatureOperator)."""
    n = op.size
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the number of parameters ({n})")
    max_iter = max(k, min(max_iter, n))
    start = torch.randn(n, dtype=op.dtype, generator=torch.Generator().manual_seed(seed)).to(op.device)
    basis = [start / start.norm()]
    alphas: list[float] = []
    betas: list[float] = []
    products = 0
    threshold = tol  # the Ritz estimate a check needs; tightened by 10 after a check that fails
    checks_left = EARLY_CHECKS
    while True:
        m = len(alphas) + 1
        w = op.matvec(basis[-1])
        products += 1
        if m > 1:
            w = w - betas[-1] * basis[-2]
        alphas.append(float(torch.dot(basis[-1], w)))
        w = w - alphas[-1] * basis[-1]
        for q in basis:  # full reorthogonalisation
            w = w - torch.dot(q, w) * q
        beta = float(w.norm())
        invariant = beta <= INVARIANT * max(abs(a) for a in alphas) or m == n
        if m >= k:
            theta, s = torch.linalg.eigh(tridiagonal(alphas, betas))
            top = torch.argsort(theta, descending=True)[:k]
            values = [float(theta[i]) for i in top]
            estimates = [abs(beta * float(s[-1, i])) for i in top]
            passed = all(e <= threshold * max(abs(v), 1e-300) for e, v in zip(estimates, values))
            if (passed and checks_left > 0) or invariant or m >= max_iter:
                vectors = ritz_pairs(basis, s[:, top])
                residuals = true_residuals(op, values, vectors)
                products += k
                converged = all(r <= tol for r in residuals)
                if converged or invariant or m >= max_iter:
                    return Eigenpairs(values, vectors, residuals, m, products, converged)
                threshold = max(e / max(abs(v), 1e-300) for e, v in zip(estimates, values)) / 10
                checks_left -= 1
        if invariant:  # fewer than k Ritz values exist yet (k > the operator's rank): nothing more to find
            raise ValueError(f"the operator's Krylov space is exhausted after {m} steps, before k={k} eigenpairs")
        betas.append(beta)
        basis.append(w / beta)
