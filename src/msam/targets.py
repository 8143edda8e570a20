"""Your own model or data set, named by `_target_` in its config group (Hydra's instantiate).

A config with `_target_` is built by calling that dotted path with the config's other keys as
keyword arguments, except msam's own keys for the group (the run's name, the data set's shape and
normalisation, ...), which msam reads and does not pass on. docs/training.md ("Your own model and
data") says what each callable must return.

The dotted path must be importable by the process that runs (an installed package of yours, or a
folder on PYTHONPATH): a run's config.yaml names it, so msam-sharpness, a resumed run and every
process of a DDP job import it again.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from omegaconf import OmegaConf

from msam.errors import ConfigError


def has_target(cfg) -> bool:
    return cfg is not None and "_target_" in cfg


def locate(cfg, group: str):
    """The callable cfg._target_ names; one ConfigError line if it cannot be imported."""
    from hydra.utils import get_object

    path = cfg["_target_"]
    name = str(cfg.get("name", ""))
    if "/" in name or name in (".", ".."):
        raise ConfigError(f"{group}.name={name!r} names run directories: give a name without '/'")
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"{group}._target_ must be a dotted path (my_project.models.Net), got {path!r}")
    try:
        target = get_object(path)
    except Exception as error:  # noqa: BLE001 - ImportError, AttributeError, or the module's own error
        cause = error.__cause__ or error
        raise ConfigError(f"{group}._target_={path} cannot be imported ({type(cause).__name__}: "
                          f"{str(cause).splitlines()[0] if str(cause) else 'no message'}); install your project or "
                          "put its folder on PYTHONPATH") from None
    if not callable(target):
        raise ConfigError(f"{group}._target_={path} is a {type(target).__name__}, not something to call")
    return target


def call_target(cfg, group: str, own_keys: tuple[str, ...]):
    """instantiate(cfg) without msam's own keys; the callable's own error is one ConfigError line
    (a keyword it does not take, a value it refuses)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    locate(cfg, group)
    # Resolved in place first: the keys may interpolate the rest of the run's config (${dataset.num_classes})
    arguments = {key: value for key, value in OmegaConf.to_container(cfg, resolve=True).items() if key not in own_keys}
    try:
        return instantiate(arguments)
    except InstantiationException as error:
        cause = error.__cause__ or error
        message = str(cause).strip().splitlines()
        raise ConfigError(f"{group}._target_={cfg['_target_']} failed: {type(cause).__name__}: "
                          f"{message[0] if message else 'no message'}") from None


def source_of(obj) -> dict:
    """Where the code of what was built lives: its qualified name, file and, if that file is in a
    git checkout, the commit (with -dirty for uncommitted changes)."""
    from msam.runs import git_commit

    kind = obj if inspect.isclass(obj) or inspect.isfunction(obj) else type(obj)
    try:
        file = Path(inspect.getfile(kind)).resolve()
    except (TypeError, OSError):
        file = None
    return {"built": f"{kind.__module__}.{kind.__qualname__}", "file": str(file) if file else None,
            "git_commit": git_commit(file.parent) if file else None}


def built_record(model_cfg, dataset_cfg, model, data) -> dict:
    """What a run built, for provenance.json: the model's class and size, and for a model or data
    set of the user's own, where its code lives (and the data's fingerprint)."""
    module = getattr(model, "module", model)  # under DDP: the wrapped model
    module = getattr(module, "_orig_mod", module)  # under torch.compile
    parameters = list(module.parameters())
    record = {"model": {"class": f"{type(module).__module__}.{type(module).__qualname__}",
                        "parameters": sum(p.numel() for p in parameters),
                        "trainable_parameters": sum(p.numel() for p in parameters if p.requires_grad)},
              "data": {"train_size": data.train_size, "test_size": data.test_size,
                       "input_shape": list(data.input_shape), "num_classes": data.num_classes}}
    if has_target(model_cfg):
        record["model"].update(target=model_cfg["_target_"], source=source_of(locate(model_cfg, "model")))
    if has_target(dataset_cfg):
        record["data"].update(target=dataset_cfg["_target_"], source=source_of(locate(dataset_cfg, "dataset")),
                              fingerprint=data.fingerprint)
    return record
