"""The measures beyond lambda_max against exact answers: Lanczos' early stop, top-k and the
spectral density against a full eigendecomposition, worst-case sharpness against the closed form
on a quadratic and a brute-force search in 2-D, average-case sharpness against its expectation,
sharpness on batches against a direct computation, and landscape points against direct evaluation
(all float64)."""

import copy
import math

import pytest
import torch
from hessian_eigenthings import LambdaOperator
from test_sharpness import batches_of, data, exact_hessian, per_sample_ce, tiny_bn_model
from torch import nn

from msam.data.analysis import AnalysisData
from msam.data.loaders import TensorLoader
from msam.sharpness import landscape as slices
from msam.sharpness.lanczos import EARLY_CHECKS, top_eigenpairs
from msam.sharpness.loss import TrainingLoss
from msam.sharpness.measures import Sizes, measure
from msam.sharpness.operator import ReIterable
from msam.sharpness.perturbed import average_case, worst_case
from msam.sharpness.run import default_settings

CPU = torch.device("cpu")


def matrix_operator(spectrum: torch.Tensor, seed: int = 0):
    """A = Q diag(spectrum) Q^T with a random orthogonal Q, as a hessian-eigenthings operator."""
    n = len(spectrum)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    a = (q * spectrum) @ q.T
    return a, LambdaOperator(lambda v: a.to(v.dtype) @ v, n, CPU, spectrum.dtype)


# ---- Lanczos stops when it has converged, and only then -------------------------------------------------

def test_lanczos_stops_at_once_when_the_krylov_space_holds_the_eigenvector():
    """Two distinct eigenvalues: the second step's Krylov space is invariant, so 2 steps and the
    residual's product are all it may take, out of max_iter = 100."""
    _, op = matrix_operator(torch.cat([torch.tensor([100.0]), torch.ones(299)]).double())
    pairs = top_eigenpairs(op, 1, 100, 1e-8, seed=0)
    assert pairs.converged and pairs.iterations == 2 and pairs.products == 3
    assert pairs.values[0] == pytest.approx(100.0, rel=1e-12)


def test_lanczos_stops_early_on_a_well_separated_top_eigenvalue():
    """A top eigenvalue 100 times the rest: a handful of steps reach 1e-8, not max_iter = 200."""
    spectrum = torch.cat([torch.tensor([100.0]), torch.rand(299, generator=torch.Generator().manual_seed(1))])
    a, op = matrix_operator(spectrum.double())
    pairs = top_eigenpairs(op, 1, 200, 1e-8, seed=0)
    assert pairs.converged and pairs.iterations <= 12 and pairs.products == pairs.iterations + 1
    assert pairs.values[0] == pytest.approx(100.0, rel=1e-12)
    v = pairs.vectors[0]
    assert float((a @ v - 100.0 * v).norm() / 100.0) == pytest.approx(pairs.residuals[0], rel=1e-6)


def test_lanczos_does_not_stop_early_on_a_clustered_spectrum():
    """Eigenvalues 1.000, 0.999, ...: the top one separates slowly. The result must still be the
    eigenvalue, with a true residual under tol, after many steps."""
    a, op = matrix_operator(torch.linspace(0.7, 1.0, 300, dtype=torch.float64))
    pairs = top_eigenpairs(op, 1, 300, 1e-6, seed=0)
    assert pairs.converged and pairs.iterations > 30
    assert pairs.values[0] == pytest.approx(1.0, rel=1e-9)
    v = pairs.vectors[0]
    assert float((a @ v - pairs.values[0] * v).norm()) / pairs.values[0] <= 1e-6


