"""method.impl=auto: the tuning measures, leaves no trace in the run, is kept across a resume,
and gives every process the same choice."""

import os
import socket
import sys
import time

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import nn

from msam import dist, engine, runs
from msam.methods import autotune
from msam.methods.autotune import Choice, eager_candidates, tune
from msam.precision import Precision


def per_sample_ce(logits, targets):
    return nn.functional.cross_entropy(logits, targets, reduction="none")


def bn_dropout_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4))


def test_candidates_are_the_implementations_that_can_run():
    model = bn_dropout_net()
    assert eager_candidates(16, model, Precision()) == [Choice("loop"), Choice("vmap"), Choice("vmap", 4),
                                                  Choice("vmap_ascent")]
    assert eager_candidates(4, model, Precision()) == [Choice("loop"), Choice("vmap"), Choice("vmap_ascent")]
    loop_only = [Choice("loop")]
    assert eager_candidates(1, model, Precision()) == loop_only
    assert eager_candidates(8, model, Precision(), dict_inputs=True) == loop_only  # token batches
    assert eager_candidates(8, model, Precision(), compiled=True) == loop_only
    assert eager_candidates(8, model, Precision(), reweighting=True) == loop_only  # RW-SAM
    assert eager_candidates(8, model, Precision("cpu", torch.bfloat16)) == loop_only  # BatchNorm under CPU autocast
    assert Choice.from_label(Choice("vmap", 4).label) == Choice("vmap", 4)
    assert Choice.from_label(Choice("vmap_ascent", 2).label) == Choice("vmap_ascent", 2)
    assert Choice.from_label("loop") == Choice("loop")


def test_tuning_leaves_weights_buffers_grads_and_random_streams_as_they_were():
    from msam.bench import method_config
    from msam.methods import build_method

    model = bn_dropout_net().train()
    x, y = torch.randn(32, 6), torch.randint(0, 4, (32,))
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    torch.manual_seed(7)
    rng = torch.get_rng_state()
    cfg = method_config("msam", 0.2, m=8)
    methods = {c: build_method(cfg, model=model, choice=c) for c in eager_candidates(8, model, Precision())}
    choice, table = tune(methods, model, per_sample_ce, (x, y), steps=2, max_seconds=60, keep_within=1.3, ctx=dist.DistContext())
    assert set(table) == {"loop", "vmap", "vmap(chunk_size=2)", "vmap_ascent"} and choice in methods
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights and BN buffers
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert torch.equal(torch.get_rng_state(), rng)  # dropout drew during tuning; the stream is back


class Sleeper:
    def __init__(self, seconds):
        self.seconds = seconds

    def __call__(self, model, loss_fn, batch):
        time.sleep(self.seconds)


class Failing:
    def __call__(self, model, loss_fn, batch):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")


def test_a_candidate_that_fails_is_dropped_but_a_failing_loop_is_an_error():
    methods = {Choice("loop"): Sleeper(0.01), Choice("vmap"): Failing()}
    choice, table = tune(methods, nn.Linear(2, 2), None, None, steps=2, max_seconds=60, keep_within=1.3, ctx=dist.DistContext())
    assert choice == Choice("loop") and list(table) == ["loop"]
    with pytest.raises(RuntimeError, match="out of memory"):
        tune({Choice("loop"): Failing(), Choice("vmap"): Sleeper(0.01)}, nn.Linear(2, 2), None, None, steps=1,
             max_seconds=60, keep_within=1.3, ctx=dist.DistContext())


def test_a_user_chunk_size_is_the_vmap_candidate():
    assert eager_candidates(16, nn.Linear(2, 2), Precision(), chunk_size=2) == [Choice("loop"), Choice("vmap", 2),
                                                                          Choice("vmap_ascent", 2)]


def test_the_fastest_is_chosen():
    methods = {Choice("loop"): Sleeper(0.03), Choice("vmap"): Sleeper(0.005)}
    choice, table = tune(methods, nn.Linear(2, 2), None, None, steps=2, max_seconds=60, keep_within=1.3, ctx=dist.DistContext())
    assert choice == Choice("vmap") and table["loop"].ms > table["vmap"].ms


class Scripted:
    """Sleeps for the given seconds, one value per call (then the last one again)."""

    def __init__(self, *seconds):
        self.seconds, self.calls = list(seconds), 0

    def __call__(self, model, loss_fn, batch):
        time.sleep(self.seconds[min(self.calls, len(self.seconds) - 1)])
        self.calls += 1


def test_a_candidate_counts_its_best_round_so_one_disturbed_round_does_not_decide():
    # rounds: warm-up, then vmap is disturbed in two of three (another job on the machine): its
    # median (0.08 s) is above the loop's 0.05 s, its best round (0.02 s) below
    loop, vmap = Scripted(0.05), Scripted(0.05, 0.08, 0.02, 0.09)
    choice, table = tune({Choice("loop"): loop, Choice("vmap"): vmap}, nn.Linear(2, 2), None, None, steps=3,
                         max_seconds=60, keep_within=10.0, ctx=dist.DistContext())
    assert choice == Choice("vmap") and table["vmap"].ms < 30 < table["loop"].ms


