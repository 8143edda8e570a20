"""A data set of the user's own (dataset._target_): a callable that returns image tensors.

msam reads the data set's shape, classes and normalisation from the config (TARGET_DATA_KEYS) and
passes the other keys to the callable. The callable returns the four tensors (a mapping with the
keys of SPLITS, or a tuple in that order; numpy arrays are taken too):
- train_images, test_images: floating point, (N, *dataset.image_shape), on the scale that
  dataset.mean and dataset.std describe (msam trains on (x - mean) / std per channel);
- train_labels, test_labels: integers in [0, dataset.num_classes), shape (N,).
From there the data set is one of msam's tensor data sets: kept on the device, shuffled from
(seed, epoch), augmented (dataset.augment), sharded under torchrun, read again by msam-sharpness.
The callable must return the same data at every call: a resumed run, every process of a DDP
job and msam-sharpness call it again (the run records a fingerprint of what it returned).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace

import torch

from msam.data.bundle import DataBundle, tensor_bundle
from msam.errors import ConfigError
from msam.targets import call_target, locate

# msam's own keys of a _target_ data set (not passed to the callable); the first four are required.
REQUIRED_KEYS = ("name", "num_classes", "image_shape", "mean", "std")
TARGET_DATA_KEYS = (*REQUIRED_KEYS, "augment", "crop_padding", "flip", "resize")
SPLITS = ("train_images", "train_labels", "test_images", "test_labels")
# Images normalised with dataset.mean/std that land this far from mean 0 / std 1 were described
# by the wrong numbers (pixels in 0..255 with a [0, 1] mean and std give a std near 80)
NORMALISED_LIMITS = {"abs_mean": 5.0, "std_low": 0.05, "std_high": 20.0}


def check_target_data(cfg) -> None:
    missing = [key for key in REQUIRED_KEYS if key not in cfg]
    if missing:
        raise ConfigError(f"a data set given by _target_ needs dataset.{missing[0]} (msam reads "
                          f"{', '.join(REQUIRED_KEYS)}; docs/training.md, 'Your own model and data')")
    if cfg.get("augment"):
        for key in ("crop_padding", "flip"):
            if key not in cfg:
                raise ConfigError(f"dataset.augment=true needs dataset.{key} (dataset {cfg.name})")
    locate(cfg, "dataset")


def as_tensor(value, key: str, target: str) -> torch.Tensor:
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(f"dataset._target_={target} returned {key} that is not an array ({error})") from None


def splits_of(result, cfg) -> list[torch.Tensor]:
    """The four tensors, each checked against the config; one ConfigError line for the first problem."""
    target = cfg._target_
    if isinstance(result, Mapping):
        missing = [key for key in SPLITS if key not in result]
        if missing:
            raise ConfigError(f"dataset._target_={target} returned a mapping without '{missing[0]}' "
                              f"(it needs {', '.join(SPLITS)})")
        values = [result[key] for key in SPLITS]
    elif isinstance(result, (tuple, list)) and len(result) == 4:
        values = list(result)
    else:
        raise ConfigError(f"dataset._target_={target} returned a {type(result).__name__}; it must return "
                          f"{', '.join(SPLITS)} (a mapping with these keys, or a tuple in this order)")
    tensors = [as_tensor(value, key, target) for key, value in zip(SPLITS, values)]
    shape, classes = list(cfg.image_shape), cfg.num_classes
    for split, images, labels in (("train", tensors[0], tensors[1]), ("test", tensors[2], tensors[3])):
        if not images.is_floating_point():
            raise ConfigError(f"dataset._target_={target}: {split}_images are {images.dtype}; give floating-point "
                              "images on the scale dataset.mean/std describe (e.g. divide 8-bit pixels by 255)")
        if images.dim() < 2 or list(images.shape[1:]) != shape or len(images) == 0:
            raise ConfigError(f"dataset._target_={target}: {split}_images have shape {list(images.shape)}, but "
                              f"dataset.image_shape={shape} says [N, {', '.join(map(str, shape))}] with N > 0")
        if not torch.isfinite(images).all():
            raise ConfigError(f"dataset._target_={target}: {split}_images hold NaN or inf values")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ConfigError(f"dataset._target_={target}: {split}_labels are {labels.dtype}; give integer class "
                              "indices")
        if list(labels.shape) != [len(images)]:
            raise ConfigError(f"dataset._target_={target}: {split}_labels have shape {list(labels.shape)} for "
                              f"{len(images)} images; give one class index per image")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= classes:
            raise ConfigError(f"dataset._target_={target}: {split}_labels run from {low} to {high}, outside "
                              f"[0, {classes}) (dataset.num_classes={classes})")
    return [tensors[0].float(), tensors[1].long(), tensors[2].float(), tensors[3].long()]


def check_normalisation(cfg, bundle: DataBundle) -> None:
    """The training images after (x - mean) / std: a mean and std far from 0 and 1 mean that
    dataset.mean/std do not describe these images."""
    images = bundle.train.inputs
    per_channel = images.transpose(0, 1).flatten(1)
    means, stds = per_channel.mean(1), per_channel.std(1)
    limits = NORMALISED_LIMITS
    if (means.abs() > limits["abs_mean"]).any() or (stds < limits["std_low"]).any() or (stds > limits["std_high"]).any():
        raise ConfigError(f"dataset {cfg.name}: after (x - dataset.mean) / dataset.std the training images have "
                          f"per-channel mean {[round(v, 2) for v in means.tolist()]} and std "
                          f"{[round(v, 2) for v in stds.tolist()]}; set dataset.mean and dataset.std to the images' "
                          "own per-channel mean and std")


def fingerprint(tensors: list[torch.Tensor]) -> str:
    """SHA-256 of the four tensors' bytes: the same data gives the same fingerprint."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def build_target_data(cfg, batch_size, eval_batch_size, seed, device) -> DataBundle:
    tensors = splits_of(call_target(cfg, "dataset", TARGET_DATA_KEYS), cfg)
    bundle = tensor_bundle(cfg, *tensors, batch_size, eval_batch_size, seed, device)
    check_normalisation(cfg, bundle)
    return replace(bundle, fingerprint=fingerprint(tensors))
