"""OmegaConf resolvers the config tree uses, registered when msam is imported."""

from __future__ import annotations

from omegaconf import OmegaConf

# The smoke overlay keeps mSAM's micro-batching (m = 2) but not its full m: one sample per
# micro-batch at the paper's m would cost minutes per experiment on a CPU.
SMOKE_M = {"msam": 2}


def smoke_m(method_name: str) -> int:
    return SMOKE_M.get(method_name, 1)


def register() -> None:
    if not OmegaConf.has_resolver("msam.smoke_m"):
        OmegaConf.register_new_resolver("msam.smoke_m", smoke_m)
