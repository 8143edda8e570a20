"""The wandb mirror in offline mode: config, metrics, summary and sharpness reach wandb's files;
a wandb failure never stops a run."""

import json
import logging
import sys
import time
import types

import pytest

from msam import engine, runs
from msam.sharpness import measure_run
from msam.sharpness.run import default_settings


@pytest.fixture(autouse=True)
def quiet_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")


def offline_runs(run_dir):
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def wandb_records(path):
    """The protobuf records of an offline .wandb file (LevelDB log format: 32 KiB blocks of
    chunks with a 7-byte header; the file opens with a 7-byte W&B header)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, position, records, pending = path.read_bytes(), 7, [], b""
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # block trailer padding
            position += 32768 - position % 32768
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a FULL record or the LAST chunk of one
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def finished_records(offline_dir, timeout_s=120):
    """The records of a finished offline run. wandb's service writes the file on its own
    schedule, so a loaded machine can show it before its last blocks land: wait for the exit record."""
    deadline = time.monotonic() + timeout_s
    while True:
        files = list(offline_dir.glob("*.wandb"))
        records = wandb_records(files[0]) if files else []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            kinds = [r.WhichOneof("record_type") for r in records]
            assert "exit" in kinds, f"{offline_dir} has no exit record after {timeout_s} s: {kinds}"
            return records
        time.sleep(0.5)


def item_key(item):
    return item.key or "/".join(item.nested_key)


def logged(offline_dir):
    """What a run sent: its config, its history rows and its summary, as Python values."""
    config, history, summary = {}, [], {}
    for record in finished_records(offline_dir):
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):  # the config comes with the run record, updates as config records
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({item_key(item): json.loads(item.value_json) for item in updates})
        elif kind == "history":
            history.append({item_key(item): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == "summary":
            summary.update({item_key(item): json.loads(item.value_json)
                            for item in record.summary.update})
    return config, history, summary


def test_offline_run_holds_config_metrics_summary_and_sharpness(make_cfg):
    cfg = make_cfg("method=msam", "method.m=4", "logger=wandb", "logger.mode=offline")
    summary = engine.train(cfg)
    run_dir = runs.run_dir_for(cfg)
    (offline,) = offline_runs(run_dir)
    assert offline.name.endswith(run_dir.name)  # the wandb id is the run directory's name
    config, history, sent_summary = logged(offline)
    assert config["method"] | {"m": 4, "name": "msam"} == config["method"] and config["seed"] == 0
    assert config["method"]["rho"] == 0.05 and config["dataset"]["name"] == "digits"
    rows = runs.read_metrics(run_dir / "metrics.jsonl")
    epochs = [h for h in history if "test_acc" in h]
    assert [h["test_acc"] for h in epochs] == [r["test_acc"] for r in rows]
    assert [h["_step"] for h in epochs] == [r["step"] for r in rows]
    assert sent_summary["test_acc"] == summary["test_acc"] and sent_summary["epochs_completed"] == 2

    measure_run(run_dir, default_settings(max_iter=10, tol=1e-2, trace_probes=2, max_samples=64))
    sharpness = json.loads((run_dir / "sharpness.json").read_text())
    assert any(logged(o)[2].get("lambda_max") == sharpness["lambda_max"] for o in offline_runs(run_dir))

    measure_run(run_dir, default_settings(measures=["topk", "sharpness"], topk={"k": 2}, max_iter=20, tol=1e-2,
                                          max_samples=64, sharpness={"batch_sizes": ["full"], "ascent_steps": 1,
                                                                     "average_draws": 1}))
    sharpness = json.loads((run_dir / "sharpness.json").read_text())
    worst = next(r["mean"] for r in sharpness["sharpness"]["rows"] if r["kind"] == "worst" and r["scale"] == "plain")
    summaries = [logged(o)[2] for o in offline_runs(run_dir)]
    assert any(s.get("sharpness/lambda_2") == sharpness["topk"]["eigenvalues"][1] for s in summaries)
    assert any(s.get("sharpness/worst_plain_nfull") == worst for s in summaries)


def test_group_and_tags_let_a_dashboard_compare_methods(make_cfg, monkeypatch):
    seen = {}

    class FakeRun:
        summary = {}

        def log(self, row, step):
            seen.setdefault("steps", []).append(step)

        def finish(self):
            seen["finished"] = True

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: seen.update(kw) or FakeRun()))
    engine.train(make_cfg("method=sam", "logger=wandb", "seed=3"))
    assert seen["group"] == "digits_small_cnn" and seen["job_type"] == "sam"
    assert seen["tags"] == ["sam", "m=1", "rho=0.05", "seed=3"] and seen["resume"] == "allow"
    assert seen["steps"] == [22, 44] and seen["finished"]


def test_a_wandb_failure_does_not_stop_training(make_cfg, monkeypatch, caplog):
    def broken_init(**kwargs):
        raise RuntimeError("network is down")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=broken_init))
    with caplog.at_level(logging.WARNING, logger="msam"):
        summary = engine.train(make_cfg("method=vanilla", "logger=wandb", "epochs=1"))
    assert summary["status"] == "finished"
    assert any("wandb init failed" in r.getMessage() and "continuing without wandb" in r.getMessage()
               for r in caplog.records)
