"""Mixed precision on the CPU (bf16 and fp16 autocast both run here): the direction of every
method under autocast is fp32's within the dtype's tolerance, and as far from vanilla's as in
fp32. This is what a single autocast region around the whole step broke (SAM became vanilla:
the perturbed pass reused the cached low-precision copy of the clean weights) and what fp16's
loss scale broke for scale-dependent methods (USAM's e = rho S g, RW-SAM's softmax(lambda S n))."""

import pytest
import torch
from torch import nn

from msam import engine, runs
from msam.bench import method_config
from msam.methods import build_method
from msam.precision import Precision

# (label, method, overrides, rho): rho is large enough that perturbing moves the direction by far
# more than the dtype's rounding; ASAM's T = |w| + eta shrinks e, hence its larger rho.
METHODS = [
    ("sam", "sam", {}, 0.5),
    ("msam-loop", "msam", {"m": 4, "impl": "loop"}, 0.5),
    ("msam-vmap", "msam", {"m": 4, "impl": "vmap"}, 0.5),
    ("msam-vmap_ascent", "msam", {"m": 4, "impl": "vmap_ascent"}, 0.5),
    ("m-usam-vmap", "msam", {"m": 4, "normalize": False, "impl": "vmap"}, 0.5),
    ("m-usam-vmap_ascent", "msam", {"m": 4, "normalize": False, "impl": "vmap_ascent"}, 0.5),
    ("asam", "asam", {}, 4.0),
    ("usam", "sam", {"normalize": False}, 0.5),
    ("m-usam", "msam", {"m": 4, "normalize": False, "impl": "loop"}, 0.5),
    ("rwsam", "rwsam", {"lambda": 2.0}, 0.5),
    ("rwsam-absolute", "rwsam", {"lambda": 0.5, "norm_scale": "absolute"}, 0.5),
]
# Relative error of a direction against fp32's: bf16 keeps 8 mantissa bits, fp16 11. The
# perturbed pass sits behind a low-precision ascent pass, so the error is a few units of rounding.
TOLERANCE = {"bf16": 0.05, "fp16": 0.01}
FP16_SCALE = 2.0**10  # a scale at which nothing overflows on this problem (RW-SAM's weights peak)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10))


def batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(32, 20, generator=gen), torch.randint(0, 10, (32,), generator=gen)


def precision(name, scale=FP16_SCALE):
    if name == "fp32":
        return Precision()
    if name == "bf16":
        return Precision("cpu", torch.bfloat16)
    return Precision("cpu", torch.float16, torch.amp.GradScaler("cpu", init_scale=scale))


def per_sample_ce(logits, targets):
    return nn.functional.cross_entropy(logits.float(), targets, reduction="none")


def direction(name, overrides, rho, prec, model=None):
    """The method's d as one flat fp32 vector (unscaled under fp16, as the engine unscales it)."""
    model = model or mlp()
    method = build_method(method_config(name, rho if name != "vanilla" else 0.0, **overrides), precision=prec)
    torch.manual_seed(2)  # RW-SAM's probe draws the same Rademacher vector in every precision
    method(model, per_sample_ce, batch())
    grads = [p.grad.detach().clone().float() for p in model.parameters()]
    prec.unscale_(grads)
    return torch.cat([g.flatten() for g in grads])


@pytest.fixture(scope="module")
def fp32_vanilla():
    return direction("vanilla", {}, 0.0, precision("fp32"))


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_vanilla_direction_under_autocast_is_fp32_s(dtype, fp32_vanilla):
    mixed = direction("vanilla", {}, 0.0, precision(dtype))
    assert (mixed - fp32_vanilla).norm() / fp32_vanilla.norm() < TOLERANCE[dtype]
    assert not torch.equal(mixed, fp32_vanilla)  # it did run in low precision


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("label,name,overrides,rho", METHODS, ids=[m[0] for m in METHODS])
def test_direction_under_autocast_is_fp32_s_and_as_far_from_vanilla(dtype, label, name, overrides, rho,
                                                                    fp32_vanilla):
    reference = direction(name, overrides, rho, precision("fp32"))
    mixed = direction(name, overrides, rho, precision(dtype))
    mixed_vanilla = direction("vanilla", {}, 0.0, precision(dtype))
    tolerance = TOLERANCE[dtype] * reference.norm()
    gap = (reference - fp32_vanilla).norm()  # what perturbing does in fp32
    assert gap > 4 * tolerance  # the check below can tell the method from vanilla
    assert (mixed - reference).norm() < tolerance
    assert abs((mixed - mixed_vanilla).norm() - gap) < tolerance


@pytest.mark.parametrize("name,overrides", [("sam", {}), ("msam", {"m": 4, "impl": "loop"}),
                                            ("msam", {"m": 4, "impl": "vmap"}), ("msam", {"m": 4, "impl": "vmap_ascent"})],
                         ids=["sam", "msam-loop", "msam-vmap", "msam-vmap_ascent"])
def test_unnormalized_perturbation_does_not_depend_on_the_fp16_loss_scale(name, overrides):
    """USAM's e = rho g: with the ascent gradient left scaled it would be rho S g."""
    small = direction(name, {"normalize": False, **overrides}, 0.5, precision("fp16", scale=2.0**4))
    large = direction(name, {"normalize": False, **overrides}, 0.5, precision("fp16", scale=2.0**12))
    assert (small - large).norm() / small.norm() < TOLERANCE["fp16"]


