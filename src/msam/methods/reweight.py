"""RW-SAM's ascent loss (Luo et al., arXiv 2509.18001): Gibbs weights from per-sample gradient norms.

The poster gives: ||grad f_i(x)|| estimated with one extra forward pass by finite differences
along a Rademacher vector z over all trainable parameters, |f_i(x + delta z) - f_i(x)| / delta
(E[(z . g)^2] = ||g||^2 for Rademacher z, so with several probes the estimate is the root mean
square over probes); weights p_i = softmax(lambda * ||grad f_i||) over the (micro-)batch,
treated as constants; ascent on sum_i p_i f_i(x). What it leaves open is a config value here:

- delta (default 1e-4): per-coordinate step. Every coordinate moves, so the probe's length is
  delta * sqrt(#params): the curvature term (delta^2 / 2) z'Hz grows with it, while float32
  rounding of the loss difference bounds delta from below. 1e-4 keeps both small for
  CIFAR-sized networks in float32. So the probe always runs in true float32: outside autocast
  and, on CUDA, with TF32 off; under bf16/fp16 it recomputes f_i(x) in float32 as well (one
  more forward), since a difference of a low-precision loss and a float32 one is rounding noise.
- probes (default 1): Rademacher vectors per step; one is the poster's "one extra forward".
- norm_scale (default relative): softmax(lambda * n_i / mean_j n_j). Raw norms change scale
  across models and during training, so one lambda would not carry over; relative norms make
  lambda dimensionless (lambda = 1: a sample at twice the mean norm weighs e times one at the
  mean). `absolute` is the poster's formula as written.
- probe_bn (default batch): the probe runs in training mode, BatchNorm normalising with the
  batch's statistics like the clean pass whose f_i(x) it is compared to, running statistics
  frozen; dropout and other randomness replay the clean pass's draws. `running` evaluates both
  f_i(x) and f_i(x + delta z) in eval mode instead (one more forward).
- norm_estimator (default finite_difference): `exact` computes every ||grad f_i(x)|| instead
  (torch.func, `norm_chunk` rows or samples per vmapped pass, each reduced to its norms before
  the next). Under probe_bn=batch BatchNorm couples the samples: f_i depends on every sample of
  the batch through its statistics, and the exact gradient is that of f_i through them, the
  quantity the probe's z . grad f_i estimates: the rows of the Jacobian of the batch's
  per-sample losses (one forward, then B backward passes over the batch, dropout replaying the
  clean pass's masks). Under probe_bn=running eval mode makes the samples independent and
  draws nothing: each norm is the sample's own gradient (the model vmapped over the samples,
  about one batch's backward in all).
lambda = 0 gives uniform weights, i.e. SAM's ascent (the probe is then skipped).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils._pytree import tree_map

from msam.methods.base import functional_output
from msam.methods.batchnorm import running_stats_frozen
from msam.precision import FP32, Precision, exact_fp32

NORM_SCALES = ("relative", "absolute")
PROBE_BN_MODES = ("batch", "running")
NORM_ESTIMATORS = ("finite_difference", "exact")


def call(network: torch.nn.Module, params: dict, loss_fn, inputs, targets) -> torch.Tensor:
    """Per-sample losses of network at the given parameters (others as they are)."""
    return loss_fn(functional_output(network, params, inputs), targets)


def rng_state(device: torch.device):
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


@contextmanager
def replayed_randomness(state, device: torch.device):
    """Run a block with the random state `state` (so dropout draws what it drew then), and leave
    the global random state as it was before the block."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


@contextmanager
def probe_mode(network: torch.nn.Module, probe_bn: str):
    if probe_bn == "batch":
        with running_stats_frozen(network):
            yield
        return
    modes = [(module, module.training) for module in network.modules()]  # a user's frozen parts stay frozen
    network.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.train(training)


def rademacher_like(tensor: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(tensor).bernoulli_(0.5).mul_(2).sub_(1)


def jacobian_row_norms_squared(grads: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """sum over the weights of each row's squared entries (rows: the first dimension of each)."""
    return sum(g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads)


def jacobian_norms_squared(network, names, params, loss_fn, inputs, targets, chunk: int) -> list[torch.Tensor]:
    """Squared norms of the rows of d(f_1..f_B)/dw: one forward of the batch, then its pullback
    vmapped over `chunk` rows of the identity at a time, each chunk reduced to its norms before the
    next (the whole B x weights Jacobian, 5.7 GB for ResNet-18 at B = 128, is never held)."""
    def losses(*weights):
        return call(network, dict(zip(names, weights)), loss_fn, inputs, targets)

    values, pullback = torch.func.vjp(losses, *params)
    rows = torch.eye(values.shape[0], dtype=values.dtype, device=values.device)
    return [jacobian_row_norms_squared(torch.func.vmap(pullback)(part)) for part in rows.split(chunk)]


def per_sample_norms_squared(network, names, params, loss_fn, inputs, targets, chunk: int) -> list[torch.Tensor]:
    """Squared norms of each sample's own gradient (samples independent: eval mode), the model run
    on one sample under vmap, `chunk` samples at a time."""
    def sample_loss(weights, sample, target):
        one = tree_map(lambda t: t.unsqueeze(0), sample)
        return call(network, dict(zip(names, weights)), loss_fn, one, target.unsqueeze(0)).squeeze(0)

    grads = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0))
    return [jacobian_row_norms_squared(grads(params, tree_map(lambda t: t[start:start + chunk], inputs),
                                             targets[start:start + chunk]))
            for start in range(0, len(targets), chunk)]