def test_the_residual_is_the_true_one_in_float32():
    """The Ritz estimate |beta s_m| falls far below float32's rounding (the library reported 1e-10
    on the demo's runs); the residual reported is ||Hv - lambda v|| / |lambda| of the vector itself,
    which float32 cannot bring under about 1e-7."""
    spectrum = torch.cat([torch.tensor([10.0, 5.0]), torch.rand(198, generator=torch.Generator().manual_seed(2))])
    a, op = matrix_operator(spectrum.float())
    pairs = top_eigenpairs(op, 2, 100, 1e-4, seed=0)
    for value, vector, residual in zip(pairs.values, pairs.vectors, pairs.residuals):
        v = vector.double()
        exact = float((a.double() @ v - value * v).norm()) / value  # the same vector, in float64
        assert 3e-8 < residual <= 1e-4 and exact / 2 < residual < exact * 2
    # a tol below float32's rounding: the Ritz estimate passes it, the vector cannot
    below = top_eigenpairs(op, 1, 60, 1e-9, seed=0)
    assert not below.converged and below.residuals[0] > 1e-9
    assert below.products <= 60 + (EARLY_CHECKS + 1)  # failed checks do not repeat at every step
    # stopped short of convergence, the residual is the vector's own to float32 rounding
    _, op = matrix_operator(torch.linspace(0.9, 1.0, 200).float())
    early = top_eigenpairs(op, 1, 6, 1e-6, seed=0)
    v = early.vectors[0].double()
    a = matrix_operator(torch.linspace(0.9, 1.0, 200, dtype=torch.float64))[0]
    exact = float((a @ v - early.values[0] * v).norm()) / early.values[0]
    assert not early.converged and early.residuals[0] == pytest.approx(exact, rel=1e-3)


def test_lanczos_products_are_bounded_when_it_does_not_converge():
    _, op = matrix_operator(torch.linspace(0.9, 1.0, 200, dtype=torch.float64))
    pairs = top_eigenpairs(op, 3, 10, 1e-12, seed=0)
    assert not pairs.converged and pairs.iterations == 10
    assert pairs.products <= 10 + (EARLY_CHECKS + 1) * 3


# ---- top-k and the density against the full eigendecomposition ----------------------------------------

def settings(**overrides):
    return default_settings(**{"gradient_passes": 1, **overrides})


def test_topk_matches_the_full_eigendecomposition():
    model, (x, y) = tiny_bn_model(), data()
    exact = torch.linalg.eigvalsh(exact_hessian(model, x, y)).flip(0)
    result = measure(model, batches_of(x, y, 16), 50, per_sample_ce,
                     settings(measures=["topk"], topk={"k": 5}, max_iter=197, tol=1e-9))
    topk = result["topk"]
    assert topk["converged"] and max(topk["residuals"]) <= 1e-9
    assert topk["eigenvalues"] == pytest.approx(exact[:5].tolist(), rel=1e-8)
    assert "lambda_max" not in result and result["measures"] == ["topk"]


def rademacher(n: int, seed: int) -> torch.Tensor:
    bits = torch.randint(0, 2, (n,), dtype=torch.int64, generator=torch.Generator().manual_seed(seed))
    return bits.double() * 2 - 1


def test_density_quadrature_reproduces_the_spectral_moments():
    """Gauss quadrature from m Lanczos steps integrates polynomials of degree < 2m exactly:
    sum_j w_j theta_j^r = v^T H^r v / v^T v for each probe v."""
    model, (x, y) = tiny_bn_model(), data()
    hessian = exact_hessian(model, x, y)
    top = float(torch.linalg.eigvalsh(hessian).abs().max())
    density = measure(model, batches_of(x, y, 16), 50, per_sample_ce,
                      settings(measures=["density"], density={"probes": 2, "lanczos_steps": 12}, seed=4))["density"]
    for probe, (nodes, weights) in enumerate(zip(density["nodes"], density["weights"])):
        v = rademacher(hessian.shape[0], 4 + probe)
        power = v.clone()
        for r in range(8):
            exact = float(v @ power / (v @ v)) / top ** r
            quadrature = sum(w * t ** r for t, w in zip(nodes, weights)) / top ** r
            assert quadrature == pytest.approx(exact, abs=1e-9), (probe, r)
            power = hessian @ power


