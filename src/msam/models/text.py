"""Sequence classifiers from transformers (RoBERTa-base for the paper's GLUE rows, Table 3).

With model.checkpoint (a local directory saved by save_pretrained: config.json, the weights,
the tokenizer files) the pretrained model is loaded and a fresh classification head of
num_classes outputs is put on it. Without one, model.config (a transformers config as a dict)
builds a randomly initialised model: the tests' tiny RoBERTa, and the smoke overlay's
(smoke.text_model), so no download is ever needed.
"""

from __future__ import annotations

import os

from torch import nn

from msam.errors import ConfigError


def check_text_checkpoint(path: str | None) -> None:
    if path is not None and not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"model.checkpoint must be a directory saved by transformers' save_pretrained "
                          f"(config.json, weights, tokenizer): nothing at {os.path.abspath(path)}")


def text_classifier(cfg, num_classes: int, smoke=None) -> nn.Module:
    import transformers

    transformers.utils.logging.disable_progress_bar()  # one line per epoch in the logs, not bars
    if cfg.checkpoint is not None and smoke is None:
        return transformers.AutoModelForSequenceClassification.from_pretrained(
            cfg.checkpoint, num_labels=num_classes, ignore_mismatched_sizes=True)
    values = dict(smoke.text_model) if smoke is not None else dict(cfg.config or {})
    config = transformers.AutoConfig.for_model(cfg.model_type, num_labels=num_classes, **values)
    return transformers.AutoModelForSequenceClassification.from_config(config)
