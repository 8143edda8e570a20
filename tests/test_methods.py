"""The gradient rules against hand-computed and direct implementations (float64, tiny models)."""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from msam.methods.batch import split_batch
from msam.methods.msam_loop import SAMLoop
from msam.methods.vanilla import Vanilla

EPS = 1e-12


def per_sample_ce(logits, targets):
    return nn.functional.cross_entropy(logits, targets, reduction="none")


def tiny_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def tiny_bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()


def batch(n=16, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


def direction(method, model, data):
    model = copy.deepcopy(model).train()
    method(model, per_sample_ce, data)
    return [p.grad.clone() for p in model.parameters()]


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def direct_msam(model, data, m, rho):
    """The mSAM formula (docs/methods.md, "The methods, exactly") written out with torch.func, one micro-batch at a time."""
    model = copy.deepcopy(model).train()
    names = [n for n, _ in model.named_parameters()]
    w = {n: p.detach() for n, p in model.named_parameters()}

    def loss_at(params, x, y):
        return per_sample_ce(functional_call(model, params, (x,)), y).mean()

    total = None
    for x, y in split_batch(data, m):
        params = {n: t.clone().requires_grad_(True) for n, t in w.items()}
        g = torch.autograd.grad(loss_at(params, x, y), [params[n] for n in names])
        norm = torch.sqrt(sum((gi**2).sum() for gi in g))
        perturbed = {n: (w[n] + rho * gi / (norm + EPS)).requires_grad_(True) for n, gi in zip(names, g)}
        d = torch.autograd.grad(loss_at(perturbed, x, y), [perturbed[n] for n in names])
        total = list(d) if total is None else [t + di for t, di in zip(total, d)]
    return [t / m for t in total]


@pytest.mark.parametrize("m", [1, 2, 4])
def test_rho_zero_gives_vanilla_direction(m):
    model, data = tiny_mlp(), batch()
    vanilla = direction(Vanilla(), model, data)
    assert max_diff(direction(SAMLoop(m=m, rho=0.0, eps=EPS), model, data), vanilla) < 1e-14


def test_sam_rho_zero_gives_vanilla_direction_with_batchnorm():
    model, data = tiny_bn_net(), batch()
    vanilla = direction(Vanilla(), model, data)
    assert max_diff(direction(SAMLoop(m=1, rho=0.0, eps=EPS), model, data), vanilla) < 1e-14


def test_sam_and_msam_with_one_micro_batch_follow_the_sam_formula():
    """The configs' sam and msam (m = 1) built as msam-train builds them, against the formula written
    out independently (direct_msam), on a BatchNorm model; and SAM is not vanilla, so this has teeth."""
    from omegaconf import OmegaConf

    from msam.methods import build_method
    from msam.paths import CONF_DIR

    model, data = tiny_bn_net(), batch()
    expected = direct_msam(model, data, 1, 0.1)
    for name in ("sam", "msam"):
        cfg = OmegaConf.merge(OmegaConf.load(CONF_DIR / "method" / f"{name}.yaml"),
                              {"m": 1, "rho": 0.1, "eps": EPS, "impl": "loop"})
        assert max_diff(direction(build_method(cfg), model, data), expected) < 1e-12, name
    assert max_diff(expected, direction(Vanilla(), model, data)) > 1e-4


class Quadratic(nn.Module):
    """L(w) = 0.5 w^T A w + b^T w for every sample; 'logits' are w itself."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x):
        return self.w.expand(x.shape[0], 2)


def test_sam_direction_on_a_quadratic_matches_hand_computation():
    a = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([0.5, -1.0], dtype=torch.float64)

    def quadratic_loss(w_rows, targets):
        return 0.5 * torch.einsum("bi,ij,bj->b", w_rows, a, w_rows) + w_rows @ b

    model, rho = Quadratic([1.0, -2.0]), 0.3
    data = (torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.long))
    SAMLoop(m=1, rho=rho, eps=0.0)(model, quadratic_loss, data)
    # g = A w + b = (3 - 2 + 0.5, 1 - 4 - 1) = (1.5, -4.0); ||g|| = sqrt(18.25)
    w = torch.tensor([1.0, -2.0], dtype=torch.float64)
    g = torch.tensor([1.5, -4.0], dtype=torch.float64)
    expected = a @ (w + rho * g / 18.25**0.5) + b
    assert torch.allclose(model.w.grad, expected, atol=1e-15, rtol=0)


@pytest.mark.parametrize("m", [1, 2, 4, 8])
@pytest.mark.parametrize("make_model", [tiny_mlp, tiny_bn_net])
def test_msam_equals_direct_formula(m, make_model):
    model, data = make_model(), batch()
    ours = direction(SAMLoop(m=m, rho=0.2, eps=EPS), model, data)
    assert max_diff(ours, direct_msam(model, data, m, 0.2)) < 1e-13
    if m > 1:  # mSAM is not SAM: the comparison would catch a method that ignored m
        assert max_diff(ours, direct_msam(model, data, 1, 0.2)) > 1e-4


def test_weights_are_restored_exactly():
    model, data = tiny_bn_net(), batch()
    before = [p.detach().clone() for p in model.parameters()]
    SAMLoop(m=4, rho=0.5, eps=EPS)(model, per_sample_ce, data)
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)  # bitwise: restored by copy, not by subtracting e


def test_clean_loss_and_logits_are_at_the_unperturbed_weights():
    model, data = tiny_bn_net(), batch()
    reference = copy.deepcopy(model).train()
    expected = torch.stack([per_sample_ce(reference(x), y).mean() for x, y in split_batch(data, 4)]).mean()
    loss, logits = SAMLoop(m=4, rho=0.5, eps=EPS)(model, per_sample_ce, data)
    assert torch.allclose(loss, expected, atol=1e-15)
    assert logits.shape == (16, 3)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_running_stats_get_one_update_from_mean_micro_batch_statistics(momentum):
    model, data = tiny_bn_net(), batch()
    bn = model[1]
    bn.momentum = momentum
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.num_batches_tracked.fill_(3)
    old_mean, old_var = bn.running_mean.clone(), bn.running_var.clone()
    with torch.no_grad():
        hidden = model[0](data[0])
    stats_mean = torch.stack([h.mean(0) for h in hidden.chunk(4)]).mean(0)
    stats_var = torch.stack([h.var(0, unbiased=True) for h in hidden.chunk(4)]).mean(0)
    factor = 0.1 if momentum is not None else 1.0 / 4  # cumulative average after the 4th batch

    SAMLoop(m=4, rho=0.5, eps=EPS)(model, per_sample_ce, data)

    assert torch.allclose(bn.running_mean, (1 - factor) * old_mean + factor * stats_mean, atol=1e-14)
    assert torch.allclose(bn.running_var, (1 - factor) * old_var + factor * stats_var, atol=1e-14)
    assert bn.num_batches_tracked.item() == 4


def test_batchnorm_with_one_micro_batch_is_pytorchs_usual_update():
    model, data = tiny_bn_net(), batch()
    reference = copy.deepcopy(model).train()
    reference(data[0])  # one ordinary training forward
    SAMLoop(m=1, rho=0.5, eps=EPS)(model, per_sample_ce, data)
    for ours, theirs in zip(model[1].buffers(), reference[1].buffers()):
        assert torch.equal(ours, theirs)


def test_split_batch_handles_dict_inputs():
    inputs = {"input_ids": torch.arange(8).view(4, 2), "attention_mask": torch.ones(4, 2)}
    parts = split_batch((inputs, torch.arange(4)), 2)
    assert len(parts) == 2
    assert torch.equal(parts[1][0]["input_ids"], torch.tensor([[4, 5], [6, 7]]))
    assert torch.equal(parts[1][1], torch.tensor([2, 3]))


# --- method.impl=vmap: the same direction and BatchNorm semantics as the loop ---------------

from msam.methods.msam_vmap import SAMVmap  # noqa: E402
from msam.methods.msam_vmap_ascent import SAMVmapAscent  # noqa: E402


def tiny_cnn_bn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3)).double()


def image_batch(n=16, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 5, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


@pytest.mark.parametrize("m", [1, 2, 4, 8])
@pytest.mark.parametrize("make", ["mlp", "bn_mlp", "cnn_bn"])
@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("vmapped", [SAMVmap, SAMVmapAscent], ids=["vmap", "vmap_ascent"])
def test_vmap_gives_the_loops_direction_and_batchnorm_buffers(m, make, chunk_size, vmapped):
    model, data = {"mlp": (tiny_mlp, batch), "bn_mlp": (tiny_bn_net, batch), "cnn_bn": (tiny_cnn_bn, image_batch)}[make]
    model, data = model(), data()
    loop_model, vmap_model = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    loop_loss, loop_logits = SAMLoop(m=m, rho=0.2, eps=EPS)(loop_model, per_sample_ce, data)
    vmap_loss, vmap_logits = vmapped(m=m, rho=0.2, eps=EPS, chunk_size=chunk_size)(
        vmap_model, per_sample_ce, data)
    assert max_diff([p.grad for p in vmap_model.parameters()], [p.grad for p in loop_model.parameters()]) < 1e-12
    assert max_diff(list(vmap_model.buffers()), list(loop_model.buffers())) < 1e-12 if list(model.buffers()) else True
    assert torch.allclose(vmap_loss, loop_loss, atol=1e-13) and torch.allclose(vmap_logits, loop_logits, atol=1e-12)
    for p, q in zip(vmap_model.parameters(), model.parameters()):
        assert torch.equal(p, q)  # the weights are never written
