"""The paper's four GLUE tasks (CoLA, MRPC, SST-2, QQP), from a local copy, tokenized once.

dataset.path holds either a `datasets` DatasetDict saved with save_to_disk (train and
validation splits, the Hub's field names), or GLUE's own train.tsv and dev.tsv. We train on
train and report on the dev set (validation), as the paper does: GLUE's test labels are hidden.
Nothing is downloaded unless dataset.download=true, which saves the Hub copy to dataset.path.
"""

from __future__ import annotations

import csv
import logging
import os

import torch

from msam.data.bundle import DataBundle
from msam.data.tokens import TokenLoader
from msam.errors import ConfigError

HUB_FIELDS = {"cola": ["sentence"], "sst2": ["sentence"], "mrpc": ["sentence1", "sentence2"],
              "qqp": ["question1", "question2"]}
# GLUE's TSV files: whether they have a header, the column names, the text columns, the label column.
TSV = {
    "cola": (False, ["source", "label", "original_label", "sentence"], ["sentence"], "label"),
    "sst2": (True, None, ["sentence"], "label"),
    "mrpc": (True, None, ["#1 String", "#2 String"], "Quality"),
    "qqp": (True, None, ["question1", "question2"], "is_duplicate"),
}
TASKS = tuple(HUB_FIELDS)
log = logging.getLogger("msam")


def is_saved_dataset(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "dataset_dict.json"))


def is_tsv_copy(path: str) -> bool:
    return all(os.path.isfile(os.path.join(path, name)) for name in ("train.tsv", "dev.tsv"))


def check_glue(cfg) -> None:
    if cfg.task not in TASKS:
        raise ConfigError(f"unknown GLUE task '{cfg.task}'; valid: {', '.join(TASKS)}")
    if cfg.download or is_saved_dataset(cfg.path) or is_tsv_copy(cfg.path):
        return
    raise ConfigError(f"GLUE {cfg.task} not found: looked for {os.path.abspath(cfg.path)}/dataset_dict.json "
                      f"(datasets.load_dataset('nyu-mll/glue', '{cfg.task}').save_to_disk(PATH)) or GLUE's "
                      f"train.tsv and dev.tsv; or add dataset.download=true once")


def read_tsv(path: str, task: str, num_classes: int) -> tuple[list[list[str]], list[int]]:
    """GLUE's TSV file; lines with too many fields or no text are skipped and counted (GLUE's own
    QQP has some); missing columns, labels outside 0..num_classes-1 or no usable line are one line."""
    import pandas as pd

    header, names, text_columns, label_column = TSV[task]
    try:
        frame = pd.read_csv(path, sep="\t", header=0 if header else None, names=names, quoting=csv.QUOTE_NONE,
                            dtype=str, keep_default_na=False, on_bad_lines="skip")
        with open(path, "rb") as handle:
            lines = sum(1 for line in handle if line.strip()) - (1 if header else 0)
    except (OSError, ValueError, pd.errors.ParserError) as error:  # EmptyDataError is a ValueError
        raise ConfigError(f"GLUE {task} file {path} is unreadable ({type(error).__name__}: {error})") from None
    missing = [c for c in [*text_columns, label_column] if c not in frame.columns]
    if not missing:  # a line with too few fields: pandas fills the absent ones with ""
        frame = frame[(frame[text_columns] != "").any(axis=1)].reset_index(drop=True)
    if missing or frame.empty:
        raise ConfigError(f"GLUE {task} file {path} is not GLUE's {task} TSV: "
                          + (f"no column {missing[0]!r} (has {list(frame.columns)})" if missing else "no usable line"))
    valid = {str(label) for label in range(num_classes)}
    bad = frame.index[~frame[label_column].isin(valid)]
    if len(bad):
        raise ConfigError(f"GLUE {task} file {path}: label {frame[label_column][bad[0]]!r} on data row {bad[0] + 1} is "
                          f"not one of 0..{num_classes - 1} ({len(bad)} such rows)")
    if lines > len(frame):
        log.warning(f"{path}: skipped {lines - len(frame)} malformed line(s) of {lines}")
    return [frame[c].tolist() for c in text_columns], [int(v) for v in frame[label_column]]


def read_split(cfg, split: str) -> tuple[list[list[str]], list[int]]:
    """(text columns, labels) of the train or validation split."""
    if is_saved_dataset(cfg.path):
        import datasets

        try:
            part = datasets.load_from_disk(cfg.path)[split]
            return [list(part[field]) for field in HUB_FIELDS[cfg.task]], [int(v) for v in part["label"]]
        except (OSError, ValueError, KeyError) as error:
            raise ConfigError(f"GLUE {cfg.task} at {cfg.path} is unreadable ({type(error).__name__}: {error}); "
                              "save it again with datasets' save_to_disk") from None
    return read_tsv(os.path.join(cfg.path, "train.tsv" if split == "train" else "dev.tsv"), cfg.task,
                    cfg.num_classes)


def download(cfg) -> None:
    import datasets

    datasets.load_dataset("nyu-mll/glue", cfg.task).save_to_disk(cfg.path)


def tokenized(tokenizer, columns: list[list[str]], max_length: int) -> list[list[int]]:
    encoded = tokenizer(*columns, truncation=True, max_length=max_length)
    return encoded["input_ids"]


def build_glue(cfg, batch_size, eval_batch_size, seed, device) -> DataBundle:
    from transformers import AutoTokenizer

    if cfg.download and not (is_saved_dataset(cfg.path) or is_tsv_copy(cfg.path)):
        download(cfg)
    if cfg.tokenizer is None:
        raise ConfigError("dataset.tokenizer is null: give the model's directory (model.checkpoint=PATH sets it)")
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    loaders = []
    for split, size, shuffle in (("train", batch_size, True), ("validation", eval_batch_size, False)):
        columns, labels = read_split(cfg, split)
        loaders.append(TokenLoader(tokenized(tokenizer, columns, cfg.max_length), torch.tensor(labels),
                                   tokenizer.pad_token_id, size, shuffle=shuffle, drop_last=shuffle,
                                   device=device, seed=seed))
    train, test = loaders
    return DataBundle(train, test, cfg.num_classes, (cfg.max_length,), len(train.ids), len(test.ids))


def build_smoke_text(cfg, smoke, batch_size, eval_batch_size, seed, device) -> DataBundle:
    """Random token sequences (ids 3..vocab) labelled by their first token's parity: the smoke
    overlay's stand-in for a GLUE task, with no tokenizer or files."""
    gen = torch.Generator().manual_seed(0)
    vocab = smoke.text_model.vocab_size
    n_train = smoke.train_batches * batch_size
    lengths = torch.randint(4, 17, (n_train + smoke.test_size,), generator=gen)
    ids = [torch.randint(3, vocab, (int(length),), generator=gen).tolist() for length in lengths]
    ids = [[0, *row, 2] for row in ids]  # RoBERTa's <s> ... </s>
    labels = torch.tensor([row[1] % cfg.num_classes for row in ids])
    train = TokenLoader(ids[:n_train], labels[:n_train], 1, batch_size, True, True, device, seed)
    test = TokenLoader(ids[n_train:], labels[n_train:], 1, eval_batch_size, False, False, device, seed)
    return DataBundle(train, test, cfg.num_classes, (cfg.max_length,), n_train, smoke.test_size)
