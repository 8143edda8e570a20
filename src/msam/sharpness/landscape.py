"""Loss-landscape slices (Li et al. 2018, "Visualizing the loss landscape of neural nets").

    random       L(w + a d),             d filter-normalized, a in [-span, span]
    eigenvector  L(w + a v),             v the unit top Hessian eigenvector, a in [-eigenvector_span, ...]
    plane        L(w + a d1 + b d2),     d1, d2 filter-normalized, independent
    path         L((1 - t) w + t w'),    w' another run's final weights, t in [0, 1]

Filter normalization: d is drawn N(0, 1) per parameter, and each filter of d (a slice along the
first dimension of a weight with 2 or more dimensions: a convolution's output channel, a linear
layer's output row) is rescaled to the norm of the same filter of w. One-dimensional parameters
(biases, BatchNorm's scale and shift) get d = 0, Li et al.'s "ignore biasbn" setting, so a unit
step means the same relative change in every layer whatever its scale. The directions are drawn
on the CPU from `seed`, the same on every process.

Along the path, every floating-point entry of the state dict moves, BatchNorm's running
statistics included: the network at t is the interpolated one, measured in eval mode like the
ends (integer buffers such as num_batches_tracked stay this run's).
"""

from __future__ import annotations

import torch

from msam.sharpness.loss import TrainingLoss


def filter_normalized(loss: TrainingLoss, generator: torch.Generator) -> torch.Tensor:
    parts = []
    for weight in loss.weights:
        if weight.dim() <= 1:
            parts.append(torch.zeros_like(weight).reshape(-1))
            continue
        d = torch.randn(weight.shape, generator=generator, dtype=torch.float64).to(weight)
        d_rows, w_rows = d.reshape(len(d), -1), weight.reshape(len(weight), -1)
        scale = w_rows.norm(dim=1, keepdim=True) / d_rows.norm(dim=1, keepdim=True).clamp_min(1e-30)
        parts.append((d_rows * scale).reshape(-1))
    return torch.cat(parts)


def grid(span: float, points: int) -> list[float]:
    return torch.linspace(-span, span, points, dtype=torch.float64).tolist()


def line(loss: TrainingLoss, direction: torch.Tensor, alphas: list[float]) -> list[float]:
    return loss.values([lambda a=a: loss.state(a * direction) for a in alphas])


def plane(loss: TrainingLoss, first: torch.Tensor, second: torch.Tensor, alphas: list[float],
          betas: list[float]) -> list[list[float]]:
    """loss[i][j] at w + alphas[i] first + betas[j] second."""
    flat = loss.values([lambda a=a, b=b: loss.state(a * first + b * second) for a in alphas for b in betas])
    return [flat[i * len(betas):(i + 1) * len(betas)] for i in range(len(alphas))]


def interpolated(mine: dict, other: dict, t: float) -> dict:
    return {name: torch.lerp(value, other[name], t) if value.is_floating_point() else value
            for name, value in mine.items()}


def path(loss: TrainingLoss, mine: dict, other: dict, ts: list[float]) -> list[float]:
    """L along the straight line between two state dicts (parameters and buffers)."""
    return loss.values([lambda t=t: interpolated(mine, other, t) for t in ts])


def check_same_architecture(mine: dict, other: dict, other_name: str) -> None:
    """Two runs' state dicts must match key for key and shape for shape to be interpolated."""
    from msam.errors import ConfigError

    if mine.keys() != other.keys():
        missing = sorted(set(mine) ^ set(other))[:3]
        raise ConfigError(f"against={other_name} is a different model (entries {', '.join(missing)} differ); "
                          "the linear path needs two runs of the same model")
    for name, value in mine.items():
        if value.shape != other[name].shape:
            raise ConfigError(f"against={other_name} is a different model ({name}: {tuple(other[name].shape)} "
                              f"against {tuple(value.shape)}); the linear path needs two runs of the same model")
