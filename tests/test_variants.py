"""RW-SAM, ASAM and unnormalized SAM against their formulas (float64, tiny models)."""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from msam.methods.batchnorm import running_stats_frozen
from msam.methods.msam_loop import SAMLoop
from msam.methods.msam_vmap import SAMVmap
from msam.methods.msam_vmap_ascent import SAMVmapAscent
from msam.methods.reweight import GibbsReweighting, rng_state
from msam.methods.vanilla import Vanilla
from test_methods import EPS, batch, direct_msam, direction, max_diff, per_sample_ce, tiny_bn_net, tiny_mlp


def rwsam(m=1, rho=0.2, **options):
    values = {"lam": 2.0, "delta": 1e-6, "probes": 2, "norm_scale": "relative", "probe_bn": "batch"} | options
    return SAMLoop(m=m, rho=rho, eps=EPS, name="rwsam", reweighting=GibbsReweighting(**values))


@pytest.mark.parametrize("make_method", [
    lambda: rwsam(rho=0.0),
    lambda: rwsam(m=4, rho=0.0),
    lambda: SAMLoop(m=1, rho=0.0, eps=EPS, adaptive=True),
    lambda: SAMLoop(m=4, rho=0.0, eps=EPS, adaptive=True),
    lambda: SAMLoop(m=4, rho=0.0, eps=EPS, normalize=False),
    lambda: SAMVmap(m=4, rho=0.0, eps=EPS, adaptive=True),
    lambda: SAMVmap(m=4, rho=0.0, eps=EPS, normalize=False),
    lambda: SAMVmapAscent(m=4, rho=0.0, eps=EPS),
], ids=["rwsam", "rwsam-m4", "asam", "asam-m4", "musam-m4", "asam-vmap", "musam-vmap", "msam-vmap_ascent"])
def test_rho_zero_gives_vanilla(make_method):
    method = make_method()
    # with BatchNorm, micro-batches normalise with their own statistics: vanilla only for m = 1
    model, data = tiny_bn_net() if method.m == 1 else tiny_mlp(), batch()
    assert max_diff(direction(method, model, data), direction(Vanilla(), model, data)) < 1e-14


class Shifted(nn.Module):
    """'logits' r_i = w + x_i, so that a per-sample loss 0.5 r_i' A r_i has gradient A (w + x_i)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))

    def forward(self, x):
        return self.w + x


@pytest.mark.parametrize("m", [1, 2, 4])
def test_unnormalized_msam_on_a_quadratic_matches_its_formula(m):
    """g_j = A (w + xbar_j), d_j = A (w + rho g_j + xbar_j), so d = mean_j (I + rho A) g_j."""
    a = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    data = (x, torch.zeros(8, dtype=torch.long))
    model, rho = Shifted(), 0.3

    def quadratic(rows, targets):
        return 0.5 * torch.einsum("bi,ij,bj->b", rows, a, rows)

    SAMLoop(m=m, rho=rho, eps=EPS, normalize=False)(model, quadratic, data)
    w = torch.tensor([1.0, -2.0], dtype=torch.float64)
    g = [a @ (w + part.mean(0)) for part in x.chunk(m)]
    expected = torch.stack([(torch.eye(2, dtype=torch.float64) + rho * a) @ gj for gj in g]).mean(0)
    assert torch.allclose(model.w.grad, expected, atol=1e-14, rtol=0)


@pytest.mark.parametrize("options", [{"adaptive": True, "eta": 0.05}, {"normalize": False},
                                     {"adaptive": True, "normalize": False}], ids=["asam", "usam", "uasam"])
@pytest.mark.parametrize("make_model", [tiny_mlp, tiny_bn_net])
@pytest.mark.parametrize("vmap_impl", [SAMVmap, SAMVmapAscent], ids=["vmap", "vmap_ascent"])
def test_vmap_and_loop_agree_for_the_variants(options, make_model, vmap_impl):
    model, data = make_model(), batch()
    loop = direction(SAMLoop(m=4, rho=0.3, eps=EPS, **options), model, data)
    vmapped = direction(vmap_impl(m=4, rho=0.3, eps=EPS, **options), model, data)
    assert max_diff(loop, vmapped) < 1e-10
    assert max_diff(loop, direct_msam(model, data, 4, 0.3)) > 1e-4  # the variant changes the direction


def test_asam_with_t_equal_to_one_is_sam():
    """T = |w| + eta = 1 for every weight when |w| = 0.25 and eta = 0.75: ASAM's e is SAM's."""
    model, data = tiny_mlp(), batch()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.25 * torch.sign(torch.randn_like(p)))
    sam = direction(SAMLoop(m=2, rho=0.3, eps=EPS), model, data)
    asam = direction(SAMLoop(m=2, rho=0.3, eps=EPS, adaptive=True, eta=0.75), model, data)
    assert max_diff(sam, asam) < 1e-14
    other = direction(SAMLoop(m=2, rho=0.3, eps=EPS, adaptive=True, eta=0.01), model, data)
    assert max_diff(sam, other) > 1e-4


def test_asam_perturbation_is_its_formula():
    """e = rho T^2 g / ||T g|| on the 2-parameter model, checked through the descent gradient."""
    a = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    data = (torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, dtype=torch.long))
    model, rho, eta = Shifted(), 0.3, 0.1

    def quadratic(rows, targets):
        return 0.5 * torch.einsum("bi,ij,bj->b", rows, a, rows)

    SAMLoop(m=1, rho=rho, eps=0.0, adaptive=True, eta=eta)(model, quadratic, data)
    w = torch.tensor([1.0, -2.0], dtype=torch.float64)
    g, t = a @ w, w.abs() + eta
    e = rho * t**2 * g / torch.linalg.vector_norm(t * g)
    assert torch.allclose(model.w.grad, a @ (w + e), atol=1e-14, rtol=0)


@pytest.mark.parametrize("make_model", [tiny_mlp, tiny_bn_net])
def test_rwsam_with_lambda_zero_is_sam(make_model):
    model, data = make_model(), batch()
    sam = direction(SAMLoop(m=1, rho=0.2, eps=EPS), model, data)
    assert max_diff(direction(rwsam(lam=0.0), model, data), sam) < 1e-14
    assert max_diff(direction(rwsam(lam=2.0), model, data), sam) > 1e-5  # the weights matter


def exact_sample_grad_norms(model, data):
    """||grad f_i|| from the Jacobian of the per-sample losses (torch.func), batch statistics for BN."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    inputs, targets = data

    def losses(p):
        return per_sample_ce(functional_call(model, p, (inputs,)), targets)

    with running_stats_frozen(model):
        jacobian = jacrev(losses)(params)
    return torch.sqrt(sum(j.reshape(len(targets), -1).pow(2).sum(1) for j in jacobian.values()))


