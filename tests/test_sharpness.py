"""Sharpness against the exact Hessian of tiny float64 models (torch.func.hessian)."""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from msam.sharpness.measures import NotConverged, measure_sharpness
from msam.sharpness.operator import PRODUCTS, ReIterable, TrainingLossHessian


def per_sample_ce(logits, targets):
    return nn.functional.cross_entropy(logits, targets, reduction="none")


def tiny_bn_model():
    """197 parameters with a BatchNorm layer whose running statistics are not the defaults."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 12), nn.BatchNorm1d(12), nn.Tanh(), nn.Linear(12, 5)).double()
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 2.0)
    return model.train()  # measure_sharpness must switch to eval itself


def data(n=50):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 8, generator=gen, dtype=torch.float64), torch.randint(0, 5, (n,), generator=gen)


def batches_of(x, y, size):
    return ReIterable(lambda: [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)])


def exact_hessian(model, x, y, loss=per_sample_ce):
    model = copy.deepcopy(model).eval()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def mean_loss(vector):
        params, offset = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = vector[offset:offset + shape.numel()].view(shape)
            offset += shape.numel()
        return loss(functional_call(model, params, (x,)), y).mean()

    return hessian(mean_loss)(flat)


def measure(model, batches, n, loss=per_sample_ce, **options):
    settings = dict(algorithm="lanczos", max_iter=400, tol=1e-10, trace_probes=400, seed=0, keep_unconverged=False,
                    gradient_passes=1)
    settings.update(options)
    return measure_sharpness(model, batches, n, loss, **settings)


# 16 leaves a last batch of 2; forward-over-reverse (slower here) once, with Lanczos
@pytest.mark.parametrize("algorithm, batch_size, product", [
    ("lanczos", 10, "double_backward"), ("lanczos", 16, "double_backward"), ("power", 10, "double_backward"),
    ("power", 16, "double_backward"), ("lanczos", 16, "forward_over_reverse")])
def test_lambda_max_and_trace_match_the_exact_hessian(algorithm, batch_size, product):
    model, (x, y) = tiny_bn_model(), data()
    exact = exact_hessian(model, x, y)
    eigenvalues = torch.linalg.eigvalsh(exact)
    options = {"max_iter": 5000, "tol": 1e-9} if algorithm == "power" else {}
    # forward-over-reverse is the slower product here: a tenth of the probes (the trace's
    # bound below widens with them), the same eigenvalue tolerance
    probes = 40 if product == "forward_over_reverse" else 400
    result = measure(model, batches_of(x, y, batch_size), len(y), algorithm=algorithm, product=product,
                     trace_probes=probes, **options)
    assert result["converged"]
    assert result["lambda_max"] == pytest.approx(eigenvalues[-1].item(), rel=1e-6)
    assert abs(result["trace"] - exact.trace().item()) < 3 * result["trace_stderr"]
    assert result["hvp_count"] == result["hvp_count_lambda_max"] + probes and result["hvp_method"] == product


@pytest.mark.parametrize("product", PRODUCTS)
def test_each_product_equals_the_exact_hessian_times_a_vector(product):
    """One product against H v from torch.func.hessian, float64, with an unequal last batch."""
    model, (x, y) = tiny_bn_model(), data()
    model.eval()
    exact = exact_hessian(model, x, y)
    op = TrainingLossHessian(model, batches_of(x, y, 16), len(y), per_sample_ce, product)
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = exact @ v
    assert torch.linalg.vector_norm(op.matvec(v) - expected) < 1e-10 * torch.linalg.vector_norm(expected)
    assert op.count == 1


def test_a_mean_over_batches_would_be_wrong_with_an_unequal_last_batch():
    """The trap the wrapper avoids: averaging per-batch mean-loss Hessians overweights the short batch."""
    model, (x, y) = tiny_bn_model(), data()
    exact = torch.linalg.eigvalsh(exact_hessian(model, x, y))[-1].item()
    per_batch = [exact_hessian(model, x[i:i + 16], y[i:i + 16]) for i in range(0, 50, 16)]
    naive = torch.linalg.eigvalsh(sum(per_batch) / len(per_batch))[-1].item()
    assert abs(naive - exact) / exact > 1e-3  # so the test above has teeth


class Quadratic(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64))

    def forward(self, x):
        return self.w.expand(x.shape[0], 3)


A = torch.diag(torch.tensor([-5.0, 1.0, 2.0], dtype=torch.float64))


def quadratic_loss(w_rows, targets):
    return 0.5 * torch.einsum("bi,ij,bj->b", w_rows, A, w_rows)


@pytest.mark.parametrize("algorithm", ["lanczos", "power"])
def test_top_eigenvalue_when_the_largest_in_magnitude_is_negative(algorithm):
    x, y = torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    result = measure(Quadratic(), batches_of(x, y, 4), 4, quadratic_loss, algorithm=algorithm,
                     max_iter=3 if algorithm == "lanczos" else 2000, trace_probes=0)
    assert result["lambda_max"] == pytest.approx(2.0, rel=1e-6)
    if algorithm == "power":
        assert result["lambda_largest_magnitude"] == pytest.approx(-5.0, rel=1e-6)


def test_model_mode_and_weights_are_left_as_they_were():
    model, (x, y) = tiny_bn_model(), data()
    before = copy.deepcopy(model.state_dict())
    measure(model, batches_of(x, y, 16), 50, trace_probes=5)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_unconverged_result_is_refused_unless_kept():
    model, (x, y) = tiny_bn_model(), data()
    with pytest.raises(NotConverged, match="did not converge"):
        measure(model, batches_of(x, y, 16), 50, max_iter=2, trace_probes=0)
    kept = measure(model, batches_of(x, y, 16), 50, max_iter=2, trace_probes=0, keep_unconverged=True)
    assert kept["converged"] is False
