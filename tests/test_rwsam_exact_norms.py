"""RW-SAM's exact per-sample gradient norms (method.norm_estimator=exact, src/msam/methods/reweight.py):
against a per-sample autograd loop in float64, under dropout, autocast and both probe_bn settings,
in chunks of norm_chunk, inside the RW-SAM direction, and refused or explained where they cannot run."""

import copy

import pytest
import torch
from torch import nn

from msam.errors import ConfigError
from msam.methods.batchnorm import running_stats_frozen
from msam.methods.msam_loop import SAMLoop
from msam.methods.reweight import GibbsReweighting, rng_state
from test_methods import EPS, batch, direction, max_diff, per_sample_ce, tiny_bn_net, tiny_mlp
from test_variants import rwsam


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
