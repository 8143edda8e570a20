"""last.pt and previous.pt: a complete checkpoint is on disk at every moment.

Saving writes a temporary file (fsync), moves last.pt to previous.pt, then renames the temporary
file to last.pt. A process killed at any point leaves last.pt, or previous.pt, or both, complete.
Loading tries last.pt, then previous.pt; a truncated or corrupt file is named in one log line and
skipped. A checkpoint written by another config (model, method, data, ...) is refused unless
resume=force.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from msam.errors import RunError
from msam.runs import identity, write_atomic

LAST, PREVIOUS = "last.pt", "previous.pt"
REQUIRED_KEYS = ("config", "epoch", "step", "model", "optimizer", "scheduler")
log = logging.getLogger("msam")


def save(run_dir: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(run_dir / LAST, buffer.getvalue(), keep_previous=run_dir / PREVIOUS)


def read(path: Path) -> dict:
    """A checkpoint's state, or ValueError naming what is wrong with the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a damaged file can fail in any layer (zip, pickle, storage)
        raise ValueError(f"{error.__class__.__name__}: {str(error).splitlines()[0][:120]}") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return state


def load(run_dir: Path) -> tuple[dict | None, Path | None]:
    """The newest readable checkpoint of a run directory and its path; (None, None) if there is none."""
    damaged = []
    for name in (LAST, PREVIOUS):
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            return read(path), path
        except ValueError as error:
            log.warning(f"checkpoint {path} is unreadable ({error}); trying the previous one")
            damaged.append(name)
    if damaged:
        raise RunError(f"no readable checkpoint in {run_dir} ({' and '.join(damaged)} damaged): "
                       "resume=never starts the run over")
    return None, None


def flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_differences(saved: dict, cfg: DictConfig) -> list[str]:
    """The dotted keys where a checkpoint's config and this one differ in what is trained."""
    ignored = tuple(cfg.get("not_identity") or ())  # this config's list for both (older checkpoints have none)
    ours, theirs = flatten(identity(cfg)), flatten(identity(OmegaConf.create(saved), ignored=ignored))
    return sorted(key for key in ours.keys() | theirs.keys() if ours.get(key, "<absent>") != theirs.get(key, "<absent>"))


def check_same_config(state: dict, path: Path, cfg: DictConfig) -> None:
    differences = config_differences(state["config"], cfg)
    if differences and cfg.resume != "force":
        shown = ", ".join(differences[:6]) + (", ..." if len(differences) > 6 else "")
        raise RunError(f"{path} was written by another config ({shown} differ): resume=force uses it anyway, "
                       "resume=never starts over")
    if differences:
        log.warning(f"resume=force: resuming {path} although {', '.join(differences)} differ")


def check_same_data(state: dict, path: Path, fingerprint: str | None, force: bool) -> None:
    """A data set of the user's own must return the same data at every call: a resumed run (or a
    measurement) on other data would silently mix two data sets."""
    recorded = state.get("data_fingerprint")
    if recorded is None or fingerprint is None or recorded == fingerprint:
        return
    message = (f"dataset._target_ returned other data than {path} was trained on (fingerprint {fingerprint}, "
               f"recorded {recorded}): a data set of your own must return the same data at every call")
    if not force:
        raise RunError(message + "; resume=force goes on anyway")
    log.warning(f"resume=force: {message}")
