"""RW-SAM, ASAM and unnormalized SAM against their formulas (float64, tiny models)."""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from msam.errors import ConfigError
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


def autograd_loop_norms(model, data, probe_bn):
    """||grad f_i|| one sample at a time with plain autograd: the reference for the exact estimator.
    batch: BatchNorm with the batch's statistics (running ones frozen); running: eval mode."""
    inputs, targets = data
    params = [p for p in model.parameters() if p.requires_grad]
    model = model.train() if probe_bn == "batch" else model.eval()
    with running_stats_frozen(model):
        losses = per_sample_ce(model(inputs), targets)
        norms = []
        for i in range(len(targets)):
            grads = torch.autograd.grad(losses[i], params, retain_graph=True)
            norms.append(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
    model.train()
    return torch.stack(norms)


@pytest.mark.parametrize("make_model", [tiny_mlp, tiny_bn_net])
@pytest.mark.parametrize("probe_bn", ["batch", "running"])
def test_exact_norms_equal_a_per_sample_autograd_loop(make_model, probe_bn):
    """norm_estimator=exact in float64, chunked (3 rows at a time, 16 samples) and not, against the
    loop; under probe_bn=batch BatchNorm couples the samples and the gradient goes through it."""
    model, data = make_model().train(), batch()
    expected = autograd_loop_norms(model, data, probe_bn)
    for chunk in (None, 3):
        reweighting = GibbsReweighting.defaults(lam=1.0, probe_bn=probe_bn, norm_estimator="exact", norm_chunk=chunk)
        got = reweighting.exact_grad_norms(model, per_sample_ce, *data, rng_state(torch.device("cpu")))
        assert torch.allclose(got, expected, rtol=1e-12, atol=0)
    assert model.training  # the mode is restored
    if make_model is tiny_bn_net:  # the two BatchNorm settings measure different gradients
        assert (autograd_loop_norms(model, data, "batch") - autograd_loop_norms(model, data, "running")).abs().max() > 1e-3


def test_exact_norms_replay_the_clean_pass_dropout_masks_and_leave_the_running_statistics():
    """probe_bn=batch on a model with dropout and BatchNorm: each row is the gradient of f_i under
    the masks the step's clean pass drew (its random state replayed), and BatchNorm's running
    statistics are as they were (for both settings)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(32, 5)).double().train()
    inputs, targets = batch()
    state = rng_state(torch.device("cpu"))
    params = [p for p in model.parameters() if p.requires_grad]
    with running_stats_frozen(model):
        losses = per_sample_ce(model(inputs), targets)  # the clean pass's masks
    expected = torch.stack([torch.sqrt(sum(g.pow(2).sum() for g in torch.autograd.grad(
        losses[i], params, retain_graph=True))) for i in range(len(targets))])
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    for probe_bn in ("batch", "running"):
        reweighting = GibbsReweighting.defaults(lam=1.0, norm_estimator="exact", norm_chunk=5, probe_bn=probe_bn)
        got = reweighting.exact_grad_norms(model, per_sample_ce, inputs, targets, state)
        if probe_bn == "batch":
            assert torch.allclose(got, expected, rtol=1e-12, atol=0)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in buffers.items()), probe_bn
        assert model.training
    # other masks would give other norms: the replay is what the first check rests on
    with running_stats_frozen(model):
        redrawn = per_sample_ce(model(inputs), targets)
    assert (redrawn - losses).abs().max() > 1e-2


def test_exact_norms_under_probe_bn_running_see_one_sample_at_a_time():
    """Eval mode makes the samples independent, so each norm is one per-sample backward (O(B) in
    all), not a Jacobian row over the whole batch (O(B^2)): the model only ever sees one sample."""
    model, data = tiny_bn_net().train(), batch()
    seen = []
    model[0].register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    model[0].eval()  # a part the user froze stays in eval mode afterwards, the rest in training mode
    reweighting = GibbsReweighting.defaults(lam=1.0, norm_estimator="exact", probe_bn="running")
    reweighting.exact_grad_norms(model, per_sample_ce, *data, rng_state(torch.device("cpu")))
    assert seen and set(seen) == {1}
    assert model.training and not model[0].training and all(m.training for m in list(model)[1:])
    seen.clear()
    GibbsReweighting.defaults(lam=1.0, norm_estimator="exact", probe_bn="batch").exact_grad_norms(
        model, per_sample_ce, *data, rng_state(torch.device("cpu")))
    assert seen == [len(data[1])]  # batch: one forward of the whole batch, then its Jacobian rows


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 5.7 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                                                "can't allocate memory: you tried to allocate 6106906624 bytes")])
def test_exact_norms_out_of_memory_says_to_lower_norm_chunk(monkeypatch, error):
    """Running out of memory is not a model torch.func cannot run: it names norm_chunk."""
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch.func, "vjp", failing)
    reweighting = GibbsReweighting.defaults(lam=1.0, norm_estimator="exact")
    with pytest.raises(RuntimeError, match="ran out of memory at norm_chunk=32: lower method.norm_chunk") as raised:
        reweighting.exact_grad_norms(tiny_bn_net(), per_sample_ce, *batch(), rng_state(torch.device("cpu")))
    assert not isinstance(raised.value, ConfigError) and type(raised.value) is type(error)


def test_exact_norms_hold_one_chunk_of_the_jacobian_at_a_time(monkeypatch):
    """Memory stays at norm_chunk x the weights: every vmapped pullback sees and returns at most
    norm_chunk rows (a single vmap with chunk_size would still return the whole B x weights
    Jacobian), and the chunks cover the batch once."""
    vmap, rows_seen = torch.func.vmap, []

    def recording_vmap(function, *args, **kwargs):
        def run(rows):
            grads = vmap(function, *args, **kwargs)(rows)
            rows_seen.append((rows.shape[0], {g.shape[0] for g in grads}))
            return grads
        return run

    monkeypatch.setattr(torch.func, "vmap", recording_vmap)
    model, data = tiny_bn_net().train(), batch()
    reweighting = GibbsReweighting.defaults(lam=1.0, norm_estimator="exact", norm_chunk=3)
    reweighting.exact_grad_norms(model, per_sample_ce, *data, rng_state(torch.device("cpu")))
    assert [n for n, _ in rows_seen] == [3, 3, 3, 3, 3, 1] and all(out == {n} for n, out in rows_seen)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_exact_norms_inside_an_autocast_region_are_true_float32(dtype):
    """RW-SAM's weights are computed inside the step's autocast region (bf16/fp16 training); the
    exact norms, like the finite-difference probe, leave it: they equal the float32 norms bit for
    bit (without exact_fp32 the vmapped Jacobian under autocast does not even run)."""
    model, data = tiny_bn_net().float().train(), batch()
    data = (data[0].float(), data[1])
    reweighting = GibbsReweighting.defaults(lam=1.0, norm_estimator="exact")
    state = rng_state(torch.device("cpu"))
    fp32 = reweighting.exact_grad_norms(model, per_sample_ce, *data, state)
    with torch.autocast("cpu", dtype=dtype):
        mixed = reweighting.exact_grad_norms(model, per_sample_ce, *data, state)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, fp32)


def test_rwsam_with_exact_norms_is_its_formula():
    """The RW-SAM direction with norm_estimator=exact against the formula with the loop's norms:
    p = softmax(lambda n_i / mean n), e = rho g / ||g|| for g = sum_i p_i grad f_i, d = grad mean f(w + e)."""
    model, data = tiny_bn_net().train(), batch()
    lam, rho = 2.0, 0.2
    norms = autograd_loop_norms(copy.deepcopy(model), data, "batch")
    p = torch.softmax(lam * norms / norms.mean(), dim=0)
    reference = copy.deepcopy(model)
    params = list(reference.parameters())
    with running_stats_frozen(reference):
        g = torch.autograd.grad((p * per_sample_ce(reference(data[0]), data[1])).sum(), params)
    norm = torch.sqrt(sum(x.pow(2).sum() for x in g))
    with torch.no_grad():
        for w, x in zip(params, g):
            w += rho * x / (norm + EPS)
    with running_stats_frozen(reference):
        expected = torch.autograd.grad(per_sample_ce(reference(data[0]), data[1]).mean(), params)
    method = SAMLoop(m=1, rho=rho, eps=EPS, reweighting=GibbsReweighting.defaults(lam=lam, norm_estimator="exact"))
    got = direction(method, model, data)
    assert max_diff(got, list(expected)) < 1e-12
    assert max_diff(direction(rwsam(lam=lam), model, data), list(expected)) > 1e-6  # the one-probe estimate is not it


class OldStyleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


def test_exact_norms_are_refused_in_one_line_where_torch_func_cannot_run():
    class Doubling(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(5, 3).double()

        def forward(self, x):
            return OldStyleFunction.apply(self.linear(x))

    reweighting = GibbsReweighting.defaults(lam=1.0, norm_estimator="exact")
    with pytest.raises(ConfigError, match="norm_estimator=exact: torch.func cannot differentiate"):
        reweighting.exact_grad_norms(Doubling(), per_sample_ce, *batch(), rng_state(torch.device("cpu")))