def test_rwsam_weights_under_fp16_are_fp32_s(monkeypatch):
    """Gibbs weights come from unscaled losses and a probe in exact fp32 (a scaled or low-precision
    finite difference would give softmax(lambda S n) or noise)."""
    from msam.methods.reweight import GibbsReweighting

    seen = []
    real = GibbsReweighting.weights
    monkeypatch.setattr(GibbsReweighting, "weights", lambda self, norms: seen.append(real(self, norms)) or seen[-1])
    for dtype in ("fp32", "fp16", "bf16"):
        direction("rwsam", {"lambda": 0.5, "norm_scale": "absolute"}, 0.5, precision(dtype))
    fp32, fp16, bf16 = seen
    assert fp32.max() > 2 * fp32.min()  # not uniform: the weights matter
    assert (fp16 - fp32).abs().max() / fp32.max() < 0.01
    assert (bf16 - fp32).abs().max() / fp32.max() < 0.01


def test_a_caller_s_own_autocast_region_does_not_make_sam_vanilla():
    """A library user may wrap the whole step in autocast; the methods drop autocast's weight
    cache after every in-place weight change, so the perturbed pass still sees w + e."""
    sam, vanilla = build_method(method_config("sam", 0.5)), build_method(method_config("vanilla", 0.0))
    results = []
    for method in (sam, vanilla):
        model = mlp()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            method(model, per_sample_ce, batch())
        results.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert (results[0] - results[1]).norm() > 0.1


# --- the engine under bf16: a few steps of SAM land away from vanilla ---------------------------

SMALL = ("dataset=synthetic", "dataset.image_shape=[1,8,8]", "dataset.mean=[0.5]", "dataset.std=[0.2887]",
         "dataset.train_size=128", "dataset.test_size=64", "batch_size=32", "epochs=1", "optim.lr=0.5")


def final_weights(make_cfg, *overrides):
    cfg = make_cfg(*SMALL, *overrides)
    engine.train(cfg)
    state = torch.load(runs.run_dir_for(cfg) / "last.pt", weights_only=True)["model"]
    return torch.cat([v.double().flatten() for k, v in state.items() if k.endswith("weight") or k.endswith("bias")])


def test_bf16_sam_training_lands_away_from_bf16_vanilla(make_cfg):
    sam_bf16 = final_weights(make_cfg, "method=sam", "method.rho=0.5", "precision=bf16")
    vanilla_bf16 = final_weights(make_cfg, "method=vanilla", "precision=bf16")
    sam_fp32 = final_weights(make_cfg, "method=sam", "method.rho=0.5")
    vanilla_fp32 = final_weights(make_cfg, "method=vanilla")
    gap = (sam_fp32 - vanilla_fp32).norm()
    assert (sam_bf16 - sam_fp32).norm() < 0.25 * gap  # bf16 SAM is near fp32 SAM ...
    assert (sam_bf16 - vanilla_bf16).norm() > 0.75 * gap  # ... and as far from vanilla as fp32 SAM


def test_fp16_stops_on_a_loss_that_is_not_finite(make_cfg, monkeypatch):
    """The GradScaler skips steps whose direction overflows; a NaN loss is a broken forward pass
    that no scale repairs, so the guard still stops the run under fp16."""
    from msam.errors import RunError

    real = engine.per_sample_cross_entropy
    monkeypatch.setattr(engine, "per_sample_cross_entropy",
                        lambda smoothing: lambda logits, targets: real(smoothing)(logits, targets) * float("nan"))
    with pytest.raises(RunError, match="non-finite loss at step"):
        engine.train(make_cfg(*SMALL, "method=sam", "precision=fp16", "nonfinite_check_every=1"))


@pytest.fixture
def tf32_restored():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("tf32", [False, True])
def test_tf32_is_set_from_the_config_and_recorded(make_cfg, tf32_restored, tf32):
    torch.backends.cudnn.allow_tf32 = not tf32  # whatever torch's default was, the config decides
    cfg = make_cfg(*SMALL, "method=vanilla", f"tf32={str(tf32).lower()}")
    engine.train(cfg)
    recorded = runs.read_json(runs.run_dir_for(cfg) / "provenance.json")["precision"]
    assert recorded["tf32_cudnn"] is tf32 and recorded["tf32_matmul"] is tf32
    assert torch.backends.cudnn.allow_tf32 is tf32
    assert recorded["precision"] == "fp32" and recorded["autocast_dtype"] is None


def test_vmap_with_batchnorm_under_cpu_autocast_is_one_clear_line(make_cfg):
    from msam.errors import ConfigError

    with pytest.raises(ConfigError, match="method.impl=vmap with bf16/fp16 autocast does not run BatchNorm"):
        engine.train(make_cfg("method=msam", "method.m=4", "method.impl=vmap", "precision=bf16", "model=resnet18",
                              "dataset=synthetic", "dataset.train_size=64", "batch_size=32"))


def test_fp16_skips_non_finite_steps_and_goes_on(make_cfg, monkeypatch):
    """nonfinite=skip under fp16: a skipped step closes the scaler's step (update without step),
    so the next step can unscale again; the run finishes with the bad steps counted."""
    real, calls = engine.per_sample_cross_entropy, {"n": 0}

    def every_other_step_nan(smoothing):
        def loss(logits, targets):
            calls["n"] += 1
            bad = calls["n"] % 4 in (1, 2)  # some forward passes of some steps
            return real(smoothing)(logits, targets) * (float("nan") if bad else 1.0)
        return loss

    monkeypatch.setattr(engine, "per_sample_cross_entropy", every_other_step_nan)
    summary = engine.train(make_cfg(*SMALL, "method=sam", "precision=fp16", "nonfinite=skip"))
    assert summary["status"] == "finished"
    rows = runs.read_metrics(runs.run_dir_for(make_cfg(*SMALL, "method=sam", "precision=fp16",
                                                       "nonfinite=skip")) / "metrics.jsonl")
    assert 0 < rows[-1]["skipped_steps"] < 4
