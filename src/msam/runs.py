"""Run directories: named by the config alone, written atomically, resumable.

A run directory holds config.yaml (resolved), provenance.json (git commit, versions, device,
command), metrics.jsonl (one line per epoch), summary.json and last.pt. Every file is
written to a temporary name in the same directory, fsynced and renamed, so a reader never
sees half a file.
"""

from __future__ import annotations

import hashlib
import logging
import json
import os
import platform
import socket
import subprocess
import tempfile
import sys
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from msam import paths
from msam.errors import ConfigError, RunError
from msam.lock import RunLock
from msam.methods import method_label

log = logging.getLogger("msam")
TMP_PREFIX = "."

def identity(cfg: DictConfig, also_drop: tuple[str, ...] = (), ignored: tuple[str, ...] | None = None) -> dict:
    """The config without the keys that do not change what is trained: cfg.not_identity (conf/train.yaml,
    or `ignored` when comparing another config by this one's list), the list itself, and also_drop."""
    container = OmegaConf.to_container(cfg, resolve=True)
    if ignored is None:
        ignored = tuple(container.get("not_identity") or ())
    for dotted in ("not_identity", *ignored, *also_drop):
        *parents, leaf = dotted.split(".")
        node = container
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return container


def config_hash(cfg: DictConfig, also_drop: tuple[str, ...] = ()) -> str:
    text = json.dumps(identity(cfg, also_drop), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def seed_group(cfg: DictConfig) -> str:
    """Runs that differ only in their seed share this key: reports average over it."""
    return config_hash(cfg, also_drop=("seed",))


def format_number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_name(cfg: DictConfig) -> str:
    """Readable prefix (what a person looks for) plus a hash of everything that matters."""
    method = cfg.method
    switch = ""
    if cfg.switch.then is not None:
        switch = f"_to_{method_label(cfg.switch.then)}_at{format_number(cfg.switch.fraction)}"
    return (f"{cfg.dataset.name}_{cfg.model.name}_{method_label(method)}_m{method.m}_rho{format_number(method.rho)}"
            f"{switch}_s{cfg.seed}_{config_hash(cfg)}")


def run_dir_for(cfg: DictConfig) -> Path:
    return Path(cfg.paths.runs) / run_name(cfg)


def write_atomic(path: Path, data: bytes, keep_previous: Path | None = None) -> None:
    """Write to a temporary file in the same directory, fsync, rename: a reader (or a process
    killed mid-write) sees the old file or the new one, never half of one. With keep_previous, the
    old file is moved there just before the rename. A failed write (a full disk) removes the
    temporary file and raises RunError; the old file is untouched."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise RunError(f"could not write {path}: {error.strerror or error}") from None


def remove_stale_temporaries(run_dir: Path) -> list[str]:
    """Temporary files left by a process killed mid-write; their targets are intact."""
    stale = sorted(run_dir.glob(f"{TMP_PREFIX}*.tmp*"))
    for path in stale:
        path.unlink(missing_ok=True)
    return [path.name for path in stale]


def write_json(path: Path, payload: dict) -> None:
    write_atomic(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> dict | None:
    """A run directory's JSON record; None if absent. A damaged one (a copy cut short, an edit) is one line."""
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"{path} is unreadable ({type(error).__name__}: {error}); restore it or remove the run "
                       "directory") from None
    if not isinstance(payload, dict):
        raise RunError(f"{path} is not a run record (a JSON object); restore it or remove the run directory")
    return payload


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rewrite_metrics(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode())


def append_metrics(path: Path, row: dict) -> None:
    """Append by atomic rewrite: metrics files are small (one line per epoch)."""
    rewrite_metrics(path, read_metrics(path) + [row])


def git_commit(source: Path | None = None) -> str | None:
    """The commit of the checkout that holds `source` (msam's own code by default), with -dirty
    for uncommitted changes; "unknown" where git cannot say. msam installed from a wheel has no
    checkout (its version is in package_versions): None, rather than the commit of whatever
    repository the environment happens to sit in."""
    if source is None:
        if not paths.FROM_CHECKOUT:
            return None
        source = paths.PACKAGE_DIR
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("-dirty" if dirty else "")) if commit else "unknown"


def package_versions() -> dict:
    names = ("msam", "torch", "torchvision", "timm", "hydra-core", "omegaconf", "numpy", "scikit-learn")
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)} (x{torch.cuda.device_count()})"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def provenance(device: torch.device) -> dict:
    return {
        "git_commit": git_commit(),
        "versions": package_versions(),
        "device": device_description(device),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv),
    }


def writable_folder(folder: Path, key: str) -> Path:
    """`folder`, created if need be, after writing a file in it: a folder that cannot be created, a
    read-only file system or a missing permission is one ConfigError line (os.access would not tell
    root about a read-only mount's files, nor anyone about a full disk)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".msam-write-check-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise ConfigError(f"cannot write to {folder}: {error.strerror or error}; set {key} to a folder you can "
                          "write") from None
    return folder


@contextmanager
def opened(run_dir: Path, is_main: bool):
    """The run directory for the block: created, locked against a second process, cleared of the
    temporary files a killed process left (rank 0 only; other processes never write it)."""
    lock = RunLock(run_dir)
    if is_main:
        writable_folder(run_dir, "paths.runs (or MSAM_RUNS)")
        lock.acquire()
        stale = remove_stale_temporaries(run_dir)
        if stale:
            log.info(f"removed unfinished writes of a killed process: {', '.join(stale)}")
    try:
        yield run_dir
    finally:
        lock.release()
