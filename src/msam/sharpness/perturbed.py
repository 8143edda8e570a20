"""Sharpness on batches of n samples: how much the loss of a batch rises within a radius rho.

    worst case   S_max(w, S) = max_{||T^-1 delta|| <= rho} L_S(w + delta) - L_S(w)
    average case S_avg(w, S) = E_{z ~ N(0, rho^2/d I)} L_S(w + T z) - L_S(w)
                             = E [L_S(w + T z) + L_S(w - T z)] / 2 - L_S(w)   (z and -z are equally likely)

L_S is the mean loss over the batch S; d is the number of trainable parameters; T = I (plain) or
T = diag(|w| + eta) (adaptive, as in ASAM: Kwon et al. 2021; Andriushchenko et al. 2023 use
eta = 0). The average case's z has E||z||^2 = rho^2, the same radius as the worst case; each draw
is evaluated at +z and -z (antithetic pairs), which cancels the gradient's term exactly and leaves
(for a quadratic) z^T T H T z / 2, whose mean is rho^2 tr(T H T) / (2d): a scaled trace, much
smaller than the worst case at the same radius.

The worst case is K steps of projected, normalized gradient ascent in u = T^-1 delta, starting at
u = 0: u <- P_rho(u + rho * g_u / ||g_u||), g_u = T grad L_S(w + T u). The first step is exactly
SAM's perturbation (K = 1 is the quantity SAM's step maximises to first order); later steps move
along the sphere toward the maximiser. Every iterate is feasible, so the result is the largest
rise among them: a lower bound of the true maximum that grows with K.

BatchNorm: the model is in eval mode, so L_S is the same function of w for every n and a batch's
value does not depend on which other samples share it (in train mode BatchNorm would normalise
with the batch's own statistics, so n would change the function being measured, and n = 1 would
not be defined). Training-mode behaviour enters only through the running statistics the run
learned; the part of mSAM's effect that comes from per-micro-batch BatchNorm statistics during
training is left out.
"""

from __future__ import annotations

import math

import torch

from msam.sharpness.loss import TrainingLoss


def scaling(loss: TrainingLoss, scale: str, eta: float) -> torch.Tensor | None:
    """T's diagonal: None for plain, |w| + eta for adaptive."""
    return None if scale == "plain" else loss.flat_weights.abs() + eta


def worst_case(loss: TrainingLoss, rho: float, steps: int, t: torch.Tensor | None,
               start: tuple[float, torch.Tensor] | None = None) -> tuple[float, float]:
    """(L_S(w), the largest rise found). `start`: L_S(w) and its gradient, if already computed."""
    base, gradient = start if start is not None else loss.value_and_grad(None)
    u = torch.zeros_like(gradient)
    rise = 0.0
    for step in range(steps):
        direction = gradient if t is None else t * gradient
        norm = float(direction.norm())
        if norm == 0.0:  # a stationary point of L_S along every allowed direction
            break
        u = u + (rho / norm) * direction
        u_norm = float(u.norm())
        if u_norm > rho:
            u = u * (rho / u_norm)
        delta = u if t is None else t * u
        if step < steps - 1:
            value, gradient = loss.value_and_grad(delta)
        else:
            value = loss.value(delta)
        rise = max(rise, value - base)
    return base, rise


def gaussian_displacements(size: int, rho: float, draws: int, seed: int, t: torch.Tensor | None,
                           like: torch.Tensor) -> list[torch.Tensor]:
    """`draws` vectors T z, z ~ N(0, rho^2/d I), drawn on the CPU from `seed` (the same on every process)."""
    generator = torch.Generator().manual_seed(seed)
    deltas = []
    for _ in range(draws):
        z = (torch.randn(size, generator=generator, dtype=torch.float64) * (rho / math.sqrt(size))).to(like)
        deltas.append(z if t is None else t * z)
    return deltas


def average_case(loss: TrainingLoss, rho: float, draws: int, seed: int, t: torch.Tensor | None,
                 base: float | None = None) -> tuple[float, float]:
    """(L_S(w), the mean rise over `draws` Gaussian displacements, each at +delta and -delta),
    reading the batch once. `base`: L_S(w), if already computed."""
    weights = loss.flat_weights
    deltas = gaussian_displacements(weights.numel(), rho, draws, seed, t, weights)
    points = [lambda d=d, sign=sign: loss.state(sign * d) for d in deltas for sign in (1, -1)]
    if base is None:
        base, *displaced = loss.values([lambda: loss.state(None)] + points)
    else:
        displaced = loss.values(points)
    return base, sum(displaced) / (2 * draws) - base


def batch_positions(index: torch.Tensor, n: int, seed: int, max_batches: int | None) -> list[torch.Tensor]:
    """Disjoint batches of exactly n samples from a seeded permutation of `index` (the remainder
    is left out, so that every batch has n samples), at most max_batches of them."""
    order = index[torch.randperm(len(index), generator=torch.Generator().manual_seed(seed))]
    count = len(index) // n
    if max_batches is not None:
        count = min(count, max_batches)
    return [order[j * n:(j + 1) * n] for j in range(count)]