@pytest.mark.parametrize("make_model", [tiny_mlp, tiny_bn_net])
def test_norm_estimate_approaches_the_exact_per_sample_gradient_norm(make_model):
    """E[(z . g)^2] = ||g||^2 for Rademacher z: with a small delta and many probes, the root mean
    square of the finite differences is the per-sample gradient norm (to Monte Carlo error)."""
    model, data = make_model().train(), batch(n=8)
    torch.manual_seed(5)
    with torch.no_grad(), running_stats_frozen(model):
        clean = per_sample_ce(model(data[0]), data[1])
    reweighting = GibbsReweighting.defaults(lam=1.0, delta=1e-7, probes=4000)
    estimate = reweighting.sample_grad_norms(model, per_sample_ce, *data, clean, rng_state(torch.device("cpu")))
    exact = exact_sample_grad_norms(model, data)
    assert torch.allclose(estimate, exact, rtol=0.06, atol=0)
    # norm_estimator=exact, what RW-SAM trains with, is what the estimate estimates
    estimator = GibbsReweighting.defaults(lam=1.0, norm_estimator="exact")
    assert torch.allclose(estimate, estimator.exact_grad_norms(model, per_sample_ce, *data, rng_state(torch.device("cpu"))),
                          rtol=0.06, atol=0)
    # one probe is a noisy estimate, not the norm: the tolerance above is not vacuous
    one = GibbsReweighting.defaults(lam=1.0, delta=1e-7, probes=1).sample_grad_norms(
        model, per_sample_ce, *data, clean, rng_state(torch.device("cpu")))
    assert (one / exact - 1).abs().max() > 0.06


def relative_difference(a, b):
    return (torch.cat([(x - y).reshape(-1) for x, y in zip(a, b)]).norm() / torch.cat([y.reshape(-1) for y in b]).norm()).item()


