"""Collect what scripts/gpu_check.sh measured into results/bench/gpu_<device>.json and .md:
the GPU test outcome, the short training runs (seconds per epoch, loss) and msam-bench's rows."""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch
import yaml

from msam.bench import markdown as bench_markdown
from msam.runs import package_versions


def junit_outcome(report: Path) -> dict:
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    failed = [case.get("name") for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    return {**counts, "failed_tests": failed, "seconds": float(suite.get("time", 0))}


def test_outcome(work: Path) -> dict:
    """The GPU tests' counts over every phase's junit report; a phase stopped by its time limit
    has none and is named, with the last lines of its log."""
    outcome = {"ran": False, "tests": 0, "failures": 0, "errors": 0, "skipped": 0, "failed_tests": [],
               "seconds": 0.0, "unfinished": []}
    for log in sorted(work.glob("tests*.log")):
        report = log.with_suffix(".xml")
        if not report.is_file():
            outcome["unfinished"].append({"phase": log.stem, "log_tail": log.read_text()[-1500:]})
            continue
        phase = junit_outcome(report)
        outcome["ran"] = True
        for key in ("tests", "failures", "errors", "skipped", "seconds"):
            outcome[key] += phase[key]
        outcome["failed_tests"] += phase["failed_tests"]
    outcome["passed"] = outcome["tests"] - outcome["failures"] - outcome["errors"] - outcome["skipped"]
    return outcome


def training_rows(work: Path) -> list[dict]:
    rows = []
    for summary_path in sorted((work / "runs").glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        config = yaml.safe_load((summary_path.parent / "config.yaml").read_text())
        rows.append({"method": summary["method"], "m": summary["m"], "impl": config["method"].get("impl", "-"),
                     "status": summary["status"], "epochs": summary["epochs_completed"],
                     "seconds_per_epoch": summary["seconds_per_epoch"], "train_loss": summary["train_loss"],
                     "test_acc": summary["test_acc"], "precision": config["precision"]})
    return rows


def markdown(payload: dict) -> str:
    tests = payload["tests"]
    lines = [f"# GPU check: {payload['device_name']}", "",
             f"`bash scripts/gpu_check.sh` ({payload['seconds']} s in all); torch {payload['versions']['torch']}, "
             f"CUDA {payload['cuda']}", "", "## GPU tests (`pytest -m gpu tests/gpu`)", ""]
    lines.append(f"{tests['passed']} passed, {tests['failures'] + tests['errors']} failed, "
                 f"{tests['skipped']} skipped ({tests['seconds']:.0f} s)")
    lines += [f"- failed: `{name}`" for name in tests["failed_tests"]]
    lines += [f"- `{u['phase']}` did not finish within its time limit" for u in tests["unfinished"]]
    lines += ["", "## Short bf16 training, ResNet-18 on synthetic 32x32 data, B = 128, 2 epochs", "",
              "| method | m | impl | s / epoch | train loss | status |", "| --- | --- | --- | --- | --- | --- |"]
    for r in payload["training"]:
        seconds = "—" if r["seconds_per_epoch"] is None else f"{r['seconds_per_epoch']:.2f}"
        loss = "—" if r["train_loss"] is None else f"{r['train_loss']:.4f}"
        lines.append(f"| {r['method']} | {r['m']} | {r['impl']} | {seconds} | {loss} | {r['status']} |")
    lines += ["", "## msam-bench", ""]
    if payload["bench"]["rows"]:
        lines.append(bench_markdown(payload["bench"]["rows"], _BenchName(payload["bench"])).split("\n", 2)[2])
    else:
        lines.append("no rows: the bench did not finish a model within its limit")
    return "\n".join(lines) + "\n"


class _BenchName:
    """What msam.bench.markdown reads of its config."""

    def __init__(self, bench: dict) -> None:
        config = bench.get("config", {})
        self.name, self.repeats, self.warmup = config.get("name", "?"), config.get("repeats", "?"), config.get("warmup", "?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=int, required=True)
    args = parser.parse_args()
    bench_files = sorted(args.work.glob("gpu_bench_*.json"))
    parts = [json.loads(path.read_text()) for path in bench_files]
    bench = {"config": parts[0]["config"] if parts else {}, "configs": [part["config"] for part in parts],
             "rows": [row for part in parts for row in part["rows"]]}
    payload = {"device": args.device, "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "?",
               "cuda": torch.version.cuda, "versions": package_versions(), "seconds": args.seconds,
               "tests": test_outcome(args.work), "training": training_rows(args.work), "bench": bench}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"gpu_{args.device}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / f"gpu_{args.device}.md").write_text(markdown(payload))


if __name__ == "__main__":
    main()