def test_density_with_every_step_is_the_smoothed_exact_spectrum():
    """With as many steps as parameters, the smoothed density is the exact spectrum's, each
    eigenvalue weighted by (q_i^T v)^2 / v^T v and averaged over the probes."""
    model, (x, y) = tiny_bn_model(), data()
    hessian = exact_hessian(model, x, y)
    eigenvalues, vectors = torch.linalg.eigh(hessian)
    sigma = 0.02
    density = measure(model, batches_of(x, y, 16), 50, per_sample_ce,
                      settings(measures=["density"], density={"probes": 2, "lanczos_steps": 197, "sigma": sigma,
                                                              "grid_points": 400}))["density"]
    grid = torch.tensor(density["grid"], dtype=torch.float64)
    expected = torch.zeros_like(grid)
    negative = 0.0
    cutoff = -1e-3 * float(eigenvalues.abs().max())  # density.negative_below's default
    for probe in range(2):
        v = rademacher(hessian.shape[0], probe)
        weights = (vectors.T @ v) ** 2 / (v @ v)
        gauss = torch.exp(-(grid[:, None] - eigenvalues[None]) ** 2 / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi))
        expected += (gauss * weights).sum(1) / 2
        negative += float(weights[eigenvalues < cutoff].sum()) / 2
    got = torch.tensor(density["density"], dtype=torch.float64)
    assert float((got - expected).abs().max()) <= 1e-6 * float(expected.max())
    assert density["negative_mass"] == pytest.approx(negative, abs=1e-9) and 0 < negative < 1


# ---- worst-case and average-case sharpness -----------------------------------------------------------

