"""The training loop, top to bottom: train() sets a run up and runs its epochs; train_epoch() runs
the steps of one epoch; train_step() is one optimizer step (method -> BatchNorm average ->
unscale -> non-finite check -> clip -> optimizer). What goes into the run directory is in
run_state.py, evaluation in evaluation.py, the run directory itself in runs.py."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from msam import allocator, checkpoints, dist, runs
from msam import precision as precisions
from msam.config import check_config, derived_values, smallest_micro_batch
from msam.data import build_data
from msam.data.bundle import DataBundle
from msam.errors import ConfigError, RunError
from msam.evaluation import evaluate
from msam.guard import NonFiniteGuard
from msam.method_schedule import MethodSchedule
from msam.methods.compiled import CompileCounts, compile_counts, is_compiled
from msam.methods.params import trainable_parameters
from msam.mirror import NoMirror, build_mirror
from msam.models import build_model
from msam.models.built import check_built_model
from msam.optim import build_optimizer
from msam.precision import Precision
from msam.preemption import Preemption
from msam.run_state import EpochTotals, checkpoint_state, epoch_row, mark_failed, restore_state, summarise
from msam.schedule import build_schedule
from msam.targets import built_record, has_target

log = logging.getLogger("msam")


def pick_device(name: str) -> torch.device:
    """auto: a GPU if there is one. A GPU that is not there is one line, not an error deep in torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device={name} but this machine has no usable GPU (no driver or none visible; a "
                              "SLURM job without --gres?); use device=cpu or device=auto")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device={name} but only {count} GPU(s) are visible (cuda:0..cuda:{count - 1})")
    return device


def per_sample_cross_entropy(label_smoothing: float):
    return functools.partial(torch.nn.functional.cross_entropy, reduction="none",
                             label_smoothing=label_smoothing)


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
class Training:
    """What one process's loop works with, built once per run by setup()."""

    cfg: DictConfig
    ctx: dist.DistContext
    data: DataBundle
    model: torch.nn.Module  # DDP-wrapped under torchrun
    params: list[torch.nn.Parameter]  # the trainable ones
    methods: MethodSchedule
    loss_fn: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    precision: Precision
    guard: NonFiniteGuard | None  # nonfinite=off: none
    preemption: Preemption
    progress: Progress

    @property
    def device(self) -> torch.device:
        return self.ctx.device


def stop_requested(preemption: Preemption, ctx: dist.DistContext, step: int, check_every: int) -> bool:
    """Single process: the flag. Several: any process's flag, agreed on every check_every steps."""
    if not ctx.enabled:
        return preemption.requested
    if step % check_every != 0:
        return False
    return dist.any_flag(preemption.requested, ctx)


def train_step(t: Training, method, inputs, targets, step: int):
    """One optimizer step on one batch: (loss, logits, what was non-finite or None). A step that
    nonfinite=skip refuses leaves the weights, BatchNorm buffers and optimizer as they were."""
    cfg, params = t.cfg, t.params
    if cfg.channels_last and isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    if t.guard is not None:
        t.guard.before_step()
    # No autocast region here: the method opens one per forward pass (msam.precision).
    loss, logits = method(t.model, t.loss_fn, (inputs, targets))
    dist.average_batchnorm(t.model, t.ctx)
    t.precision.unscale_optimizer_(t.optimizer)
    bad = None
    if t.guard is not None and cfg.nonfinite == "skip":
        bad = t.guard.non_finite_now(loss, params)
    elif t.guard is not None:
        t.guard.record(loss, params, step + 1)
    if bad is None:
        if cfg.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm, foreach=True)
        t.precision.step(t.optimizer)
    else:
        t.guard.undo()
        t.precision.skip_step()
    t.scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)
    return loss, logits, bad


