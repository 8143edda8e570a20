"""scripts/rwsam_norms.py: the finite-difference estimate against the exact norms, and the
effective sample size of the Gibbs weights, checked against answers computed by hand."""

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from msam.methods.reweight import GibbsReweighting, rng_state

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
    # the estimate's ESS is that of the weights of the estimate compare() drew (seed 1 again: the
    # clean pass and the exact norms draw nothing from the global generator here)
    torch.manual_seed(1)
    with torch.no_grad():
        clean = per_sample_ce(model(inputs), targets)
    estimate = reweighting.sample_grad_norms(model, per_sample_ce, inputs, targets, clean, rng_state(torch.device("cpu")))
    assert got["ess_estimate"] == pytest.approx(script.effective_sample_size(reweighting.weights(estimate)))
    assert abs(got["ess_estimate"] - got["ess_exact"]) > 1e-3  # one probe: other weights


def test_a_finished_run_is_measured_per_micro_batch_even_from_a_config_older_than_the_exact_norms(make_cfg):
    """measure_run on a real run trained with m = 2: the weights are computed per micro-batch
    (B / m samples, what one reweighting sees); a config written before norm_estimator and
    norm_chunk existed reads conf/method/rwsam.yaml's values; init and final are different points."""
    from omegaconf import OmegaConf

    from msam import engine, runs

    script = load()
    cfg = make_cfg("method=rwsam", "method.m=2", "method.lambda=2", "epochs=1")
    engine.train(cfg)
    run_dir = runs.run_dir_for(cfg)
    old = OmegaConf.load(run_dir / "config.yaml")
    del old.method["norm_estimator"], old.method["norm_chunk"]
    OmegaConf.save(old, run_dir / "config.yaml")
    rows = script.measure_run(run_dir, batches=2)
    assert [(r["point"], r["batch"]) for r in rows] == [("init", 0), ("init", 1), ("final", 0), ("final", 1)]
    assert {r["B"] for r in rows} == {cfg.batch_size // 2} and {r["trained_with"] for r in rows} == {"finite_difference"}
    assert all(1.0 <= r["ess_exact"] <= r["B"] for r in rows)
    assert rows[0]["mean_norm"] != rows[2]["mean_norm"]  # the trained weights, not the initial ones


def test_compare_leaves_the_running_statistics_that_probe_bn_running_reads():
    """Batch after batch the norms under probe_bn=running must read the trained statistics, not
    ones the measurement's own clean passes moved."""
    script = load()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reweighting = GibbsReweighting.defaults(lam=1.0, probe_bn="running")
    for _ in range(2):
        script.compare(reweighting, model, per_sample_ce, torch.randn(10, 6) + 3, torch.randint(0, 3, (10,)))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
