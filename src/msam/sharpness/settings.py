"""conf/sharpness.yaml's settings for library use (a module of its own: measures and run both need it)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from msam.paths import CONF_DIR


def default_settings(**overrides) -> DictConfig:
    """conf/sharpness.yaml's settings (without Hydra's keys), with overrides: for library use."""
    settings = OmegaConf.load(CONF_DIR / "sharpness.yaml")
    for key in ("defaults", "hydra"):
        settings.pop(key, None)
    return OmegaConf.merge(settings, overrides)