def train_epoch(t: Training, epoch: int, method, step: int, totals: EpochTotals):
    """Train from batch totals.batches of the epoch to its end, to a stop request, or to a due
    periodic checkpoint. Returns (totals, step, reason) with reason None at the epoch's end,
    "preempted" or "checkpoint"; totals are summed over the processes."""
    cfg, ctx, device, loader = t.cfg, t.ctx, t.device, t.data.train
    t.model.train()
    loss_sum = torch.tensor(totals.loss_sum if ctx.is_main else 0.0, device=device, dtype=torch.float64)
    correct = torch.tensor(totals.correct if ctx.is_main else 0.0, device=device, dtype=torch.float64)
    seen = totals.seen if ctx.is_main else 0.0
    batches, skipped, reason = totals.batches, totals.skipped, None
    epoch_start_step = step - totals.batches
    compiling = compile_counts(method)  # compile.step: what compiling costs is kept apart from the seconds
    start = time.perf_counter()
    for inputs, targets in loader.epoch(epoch, start_batch=totals.batches):
        loss, logits, bad = train_step(t, method, inputs, targets, step)
        step += 1
        batches += 1
        if bad is None:
            loss_sum += loss.double() * targets.shape[0]
            correct += (logits.argmax(1) == targets).sum()
            seen += targets.shape[0]
        else:
            skipped += 1
            log.warning(f"skipped step {step} (epoch {epoch + 1}, batch {batches}): non-finite {bad} "
                        f"({skipped} skipped this epoch)")
        if t.guard is not None and cfg.nonfinite == "stop" and step % cfg.nonfinite_check_every == 0:
            t.guard.raise_if_recorded(epoch, epoch_start_step)
        t.progress.maybe_log(epoch, batches, step, loss_sum, correct, seen, t.scheduler.get_last_lr()[0])
        if batches < len(loader):
            if stop_requested(t.preemption, ctx, step, cfg.preemption_check_every):
                reason = "preempted"
                break
            if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
                reason = "checkpoint"
                break
    if t.guard is not None and cfg.nonfinite == "stop":
        t.guard.raise_if_recorded(epoch, epoch_start_step)  # nothing non-finite is ever saved
    sums = torch.stack([loss_sum, correct, torch.tensor(seen, device=device, dtype=torch.float64)])
    dist.all_reduce_sum([sums], ctx)
    loss_total, correct_total, seen_total = sums.tolist()
    compiled = compile_counts(method).minus(compiling)
    return EpochTotals(loss_total, correct_total, seen_total,
                       totals.seconds + time.perf_counter() - start - compiled.seconds, batches, skipped,
                       compiled=(totals.compiled or CompileCounts()).plus(compiled) if is_compiled(method) else None), step, reason


def train(cfg: DictConfig) -> dict:
    """Train one run to completion (or continue it) and return its summary. Under torchrun every
    process calls this; only the first writes the run directory and logs."""
    check_config(cfg)
    allocator.apply(cfg.cpu_allocator)
    precisions.set_tf32(cfg.tf32)
    ctx = dist.init_distributed(pick_device(cfg.device), cfg.dist_backend)
    try:
        process_split = dist.per_process(cfg, ctx)
        if not ctx.is_main:
            log.setLevel(logging.WARNING)
        run_dir = runs.run_dir_for(cfg)
        previous = runs.read_json(run_dir / "summary.json")
        if cfg.resume == "auto" and previous and previous["status"] == "finished":
            log.info(f"already finished: {run_dir} (test acc {previous['test_acc']:.2f}%)")
            return previous
        with runs.opened(run_dir, ctx.is_main):
            return train_run(cfg, ctx, run_dir, process_split)
    finally:
        dist.shutdown(ctx)


