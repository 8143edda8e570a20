"""scripts/rwsam_norms.py: the finite-difference estimate against the exact norms, and the
effective sample size of the Gibbs weights, checked against answers computed by hand."""

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from msam.methods.reweight import GibbsReweighting

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "rwsam_norms.py"


def load():
    spec = importlib.util.spec_from_file_location("rwsam_norms", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def per_sample_ce(logits, targets):
    return nn.functional.cross_entropy(logits, targets, reduction="none")


def test_effective_sample_size_is_b_for_uniform_weights_and_1_for_one_sample():
    script = load()
    assert script.effective_sample_size(torch.full((8,), 1 / 8)) == pytest.approx(8.0)
    assert script.effective_sample_size(torch.tensor([1.0, 0, 0, 0])) == pytest.approx(1.0)
    assert script.effective_sample_size(torch.tensor([0.5, 0.5, 0, 0])) == pytest.approx(2.0)


def test_compare_gives_the_exact_norms_effective_sample_size_and_the_estimate_s_error():
    script = load()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))  # no BatchNorm: samples independent
    inputs, targets = torch.randn(10, 6), torch.randint(0, 3, (10,))
    norms = []
    for x, y in zip(inputs, targets):  # the answer by hand: one autograd call per sample
        grads = torch.autograd.grad(per_sample_ce(model(x[None]), y[None]).sum(), list(model.parameters()))
        norms.append(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
    norms = torch.stack(norms)
    reweighting = GibbsReweighting.defaults(lam=3.0, norm_scale="relative", probes=1)
    torch.manual_seed(1)
    got = script.compare(reweighting, model, per_sample_ce, inputs, targets)
    weights = torch.softmax(3.0 * norms / norms.mean(), dim=0)
    assert got["ess_exact"] == pytest.approx(float(1 / weights.pow(2).sum()), rel=1e-5)
    assert got["mean_norm"] == pytest.approx(float(norms.mean()), rel=1e-5)
    # one probe: |z . g_i| is a noisy estimate of ||g_i||; many probes average it out
    assert got["median_relative_error"] > 0.05
    many = script.compare(GibbsReweighting.defaults(lam=3.0, norm_scale="relative", probes=2000), model,
                          per_sample_ce, inputs, targets)
    assert many["median_relative_error"] < 0.05 and many["correlation"] > 0.99