class Rows(nn.Module):
    """Hands its parameter vector to the loss once per sample: the loss is any function of w."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        return self.w.expand(x.shape[0], -1)


def quadratic_problem(d: int = 6):
    gen = torch.Generator().manual_seed(5)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    a = (basis * torch.tensor([4.0, 2.5, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64)[:d]) @ basis.T
    center = torch.randn(d, generator=gen, dtype=torch.float64)
    w = torch.randn(d, generator=gen, dtype=torch.float64)

    def loss_fn(rows, targets):
        z = rows - center
        return 0.5 * torch.einsum("bi,ij,bj->b", z, a, z)

    x, y = torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    model = Rows(w)
    return TrainingLoss(model, batches_of(x, y, 4), 4, loss_fn), a, a @ (w - center), w


def trust_region_maximum(g: torch.Tensor, a: torch.Tensor, rho: float) -> float:
    """max g^T d + d^T A d / 2 over ||d|| <= rho: d = (mu I - A)^-1 g with mu > lambda_max(A) and
    ||d|| = rho (bisection on mu)."""
    top = float(torch.linalg.eigvalsh(a)[-1])
    identity = torch.eye(len(g), dtype=torch.float64)
    low, high = top + 1e-12, top + float(g.norm()) / rho + 10
    for _ in range(200):
        mu = (low + high) / 2
        if float(torch.linalg.solve(mu * identity - a, g).norm()) > rho:
            low = mu
        else:
            high = mu
    d = torch.linalg.solve(high * identity - a, g)
    return float(g @ d + 0.5 * d @ a @ d)


@pytest.mark.parametrize("scale", ["plain", "adaptive"])
def test_worst_case_matches_the_closed_form_on_a_quadratic(scale):
    loss, a, g, w = quadratic_problem()
    rho, eta = 0.3, 0.1
    t = None if scale == "plain" else w.abs() + eta
    scaled_a, scaled_g = (a, g) if t is None else (t[:, None] * a * t[None], t * g)
    _, one_step = worst_case(loss, rho, 1, t)
    d = rho * scaled_g / scaled_g.norm()  # SAM's step, in u = T^-1 delta
    assert one_step == pytest.approx(float(scaled_g @ d + 0.5 * d @ scaled_a @ d), rel=1e-12)
    _, converged = worst_case(loss, rho, 300, t)
    assert converged == pytest.approx(trust_region_maximum(scaled_g, scaled_a, rho), rel=1e-9)
    assert converged > one_step * (1 + 1e-3)  # the ascent steps matter here


def test_worst_case_matches_a_brute_force_search_in_two_dimensions():
    """Logistic loss of a 2-parameter linear model on 6 points, radius 0.8 (far from quadratic):
    the ascent finds the maximum of a dense polar grid over the disc."""
    gen = torch.Generator().manual_seed(6)
    points = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    labels = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    w = torch.tensor([0.4, -0.3], dtype=torch.float64)

    def loss_fn(rows, index):
        return nn.functional.softplus(-labels[index] * (rows * points[index]).sum(1))

    model = Rows(w)
    loss = TrainingLoss(model, batches_of(torch.zeros(6, 1), torch.arange(6), 6), 6, loss_fn)
    base, rise = worst_case(loss, 0.8, 200, None)
    angles = torch.linspace(0, 2 * math.pi, 7201, dtype=torch.float64)
    radii = torch.linspace(0, 0.8, 81, dtype=torch.float64)
    deltas = (radii[:, None, None] * torch.stack([angles.cos(), angles.sin()], -1)[None]).reshape(-1, 2)
    values = nn.functional.softplus(-labels * ((w + deltas) @ points.T)).mean(1)
    brute = float(values.max()) - float(nn.functional.softplus(-labels * (points @ w)).mean())
    assert base == pytest.approx(float(nn.functional.softplus(-labels * (points @ w)).mean()), rel=1e-12)
    assert rise == pytest.approx(brute, rel=1e-6)


@pytest.mark.parametrize("scale", ["plain", "adaptive"])
def test_average_case_is_the_expected_quadratic_rise(scale):
    """E over z ~ N(0, rho^2/d I) of the rise at T z is rho^2 tr(T A T) / (2d) on a quadratic; the
    +z/-z pairs leave z^T T A T z / 2 per draw, whose variance is (rho^2/d)^2 tr((TAT)^2) / 2."""
    loss, a, _, w = quadratic_problem()
    rho, draws = 0.3, 4000
    t = None if scale == "plain" else w.abs() + 0.1
    b = a if t is None else t[:, None] * a * t[None]
    s2 = rho ** 2 / len(w)
    _, rise = average_case(loss, rho, draws, seed=3, t=t)
    expected = s2 * float(torch.trace(b)) / 2
    stderr = math.sqrt(s2 ** 2 * float(torch.trace(b @ b)) / 2 / draws)
    assert abs(rise - expected) < 4 * stderr


def tensor_data(x, y, chunk):
    def loader_for(positions):
        return TensorLoader(x[positions], y[positions], chunk, shuffle=False, drop_last=False, device=CPU)

    return AnalysisData(loader_for(torch.arange(len(y))), len(y), tuple(x.shape[1:]), x.dtype, None,
                        torch.arange(len(y)), loader_for)


def test_sharpness_on_batches_is_sams_step_on_each_batch():
    """K = 1 on batches of n = 10 (a seeded partition of the 50 samples) and on the full set,
    against SAM's perturbation computed directly on the BatchNorm model in eval mode."""
    model, (x, y) = tiny_bn_model(), data()
    rho = 0.1
    chosen = settings(measures=["sharpness"], sharpness={"rho": rho, "kinds": ["worst"], "scales": ["plain"],
                                                         "ascent_steps": 1, "batch_sizes": ["micro", "full"]})
    rows = measure(model, batches_of(x, y, 16), 50, per_sample_ce, chosen, data=tensor_data(x, y, 7),
                   sizes=Sizes(micro=10, batch=50))["sharpness"]["rows"]
    reference = copy.deepcopy(model).eval()

    def sam_rise(index):
        loss = nn.functional.cross_entropy(reference(x[index]), y[index])
        grads = torch.autograd.grad(loss, list(reference.parameters()))
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        moved = copy.deepcopy(reference)
        with torch.no_grad():
            for p, g in zip(moved.parameters(), grads):
                p += rho * g / norm
            return float(nn.functional.cross_entropy(moved(x[index]), y[index]) - loss)

    order = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    rises = torch.tensor([sam_rise(order[j * 10:(j + 1) * 10]) for j in range(5)], dtype=torch.float64)
    micro, full = rows
    assert micro["n"] == 10 and micro["batches"] == 5 and micro["n_label"] == "micro"
    assert micro["mean"] == pytest.approx(float(rises.mean()), rel=1e-10)
    assert micro["stderr"] == pytest.approx(float(rises.std() / math.sqrt(5)), rel=1e-8)
    assert full["n"] == 50 and full["mean"] == pytest.approx(sam_rise(torch.arange(50)), rel=1e-10)
    assert micro["mean"] > full["mean"]  # smaller batches, sharper: what mSAM's micro-batches exploit