@pytest.mark.parametrize("make_model", [tiny_mlp, tiny_bn_net])
def test_rwsam_direction_for_lambda_above_zero_follows_its_formula(make_model):
    """RW-SAM against its formula computed independently: n_i the exact per-sample gradient norms
    (torch.func), p = softmax(lambda n_i / mean n), g = sum_i p_i grad f_i, e = rho g / ||g||,
    d = grad mean_i f_i(w + e). With many probes the finite-difference norms get within Monte Carlo
    error of it; SAM's direction (uniform p) is several times farther away, so the check has teeth."""
    model, data = make_model().train(), batch(n=8)
    lam, rho = 2.0, 0.2
    reference = copy.deepcopy(model)
    names = [n for n, _ in reference.named_parameters()]
    w = {n: p.detach().clone() for n, p in reference.named_parameters()}
    weights = torch.softmax(lam * exact_sample_grad_norms(reference, data) / exact_sample_grad_norms(reference, data).mean(), 0)

    def losses(params):
        return per_sample_ce(functional_call(reference, params, (data[0],)), data[1])

    params = {n: t.clone().requires_grad_(True) for n, t in w.items()}
    g = torch.autograd.grad((weights * losses(params)).sum(), [params[n] for n in names])
    norm = torch.cat([t.reshape(-1) for t in g]).norm()
    perturbed = {n: (w[n] + rho * gi / (norm + EPS)).requires_grad_(True) for n, gi in zip(names, g)}
    expected = torch.autograd.grad(losses(perturbed).mean(), [perturbed[n] for n in names])

    torch.manual_seed(11)
    got = direction(rwsam(lam=lam, rho=rho, delta=1e-7, probes=4000), model, data)
    sam = direction(SAMLoop(m=1, rho=rho, eps=EPS), model, data)
    error, gap = relative_difference(got, expected), relative_difference(sam, expected)
    assert error < 0.02 and gap > 5 * error, (error, gap)


def test_the_probe_replays_the_clean_pass_dropout_masks():
    """With fresh dropout masks the finite difference would be O(1) / delta; replayed, it is
    bounded by |z . g| <= sqrt(#params) ||g||."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3)).double().train()
    data = batch(n=8)
    randomness = rng_state(torch.device("cpu"))
    clean = per_sample_ce(model(data[0]), data[1]).detach()
    norms = GibbsReweighting.defaults(lam=1.0, delta=1e-7, probes=3).sample_grad_norms(model, per_sample_ce, *data, clean,
                                                                            randomness)
    size = sum(p.numel() for p in model.parameters())
    assert torch.isfinite(norms).all() and norms.max() < size**0.5 * 10


def test_rwsam_leaves_running_statistics_and_weights_as_sam_does():
    """The probe pass changes neither the weights nor BatchNorm's running statistics."""
    model, data = tiny_bn_net(), batch()
    sam_model, rw_model = copy.deepcopy(model), copy.deepcopy(model)
    SAMLoop(m=2, rho=0.2, eps=EPS)(sam_model, per_sample_ce, data)
    rwsam(m=2)(rw_model, per_sample_ce, data)
    for (name, a), b in zip(sam_model.state_dict().items(), rw_model.state_dict().values()):
        assert torch.equal(a, b), name


def seeded_direction(method, model, data, seed=7):
    torch.manual_seed(seed)  # the Rademacher probes come from the global generator
    return direction(method, model, data)


def test_rwsam_probe_in_eval_mode_uses_running_statistics():
    """probe_bn=running weighs the samples by norms measured with the running statistics, batch mode
    with the batch's: moving the running statistics moves the first direction and not the second."""
    model, data = tiny_bn_net(), batch()
    moved = copy.deepcopy(model)
    moved[1].running_mean.fill_(0.7)
    moved[1].running_var.fill_(3.0)
    batch_mode = seeded_direction(rwsam(probe_bn="batch"), model, data)
    running_mode = seeded_direction(rwsam(probe_bn="running"), model, data)
    assert max_diff(seeded_direction(rwsam(probe_bn="batch"), moved, data), batch_mode) == 0.0
    assert max_diff(seeded_direction(rwsam(probe_bn="running"), moved, data), running_mode) > 1e-6
    assert max_diff(seeded_direction(rwsam(probe_bn="running"), model, data), running_mode) == 0.0  # reproducible


def test_weights_are_the_gibbs_distribution():
    norms = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    absolute = GibbsReweighting.defaults(lam=0.5, norm_scale="absolute").weights(norms)
    assert torch.allclose(absolute, torch.exp(0.5 * norms) / torch.exp(0.5 * norms).sum(), atol=1e-15)
    relative = GibbsReweighting.defaults(lam=0.5, norm_scale="relative").weights(norms)
    assert torch.allclose(relative, torch.softmax(0.5 * norms / 2.0, 0), atol=1e-15)
    assert torch.equal(GibbsReweighting.defaults(lam=0.0).weights(norms), torch.full((3,), 1 / 3, dtype=torch.float64))


def test_rwsam_and_asam_train_from_the_config_and_are_named_by_variant(make_cfg):
    from msam import engine, runs

    summary = engine.train(make_cfg("method=rwsam", "epochs=1"))
    assert summary["status"] == "finished" and summary["method"] == "rwsam" and summary["test_acc"] > 20
    asam = make_cfg("method=asam", "epochs=1")
    assert runs.run_name(asam).startswith("digits_small_cnn_asam_m1_rho0.5_")
    adaptive = make_cfg("method=msam", "method.adaptive=true", "method.normalize=false")
    assert runs.run_name(adaptive).startswith("digits_small_cnn_msam-adaptive-unnormalized_m8_")
    assert engine.train(asam)["method"] == "asam"
