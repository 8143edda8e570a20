"""What the training loop keeps in its run directory: the checkpoint's state, the epoch's metrics
row, summary.json. The loop (engine.py) decides when; this file decides what."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
from omegaconf import OmegaConf

from msam import dist, runs
from msam.errors import RunError
from msam.methods import method_label
from msam.methods.compiled import CompileCounts
from msam.precision import Precision

log = logging.getLogger("msam")


@dataclass
class EpochTotals:
    """The running sums of the epoch in progress (kept by a checkpoint taken mid-epoch)."""

    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    seconds: float = 0.0
    batches: int = 0
    skipped: int = 0  # steps skipped by nonfinite=skip (the same on every process)
    compiled: CompileCounts | None = None  # compile.step: what compiling cost this epoch (not in seconds)

    def __post_init__(self) -> None:
        if isinstance(self.compiled, dict):  # from a checkpoint
            self.compiled = CompileCounts(**self.compiled)


def checkpoint_state(cfg, model, optimizer, scheduler, epoch: int, step: int,
                     in_progress: EpochTotals | None = None, precision: Precision | None = None,
                     implementations: dict | None = None, data_fingerprint: str | None = None) -> dict:
    """Everything a resumed run needs; epoch counts completed epochs, in_progress the epoch under way."""
    return {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "epoch": epoch, "step": step, "partial_epoch": asdict(in_progress or EpochTotals()),
        "model": dist.unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "grad_scaler": precision.state_dict() if precision is not None else {},
        "implementations": implementations or {},  # what ran (impl=auto's choice): a resumed run keeps it
        "data_fingerprint": data_fingerprint,  # a data set of the user's own (msam.data.target): checked on resume
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_state(state: dict, model, optimizer, scheduler) -> tuple[int, int, EpochTotals]:
    dist.unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"]:
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return state["epoch"], state["step"], EpochTotals(**state["partial_epoch"])


def epoch_row(epoch: int, step: int, method_name: str, lr: float, totals: EpochTotals) -> dict:
    seen = max(totals.seen, 1.0)  # every step of an epoch skipped: no training loss to report
    return {"epoch": epoch, "step": step, "method": method_name, "lr": lr,
            "train_loss": totals.loss_sum / seen if totals.seen else float("nan"),
            "train_acc": 100.0 * totals.correct / seen, "seconds": totals.seconds,
            **({"skipped_steps": totals.skipped} if totals.skipped else {}),
            **(compile_row(totals.compiled) if totals.compiled is not None else {})}


def compile_row(counts: CompileCounts) -> dict:
    """compile.step: the seconds the epoch's steps spent compiling (kept out of `seconds`), the
    graphs and graph breaks of each process's first step, and the frames compiled again later."""
    return {"compile_seconds": counts.seconds, "compile_graphs": counts.graphs, "compile_breaks": counts.breaks,
            "recompiles": counts.recompiles}


def compile_summary(rows: list[dict], derived: dict) -> dict:
    """What compiling cost the whole run: in its steps (every epoch row) and in impl=auto's tuning
    (compiled candidates timed on the first batch). Empty for a run that compiled no step."""
    tuning = derived.get("compile.tuning_seconds", 0.0)
    compiled = [r for r in rows if "compile_seconds" in r]
    if not compiled and not tuning:
        return {}
    training = sum(r["compile_seconds"] for r in compiled)
    return {"compile_seconds": training + tuning,
            "compile": {"seconds_in_steps": training, "seconds_in_tuning": tuning,
                        **{key: sum(r[f"compile_{key}"] for r in compiled) for key in ("graphs", "breaks")},
                        "recompiles": sum(r["recompiles"] for r in compiled)}}


def summarise(cfg, status, rows, derived, provenance, run_dir) -> dict:
    last = rows[-1] if rows else {}
    return {
        "status": status, "run_dir": str(run_dir), "dataset": cfg.dataset.name, "model": cfg.model.name,
        "method": method_label(cfg.method), "m": cfg.method.m, "rho": cfg.method.rho, "seed": cfg.seed,
        "switch_to": method_label(cfg.switch.then) if cfg.switch.then is not None else None,
        "switch_fraction": cfg.switch.fraction,
        "epochs": cfg.epochs, "epochs_completed": len(rows), "seed_group": runs.seed_group(cfg),
        "test_acc": last.get("test_acc"), "test_loss": last.get("test_loss"),
        **{key: last[key] for key in ("test_mcc", "test_f1") if key in last},
        "train_acc": last.get("train_acc"), "train_loss": last.get("train_loss"),
        "best_test_acc": max((r["test_acc"] for r in rows), default=None),
        "seconds_per_epoch": sum(r["seconds"] for r in rows) / len(rows) if rows else None,
        **compile_summary(rows, derived),
        "derived": derived, "provenance": provenance,
    }


def mark_failed(run_dir, summary: dict, error: RunError) -> None:
    """summary.json says why the run stopped; a disk too full for that leaves the old one."""
    try:
        runs.write_json(run_dir / "summary.json", {**summary, "error": str(error)})
    except RunError:
        log.warning(f"could not mark {run_dir} failed in summary.json")