# ---- landscape -------------------------------------------------------------------------------------

def test_filter_normalized_directions_have_the_weights_filter_norms():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).double()
    loss = TrainingLoss(model, ReIterable(lambda: []), 1, per_sample_ce)
    d = loss.split(slices.filter_normalized(loss, torch.Generator().manual_seed(0)))
    for part, weight in zip(d, loss.weights):
        if weight.dim() == 1:
            assert torch.equal(part, torch.zeros_like(weight))
        else:
            assert torch.allclose(part.reshape(len(part), -1).norm(dim=1), weight.reshape(len(weight), -1).norm(dim=1),
                                  rtol=1e-12)


def direct_loss(model, state, x, y):
    other = copy.deepcopy(model).eval()
    other.load_state_dict(state)
    with torch.no_grad():
        return float(nn.functional.cross_entropy(other(x), y))


def test_slices_plane_and_path_equal_direct_evaluation():
    model, (x, y) = tiny_bn_model(), data()
    model.eval()
    loss = TrainingLoss(model, batches_of(x, y, 16), 50, per_sample_ce)
    generator = torch.Generator().manual_seed(0)
    d1, d2 = slices.filter_normalized(loss, generator), slices.filter_normalized(loss, generator)
    names = [n for n, _ in model.named_parameters()]

    def displaced(delta):
        state = copy.deepcopy(model.state_dict())
        for name, part in zip(names, loss.split(delta)):
            state[name] = state[name] + part
        return state

    alphas = [-0.7, 0.0, 0.4]
    for alpha, value in zip(alphas, slices.line(loss, d1, alphas)):
        assert value == pytest.approx(direct_loss(model, displaced(alpha * d1), x, y), rel=1e-12)
    grid = slices.plane(loss, d1, d2, [-0.5, 0.5], [0.25, 1.0])
    assert grid[1][0] == pytest.approx(direct_loss(model, displaced(0.5 * d1 + 0.25 * d2), x, y), rel=1e-12)
    other = tiny_bn_model()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.3)
        other[1].running_var.mul_(1.5)
    mine, theirs = model.state_dict(), other.state_dict()
    ts = [0.0, 0.3, 1.0]
    for t, value in zip(ts, slices.path(loss, mine, theirs, ts)):
        state = {k: (1 - t) * v + t * theirs[k] if v.is_floating_point() else v for k, v in mine.items()}
        assert value == pytest.approx(direct_loss(model, state, x, y), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_eigenvector_slice_bends_with_lambda_max_and_points_uphill(seed):
    """Near the weights the slice along the top eigenvector is L0 + lambda_max a^2 / 2; the
    eigenvector is oriented so that +a goes uphill, whatever Lanczos' start vector (seed)."""
    model, (x, y) = tiny_bn_model(), data()
    top = float(torch.linalg.eigvalsh(exact_hessian(model, x, y))[-1])
    chosen = settings(measures=["landscape"], max_iter=197, tol=1e-9, seed=seed,
                      landscape={"directions": ["eigenvector"], "eigenvector_span": 1e-3, "points": 3,
                                 "points_2d": 0})
    land = measure(model, batches_of(x, y, 16), 50, per_sample_ce, chosen)["landscape"]
    low, middle, high = land["slices"]["eigenvector"]["loss"]
    assert land["slices"]["eigenvector"]["eigenvalue"] == pytest.approx(top, rel=1e-8)
    assert middle == pytest.approx(land["base_loss"], rel=1e-14)
    assert (low + high) / 2 - middle == pytest.approx(top * 1e-6 / 2, rel=1e-3)
    assert high > low
