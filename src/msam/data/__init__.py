"""Data sets by name, or of the user's own by dataset._target_ (msam.data.target). Each builder returns a
DataBundle; checkers fail fast on missing data."""

from __future__ import annotations

from msam.data.bundle import DataBundle, input_side  # noqa: F401 - input_side is msam.data's
from msam.data.digits import build_digits
from msam.data.glue import TASKS as GLUE_TASKS
from msam.data.glue import build_glue, build_smoke_text, check_glue
from msam.data.synthetic import build_smoke, build_synthetic
from msam.data.target import build_target_data, check_target_data
from msam.errors import ConfigError
from msam.targets import has_target


# CIFAR and ImageNet are read through torchvision, whose import costs seconds at every start of
# a tool: it is imported when one of them is used.
def build_cifar(*args, **kwargs):
    from msam.data.cifar import build_cifar as build
    return build(*args, **kwargs)


def check_cifar(cfg) -> None:
    from msam.data.cifar import check_cifar as check
    check(cfg)


def build_imagenet(*args, **kwargs):
    from msam.data.imagenet import build_imagenet as build
    return build(*args, **kwargs)


def check_imagenet(cfg) -> None:
    from msam.data.imagenet import check_imagenet as check
    check(cfg)


BUILDERS = {
    "digits": build_digits,
    "synthetic": build_synthetic,
    "cifar10": build_cifar,
    "cifar100": build_cifar,
    "imagenet": build_imagenet,
    **{task: build_glue for task in GLUE_TASKS},
}
# The shape of the images on disk: dataset.image_shape describes them (the smoke overlay's synthetic
# stand-in takes the same), it cannot change them.
REAL_SHAPES = {"digits": [1, 8, 8], "cifar10": [3, 32, 32], "cifar100": [3, 32, 32]}
CHECKERS = {"cifar10": check_cifar, "cifar100": check_cifar, "imagenet": check_imagenet,
            **{task: check_glue for task in GLUE_TASKS}}


def check_data(cfg, smoke=None) -> None:
    """Fail with one line, before any compute, if the data set is unknown or missing."""
    if has_target(cfg):
        check_target_data(cfg)
        if cfg.name in BUILDERS:  # msam's own names key behaviour (GLUE's tokens, ImageNet's crop)
            raise ConfigError(f"dataset.name={cfg.name} is one of msam's own data sets; give yours another name")
        return
    if cfg.name not in BUILDERS:
        raise ConfigError(f"unknown dataset '{cfg.name}'; valid: {', '.join(sorted(BUILDERS))}")
    shape = REAL_SHAPES.get(cfg.name)
    if shape is not None and list(cfg.image_shape) != shape:
        raise ConfigError(f"dataset.image_shape={list(cfg.image_shape)}, but {cfg.name} images are {shape} (to feed a "
                          "model larger CIFAR images, set dataset.resize)")
    if cfg.name in CHECKERS and smoke is None:
        CHECKERS[cfg.name](cfg)


def build_data(cfg, batch_size: int, eval_batch_size: int, seed: int, device, smoke=None) -> DataBundle:
    """The data set named by cfg, or with smoke (the smoke overlay) synthetic data of its shape."""
    check_data(cfg, smoke)
    if smoke is not None and cfg.name in GLUE_TASKS:
        return build_smoke_text(cfg, smoke, batch_size, eval_batch_size, seed, device)
    if smoke is not None:
        return build_smoke(cfg, smoke, batch_size, eval_batch_size, seed, device)
    if has_target(cfg):
        return build_target_data(cfg, batch_size, eval_batch_size, seed, device)
    return BUILDERS[cfg.name](cfg, batch_size, eval_batch_size, seed, device)
