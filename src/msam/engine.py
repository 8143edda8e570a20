"""The training loop: batch -> method -> clip -> optimizer -> schedule, per epoch evaluate,
log a metrics line and checkpoint. Resumes from the run directory's last.pt."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict, dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from msam import allocator, checkpoints, dist, runs
from msam import precision as precisions
from msam.config import check_config, derived_values
from msam.data import build_data
from msam.errors import RunError
from msam.guard import NonFiniteGuard
from msam.lock import RunLock
from msam.method_schedule import MethodSchedule
from msam.methods import method_label
from msam.methods.base import model_output
from msam.methods.params import trainable_parameters
from msam.metrics import confusion_update, from_confusion
from msam.mirror import NoMirror, build_mirror
from msam.models import build_model
from msam.optim import build_optimizer
from msam.precision import Precision
from msam.preemption import Preemption
from msam.schedule import build_schedule

log = logging.getLogger("msam")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def per_sample_cross_entropy(label_smoothing: float):
    return functools.partial(torch.nn.functional.cross_entropy, reduction="none",
                             label_smoothing=label_smoothing)


@torch.no_grad()
def evaluate(model, loader, device, precision: Precision, ctx: dist.DistContext, num_classes: int, metrics=()) -> dict:
    """Test loss (plain cross-entropy, no label smoothing), accuracy and the data set's extra
    metrics (msam.metrics, from a confusion matrix), in eval mode, summed over the processes."""
    model.eval()
    totals = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, correct, count
    confusion = torch.zeros(num_classes, num_classes, device=device, dtype=torch.float64)
    for inputs, targets in loader.epoch(0):
        with precision.forward():
            logits = model_output(model, inputs)
        totals[0] += torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
        totals[1] += (logits.argmax(1) == targets).sum()
        totals[2] += targets.shape[0]
        if metrics:
            confusion_update(confusion, targets, logits.argmax(1))
    model.train()
    dist.all_reduce_sum([totals, confusion] if metrics else [totals], ctx)
    loss_sum, correct, count = totals.tolist()
    return {"test_loss": loss_sum / count, "test_acc": 100.0 * correct / count, **from_confusion(confusion, metrics)}


class Progress:
    """One log line every log_every_steps steps with loss, accuracy, learning rate and ETA."""

    def __init__(self, cfg: DictConfig, steps_per_epoch: int, start_step: int) -> None:
        self.every, self.epochs, self.steps_per_epoch = cfg.log_every_steps, cfg.epochs, steps_per_epoch
        self.total = cfg.epochs * steps_per_epoch
        self.start_step, self.start_time = start_step, time.perf_counter()

    def maybe_log(self, epoch, step_in_epoch, global_step, loss_sum, correct, seen, lr) -> None:
        if self.every <= 0 or step_in_epoch % self.every != 0:
            return
        rate = (time.perf_counter() - self.start_time) / max(global_step - self.start_step, 1)
        eta = time.strftime("%H:%M:%S", time.gmtime(rate * (self.total - global_step)))
        log.info(f"epoch {epoch + 1}/{self.epochs} step {step_in_epoch}/{self.steps_per_epoch} "
                 f"loss {loss_sum.item() / seen:.4f} acc {100.0 * correct.item() / seen:.2f}% "
                 f"lr {lr:.4g} eta {eta}")


@dataclass
class EpochTotals:
    """The running sums of the epoch in progress (kept by a checkpoint taken mid-epoch)."""

    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    seconds: float = 0.0
    batches: int = 0
    skipped: int = 0  # steps skipped by nonfinite=skip (the same on every process)


def stop_requested(preemption: Preemption, ctx: dist.DistContext, step: int, check_every: int) -> bool:
    """Single process: the flag. Several: any process's flag, agreed on every check_every steps."""
    if not ctx.enabled:
        return preemption.requested
    if step % check_every != 0:
        return False
    return dist.any_flag(preemption.requested, ctx)


