"""Compose the real config tree with Hydra's compose API, shrunk for CPU tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

# The smoke overlay: tiny, fast, CPU, no dashboard. method.impl pinned to the loop: with impl=auto
# two runs of one config may time the implementations differently and take different ones (equal
# directions, not equal bits), and many tests compare separately started runs bit for bit; the
# tests of auto itself ask for it (tests/test_autotune.py).
SMOKE = ["epochs=2", "device=cpu", "log_every_steps=0", "logger=none", "++method.impl=loop"]


@pytest.fixture
def make_cfg(tmp_path):
    """make_cfg(*overrides) -> a composed config whose runs go under tmp_path/runs."""

    def _make(*overrides: str, smoke: bool = True) -> DictConfig:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[*(SMOKE if smoke else []), *overrides])
        with open_dict(cfg):
            cfg.paths.runs = str(tmp_path / "runs")
            cfg.paths.data = str(tmp_path / "data")
        return cfg

    return _make


@pytest.fixture
def train_interrupted(monkeypatch):
    """train_interrupted(cfg, in_epoch): train cfg, die (KeyboardInterrupt) when epoch number
    in_epoch starts, then run the same config again, which resumes from last.pt."""
    from msam import engine

    def _run(cfg, in_epoch: int) -> dict:
        real, calls = engine.train_epoch, {"n": 0}

        def dies(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == in_epoch:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(engine, "train_epoch", dies)
        with pytest.raises(KeyboardInterrupt):
            engine.train(cfg)
        monkeypatch.setattr(engine, "train_epoch", real)
        return engine.train(cfg)

    return _run


@pytest.fixture
def run_cli(monkeypatch):
    """A command-line tool's `main` run in this process on the given arguments: its exit code."""
    def run(main, *args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["msam", *args])
        try:
            main()
        except SystemExit as exit_:
            return 0 if exit_.code is None else exit_.code
        return 0
    return run