def test_a_clearly_slower_candidate_is_dropped_after_one_round_and_the_close_ones_go_on():
    loop, vmap, chunked = Scripted(0.02), Scripted(0.10), Scripted(0.021)
    choice, table = tune({Choice("loop"): loop, Choice("vmap"): vmap, Choice("vmap", 2): chunked},
                         nn.Linear(2, 2), None, None, steps=4, max_seconds=60, keep_within=1.3,
                         ctx=dist.DistContext())
    assert vmap.calls == 2  # warm-up and one timed round: 5x the leader
    assert loop.calls == chunked.calls == 5  # warm-up and all four rounds
    assert choice in (Choice("loop"), Choice("vmap", 2)) and set(table) == {"loop", "vmap", "vmap(chunk_size=2)"}


def test_tuning_ends_once_a_single_candidate_is_left():
    loop, vmap = Scripted(0.01), Scripted(0.05)
    choice, _ = tune({Choice("loop"): loop, Choice("vmap"): vmap}, nn.Linear(2, 2), None, None, steps=5,
                     max_seconds=60, keep_within=1.3, ctx=dist.DistContext())
    assert choice == Choice("loop") and loop.calls == vmap.calls == 2


def agree_worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch_dist.init_process_group("gloo")
    # rank 0 alone would pick the loop, rank 1 alone vmap; the slowest process decides for both
    loop, vmap = (0.01, 0.03) if rank == 0 else (0.06, 0.04)
    choice, _ = tune({Choice("loop"): Sleeper(loop), Choice("vmap"): Sleeper(vmap)}, nn.Linear(2, 2), None, None,
                     steps=2, max_seconds=60, keep_within=1.3, ctx=dist.DistContext(rank, 2, 0))
    with open(f"{out}.{rank}", "w") as handle:
        handle.write(choice.label)
    torch_dist.barrier()
    sys.stdout.flush()
    os._exit(0)


def test_every_process_takes_the_same_choice(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(agree_worker, args=(port, str(tmp_path / "choice")), nprocs=2, join=True)
    assert (tmp_path / "choice.0").read_text() == (tmp_path / "choice.1").read_text() == "vmap"


DIGITS = ("method=msam", "method.m=8", "method.impl=auto", "epochs=2", "impl_tuning.steps=1")


def final_model(cfg):
    return torch.load(runs.run_dir_for(cfg) / "last.pt", weights_only=True)["model"]


def test_a_run_with_auto_equals_a_run_with_the_chosen_implementation(make_cfg, tmp_path):
    auto_cfg = make_cfg(*DIGITS)
    summary = engine.train(auto_cfg)
    choice = Choice.from_label(summary["derived"]["method.impl"])
    fixed_cfg = make_cfg(*DIGITS, f"method.impl={choice.impl}", f"paths.runs={tmp_path}/fixed",
                         f"method.chunk_size={'null' if choice.chunk_size is None else choice.chunk_size}")
    assert runs.run_dir_for(fixed_cfg).name == runs.run_dir_for(auto_cfg).name  # how, not what, is computed
    engine.train(fixed_cfg)
    auto, fixed = final_model(auto_cfg), final_model(fixed_cfg)
    assert all(torch.equal(auto[k], fixed[k]) for k in auto)  # weights and BatchNorm buffers, bit for bit
    recorded = torch.load(runs.run_dir_for(auto_cfg) / "last.pt", weights_only=True)["implementations"]
    assert recorded["method"] == choice.label  # and the measurements it was chosen by, for a resumed run's summary
    assert set(recorded["method.tuning"]) == {"loop", "vmap", "vmap(chunk_size=2)", "vmap_ascent"}
    from msam.report.collect import collect_runs
    from msam.report.tables import runtime_table

    report = runtime_table(collect_runs(auto_cfg.paths.runs)[0])  # Table 5 says which implementation ran
    assert list(report.display["impl"]) == [choice.label]


def test_a_resumed_run_keeps_the_choice_without_tuning_again(make_cfg, train_interrupted, monkeypatch):
    calls = []
    real = autotune.tune

    def counting(methods, *args, **kwargs):
        calls.append(len(methods))
        return real(methods, *args, **kwargs)

    monkeypatch.setattr(autotune, "tune", counting)
    summary = train_interrupted(make_cfg(*DIGITS), in_epoch=2)
    assert calls == [4]  # loop, vmap, vmap in chunks, vmap_ascent: measured once, when the run started
    assert summary["derived"]["method.impl"] in ("loop", "vmap", "vmap(chunk_size=2)", "vmap_ascent")