def train_epoch(cfg, epoch, model, method, loss_fn, optimizer, scheduler, loader, device, progress, step, ctx,
                totals: EpochTotals, preemption: Preemption, precision: Precision):
    """Train from batch totals.batches of the epoch to its end, to a stop request, or to a due
    periodic checkpoint. Returns (totals, step, reason) with reason None at the epoch's end,
    "preempted" or "checkpoint"; totals are summed over the processes."""
    model.train()
    params = trainable_parameters(model)
    guard = None
    if cfg.nonfinite != "off":  # under fp16 the scaler owns overflowing directions; the guard the loss
        guard = NonFiniteGuard(cfg.nonfinite, model, ctx, device, watch_direction=precision.scaler is None)
    loss_sum = torch.tensor(totals.loss_sum if ctx.is_main else 0.0, device=device, dtype=torch.float64)
    correct = torch.tensor(totals.correct if ctx.is_main else 0.0, device=device, dtype=torch.float64)
    seen = totals.seen if ctx.is_main else 0.0
    batches, skipped, reason = totals.batches, totals.skipped, None
    epoch_start_step = step - totals.batches
    start = time.perf_counter()
    for inputs, targets in loader.epoch(epoch, start_batch=totals.batches):
        if cfg.channels_last and isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        if guard is not None:
            guard.before_step()
        # No autocast region here: the method opens one per forward pass (msam.precision).
        loss, logits = method(model, loss_fn, (inputs, targets))
        dist.average_batchnorm(model, ctx)
        precision.unscale_optimizer_(optimizer)
        bad = None
        if guard is not None and cfg.nonfinite == "skip":
            bad = guard.non_finite_now(loss, params)
        elif guard is not None:
            guard.record(loss, params, step + 1)
        if bad is None:
            if cfg.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm, foreach=True)
            precision.step(optimizer)
            loss_sum += loss.double() * targets.shape[0]
            correct += (logits.argmax(1) == targets).sum()
            seen += targets.shape[0]
        else:
            guard.undo()
            precision.skip_step()
            skipped += 1
            log.warning(f"skipped step {step + 1} (epoch {epoch + 1}, batch {batches + 1}): non-finite {bad} "
                        f"({skipped} skipped this epoch)")
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        batches += 1
        if guard is not None and cfg.nonfinite == "stop" and step % cfg.nonfinite_check_every == 0:
            guard.raise_if_recorded(epoch, epoch_start_step)
        progress.maybe_log(epoch, batches, step, loss_sum, correct, seen, scheduler.get_last_lr()[0])
        if batches < len(loader):
            if stop_requested(preemption, ctx, step, cfg.preemption_check_every):
                reason = "preempted"
                break
            if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
                reason = "checkpoint"
                break
    if guard is not None and cfg.nonfinite == "stop":
        guard.raise_if_recorded(epoch, epoch_start_step)  # nothing non-finite is ever saved
    sums = torch.stack([loss_sum, correct, torch.tensor(seen, device=device, dtype=torch.float64)])
    dist.all_reduce_sum([sums], ctx)
    loss_total, correct_total, seen_total = sums.tolist()
    return EpochTotals(loss_total, correct_total, seen_total, totals.seconds + time.perf_counter() - start,
                       batches, skipped), step, reason


def epoch_row(epoch: int, step: int, method_name: str, lr: float, totals: EpochTotals) -> dict:
    seen = max(totals.seen, 1.0)  # every step of an epoch skipped: no training loss to report
    return {"epoch": epoch, "step": step, "method": method_name, "lr": lr,
            "train_loss": totals.loss_sum / seen if totals.seen else float("nan"),
            "train_acc": 100.0 * totals.correct / seen, "seconds": totals.seconds,
            **({"skipped_steps": totals.skipped} if totals.skipped else {})}


def checkpoint_state(cfg, model, optimizer, scheduler, epoch: int, step: int,
                     partial: EpochTotals | None = None, precision: Precision | None = None,
                     implementations: dict | None = None) -> dict:
    """Everything a resumed run needs; epoch counts completed epochs, partial the epoch in progress."""
    return {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "epoch": epoch, "step": step, "partial_epoch": asdict(partial or EpochTotals()),
        "model": dist.unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "grad_scaler": precision.state_dict() if precision is not None else {},
        "implementations": implementations or {},  # what ran (impl=auto's choice): a resumed run keeps it
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
        "derived": derived, "provenance": provenance,
    }


def train(cfg: DictConfig) -> dict:
    """Train one run to completion (or continue it) and return its summary. Under torchrun every
    process calls this; only the first writes the run directory and logs."""
    check_config(cfg)
    allocator.apply(cfg.cpu_allocator)
    precisions.set_tf32(cfg.tf32)
    ctx = dist.init_distributed(pick_device(cfg.device), cfg.dist_backend)
    try:
        return train_process(cfg, ctx.device, ctx)
    finally:
        dist.shutdown(ctx)


def train_process(cfg: DictConfig, device: torch.device, ctx: dist.DistContext) -> dict:
    parallel = dist.per_process(cfg, ctx)
    if not ctx.is_main:
        log.setLevel(logging.WARNING)
    run_dir = runs.run_dir_for(cfg)
    previous = runs.read_json(run_dir / "summary.json")
    if cfg.resume == "auto" and previous and previous["status"] == "finished":
        log.info(f"already finished: {run_dir} (test acc {previous['test_acc']:.2f}%)")
        return previous
    lock = RunLock(run_dir)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
        stale = runs.remove_stale_temporaries(run_dir)
        if stale:
            log.info(f"removed unfinished writes of a killed process: {', '.join(stale)}")
    try:
        return train_run(cfg, device, ctx, run_dir, parallel)
    finally:
        lock.release()