def setup(cfg: DictConfig, ctx: dist.DistContext, run_dir, process_split: dict):
    """Data, model, methods, optimizer and schedule, restored from the run directory's checkpoint
    if it has one: (Training, derived values, completed epochs, step, the epoch in progress)."""
    device = ctx.device
    torch.manual_seed(cfg.seed)
    data = build_data(cfg.dataset, cfg.batch_size, cfg.eval_batch_size, cfg.seed, device, cfg.get("smoke"))
    data.shard(ctx.rank, ctx.world_size)
    derived = derived_values(cfg, data.train_size, len(data.train))
    if ctx.enabled:
        derived.update(process_split)
    model = build_model(cfg.model, data.num_classes, data.input_shape, cfg.get("smoke")).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if has_target(cfg.model):
        check_built_model(model, cfg.model.name, data.num_classes, data.input_shape, smallest_micro_batch(cfg), device,
                          cfg.channels_last)
    if cfg.compile.enabled:
        model.compile(backend=cfg.compile.backend, mode=cfg.compile.mode, dynamic=cfg.compile.dynamic)
    precision = Precision.from_config(cfg, device)
    methods = MethodSchedule(cfg, derived, ctx.world_size, precision)
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_schedule(cfg.schedule, optimizer, derived["total_steps"])
    loss_fn = per_sample_cross_entropy(cfg.label_smoothing)

    epoch, step, in_progress = 0, 0, EpochTotals()
    state, path = checkpoints.load(run_dir) if cfg.resume != "never" else (None, None)
    if state is not None:
        checkpoints.check_same_config(state, path, cfg)
        checkpoints.check_same_data(state, path, data.fingerprint, cfg.resume == "force")
        epoch, step, in_progress = restore_state(state, model, optimizer, scheduler)
        precision.load_state_dict(state.get("grad_scaler", {}))
        log.info(f"resuming {run_dir} from {path.name} at epoch {epoch + 1}, batch {in_progress.batches} "
                 f"(step {step})")
    model = dist.wrap(model, ctx, device)
    methods.build(model, loss_fn, data.train, state, ctx)
    derived.update(methods.derived())
    guard = None
    if cfg.nonfinite != "off":  # under fp16 the scaler owns overflowing directions; the guard the loss
        guard = NonFiniteGuard(cfg.nonfinite, model, ctx, device, watch_direction=precision.scaler is None)
    t = Training(cfg, ctx, data, model, trainable_parameters(model), methods, loss_fn, optimizer, scheduler, precision, guard, Preemption(),
                 Progress(cfg, derived["steps_per_epoch"], step))
    return t, derived, epoch, step, in_progress


def train_run(cfg: DictConfig, ctx: dist.DistContext, run_dir, process_split: dict) -> dict:
    """The epochs of one run in its (locked) run directory: train, evaluate, write, checkpoint."""
    t, derived, epoch, step, in_progress = setup(cfg, ctx, run_dir, process_split)
    rows = [r for r in runs.read_metrics(run_dir / "metrics.jsonl") if r["epoch"] <= epoch]
    provenance = {**runs.provenance(t.device), "precision": precisions.settings(cfg), "built": built_record(cfg.model, cfg.dataset, t.model, t.data)}
    mirror = NoMirror()
    if ctx.is_main:
        runs.rewrite_metrics(run_dir / "metrics.jsonl", rows)
        runs.write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
        runs.write_json(run_dir / "provenance.json", provenance)
        mirror = build_mirror(cfg.logger, run_dir.name, OmegaConf.to_container(cfg, resolve=True), str(run_dir))
    log.info(f"run {run_dir}: {cfg.method.name} m={cfg.method.m} rho={cfg.method.rho} on {provenance['device']}")
    log.info("derived: " + ", ".join(f"{k}={v}" for k, v in derived.items()))

    def save(epochs_done: int, unfinished: EpochTotals | None) -> None:
        if ctx.is_main:
            checkpoints.save(run_dir, checkpoint_state(cfg, t.model, t.optimizer, t.scheduler, epochs_done, step,
                                                       unfinished, t.precision, t.methods.record(),
                                                       t.data.fingerprint))

    t.preemption.install()
    try:
        while epoch < cfg.epochs:
            method = t.methods.for_epoch(epoch, step)
            in_progress, step, reason = train_epoch(t, epoch, method, step, in_progress)
            if reason is not None:  # mid-epoch: a periodic checkpoint or a stop request
                save(epoch, in_progress)
                if reason == "preempted":
                    t.preemption.hand_over(f"epoch {epoch + 1}, batch {in_progress.batches} (step {step})")
                continue
            epoch += 1
            row = {**epoch_row(epoch, step, method.name, t.scheduler.get_last_lr()[0], in_progress),
                   **evaluate(t.model, t.data.test, t.device, t.precision, ctx, t.data.num_classes,
                              tuple(cfg.dataset.get("metrics") or ()))}
            in_progress = EpochTotals()
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
        t.preemption.uninstall()  # also when training raises: no stale handler
    summary = summarise(cfg, "finished", rows, derived, provenance, run_dir)
    if ctx.is_main:
        runs.write_json(run_dir / "summary.json", summary)
        mirror.summary({k: v for k, v in summary.items() if k not in ("derived", "provenance")})
        mirror.finish()
    return summary