@dataclass(frozen=True)
class GibbsReweighting:
    """RW-SAM's weights. Its settings have no defaults here: they live in conf/method/rwsam.yaml
    (GibbsReweighting.defaults(lam=...) reads them there)."""

    lam: float
    delta: float
    probes: int
    norm_scale: str
    probe_bn: str
    norm_estimator: str = "finite_difference"  # conf/method/rwsam.yaml sets it; from_config reads it
    norm_chunk: int | None = None

    @classmethod
    def from_config(cls, method) -> "GibbsReweighting":
        return cls(lam=method["lambda"], delta=method.delta, probes=method.probes,
                   norm_scale=method.norm_scale, probe_bn=method.probe_bn, norm_estimator=method.norm_estimator,
                   norm_chunk=method.norm_chunk)

    @classmethod
    def defaults(cls, **overrides) -> "GibbsReweighting":
        """conf/method/rwsam.yaml's settings, with overrides (lam=..., probes=...): for library use."""
        from omegaconf import OmegaConf

        from msam.paths import CONF_DIR

        method = OmegaConf.load(CONF_DIR / "method" / "rwsam.yaml")
        if "lam" in overrides:
            method["lambda"] = overrides.pop("lam")
        return cls.from_config(OmegaConf.merge(method, overrides))

    @torch.no_grad()
    def sample_grad_norms(self, network, loss_fn, inputs, targets, clean_losses, randomness,
                          precision: Precision = FP32) -> torch.Tensor:
        """The finite-difference estimate of ||grad f_i(x)|| for each sample of the batch."""
        device = clean_losses.device
        params = {n: p.detach() for n, p in network.named_parameters() if p.requires_grad}
        squares = torch.zeros_like(clean_losses, dtype=torch.float32 if clean_losses.dtype != torch.float64
                                   else torch.float64)
        with probe_mode(network, self.probe_bn), exact_fp32(device.type):
            if self.probe_bn == "running" or precision.mixed:
                with replayed_randomness(randomness, device):
                    clean_losses = call(network, {}, loss_fn, inputs, targets)
            for _ in range(self.probes):
                shifted = {n: w + self.delta * rademacher_like(w) for n, w in params.items()}
                with replayed_randomness(randomness, device):
                    losses = call(network, shifted, loss_fn, inputs, targets)
                squares += ((losses - clean_losses).to(squares.dtype) / self.delta) ** 2
        return (squares / self.probes).sqrt()

    def exact_grad_norms(self, network, loss_fn, inputs, targets, randomness) -> torch.Tensor:
        """||grad f_i(x)|| of each sample, exactly, norm_chunk samples at a time. probe_bn=batch: the
        rows of d(f_1..f_B)/dw (BatchNorm's batch statistics couple the samples: B backward passes
        over the batch); running: each sample's own gradient in eval mode (independent samples, no
        random draws: one vmapped per-sample backward)."""
        device = targets.device
        names = [n for n, p in network.named_parameters() if p.requires_grad]
        params = tuple(p.detach() for n, p in network.named_parameters() if p.requires_grad)
        chunk = self.norm_chunk or len(targets)
        with probe_mode(network, self.probe_bn), exact_fp32(device.type), replayed_randomness(randomness, device):
            try:
                if self.probe_bn == "running":
                    squared = per_sample_norms_squared(network, names, params, loss_fn, inputs, targets, chunk)
                else:
                    squared = jacobian_norms_squared(network, names, params, loss_fn, inputs, targets, chunk)
            except torch.OutOfMemoryError as error:
                raise torch.OutOfMemoryError(f"method.norm_estimator=exact ran out of memory at norm_chunk={chunk}: "
                                             f"lower method.norm_chunk ({str(error).splitlines()[0]})") from None
            except RuntimeError as error:  # an operation or autograd.Function torch.func cannot transform
                from msam.errors import ConfigError

                first = str(error).strip().splitlines()[0]
                if "allocate" in first:  # a CPU allocation that failed: memory, not the model
                    raise RuntimeError(f"method.norm_estimator=exact ran out of memory at norm_chunk={chunk}: "
                                       f"lower method.norm_chunk ({first})") from None
                raise ConfigError(f"method.norm_estimator=exact: torch.func cannot differentiate this model per "
                                  f"sample ({first}); use norm_estimator=finite_difference") from None
        return torch.cat(squared).sqrt().detach()

    def weights(self, norms: torch.Tensor) -> torch.Tensor:
        values = norms / norms.mean().clamp_min(torch.finfo(norms.dtype).tiny) if self.norm_scale == "relative" else norms
        return torch.softmax(self.lam * values, dim=0)

    def ascent_weights(self, network, loss_fn, inputs, targets, clean_losses, randomness,
                       precision: Precision = FP32) -> torch.Tensor:
        """p_i, constants for autograd; uniform when lambda = 0. clean_losses are unscaled."""
        n = clean_losses.shape[0]
        if self.lam == 0:
            return torch.full((n,), 1.0 / n, dtype=clean_losses.dtype, device=clean_losses.device)
        if self.norm_estimator == "exact":
            norms = self.exact_grad_norms(network, loss_fn, inputs, targets, randomness)
        else:
            norms = self.sample_grad_norms(network, loss_fn, inputs, targets, clean_losses.detach(), randomness,
                                           precision)
        return self.weights(norms).to(clean_losses.dtype)