def train_run(cfg: DictConfig, device: torch.device, ctx: dist.DistContext, run_dir, parallel: dict) -> dict:
    torch.manual_seed(cfg.seed)
    data = build_data(cfg.dataset, cfg.batch_size, cfg.eval_batch_size, cfg.seed, device, cfg.get("smoke"))
    data.shard(ctx.rank, ctx.world_size)
    derived = derived_values(cfg, data.train_size, len(data.train))
    if ctx.enabled:
        derived.update(parallel)
    model = build_model(cfg.model, data.num_classes, data.input_shape, cfg.get("smoke")).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile.enabled:
        model.compile(backend=cfg.compile.backend, mode=cfg.compile.mode, dynamic=cfg.compile.dynamic)
    precision = Precision.from_config(cfg, device)
    methods = MethodSchedule(cfg, derived, ctx.world_size, precision)
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_schedule(cfg.schedule, optimizer, derived["total_steps"])
    loss_fn = per_sample_cross_entropy(cfg.label_smoothing)

    epoch, step, partial = 0, 0, EpochTotals()
    state, path = checkpoints.load(run_dir) if cfg.resume != "never" else (None, None)
    if state is not None:
        checkpoints.check_same_config(state, path, cfg)
        epoch, step, partial = restore_state(state, model, optimizer, scheduler)
        precision.load_state_dict(state.get("grad_scaler", {}))
        log.info(f"resuming {run_dir} from {path.name} at epoch {epoch + 1}, batch {partial.batches} (step {step})")
    model = dist.wrap(model, ctx, device)
    methods.build(model, loss_fn, data.train, state, ctx)
    derived.update({f"{key}.impl": label for key, label in methods.ran.items()})
    rows = [r for r in runs.read_metrics(run_dir / "metrics.jsonl") if r["epoch"] <= epoch]

    provenance = {**runs.provenance(device), "precision": precisions.settings(cfg)}
    mirror = NoMirror()
    if ctx.is_main:
        runs.rewrite_metrics(run_dir / "metrics.jsonl", rows)
        runs.write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
        runs.write_json(run_dir / "provenance.json", provenance)
        mirror = build_mirror(cfg.logger, run_dir.name, OmegaConf.to_container(cfg, resolve=True), str(run_dir))
    log.info(f"run {run_dir}: {cfg.method.name} m={cfg.method.m} rho={cfg.method.rho} on {provenance['device']}")
    log.info("derived: " + ", ".join(f"{k}={v}" for k, v in derived.items()))

    def save(epoch_done: int, in_progress: EpochTotals | None) -> None:
        if ctx.is_main:
            checkpoints.save(run_dir, checkpoint_state(cfg, model, optimizer, scheduler, epoch_done, step,
                                                       in_progress, precision, methods.ran))

    progress = Progress(cfg, derived["steps_per_epoch"], step)
    preemption = Preemption().install()
    try:
        while epoch < cfg.epochs:
            method = methods.for_epoch(epoch, step)
            partial, step, reason = train_epoch(cfg, epoch, model, method, loss_fn, optimizer, scheduler,
                                                data.train, device, progress, step, ctx, partial, preemption,
                                                precision)
            if reason is not None:  # mid-epoch: a periodic checkpoint or a stop request
                save(epoch, partial)
                if reason == "preempted":
                    preemption.hand_over(f"epoch {epoch + 1}, batch {partial.batches} (step {step})")
                continue
            epoch += 1
            row = {**epoch_row(epoch, step, method.name, scheduler.get_last_lr()[0], partial),
                   **evaluate(model, data.test, device, precision, ctx, data.num_classes,
                              tuple(cfg.dataset.get("metrics") or ()))}
            partial = EpochTotals()
            rows.append(row)
            if ctx.is_main:
                # Metrics first: a kill between the two leaves a row past the checkpoint, which the
                # resumed run drops and recomputes, rather than a checkpoint with a row missing.
                runs.append_metrics(run_dir / "metrics.jsonl", row)
                save(epoch, None)
                runs.write_json(run_dir / "summary.json", summarise(cfg, "running", rows, derived, provenance, run_dir))
                mirror.log(row, step)
            log.info(f"epoch {epoch}/{cfg.epochs} train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% | "
                     f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.2f}%"
                     + "".join(f" {key[5:]} {row[key]:.2f}" for key in ("test_mcc", "test_f1") if key in row)
                     + f" | {row['seconds']:.1f}s")
    except RunError as error:
        if ctx.is_main:
            mark_failed(run_dir, summarise(cfg, "failed", rows, derived, provenance, run_dir), error)
        raise
    finally:
        preemption.uninstall()  # also when training raises: no stale handler
    summary = summarise(cfg, "finished", rows, derived, provenance, run_dir)
    if ctx.is_main:
        runs.write_json(run_dir / "summary.json", summary)
        mirror.summary({k: v for k, v in summary.items() if k not in ("derived", "provenance")})
        mirror.finish()
    return summary


def mark_failed(run_dir, summary: dict, error: RunError) -> None:
    """summary.json says why the run stopped; a disk too full for that leaves the old one."""
    try:
        runs.write_json(run_dir / "summary.json", {**summary, "error": str(error)})
    except RunError:
        log.warning(f"could not mark {run_dir} failed in summary.json")
