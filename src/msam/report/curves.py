"""Learning curves (msam-report tables=curves): test accuracy and training loss against the epoch,
mean and a band of ± one std over seeds, one line per configuration.

The per-epoch values come from each finished run's metrics.jsonl (one line per epoch, written by
the engine). A configuration is GROUP_KEYS up to the seed, as in every other report; seeds that
stopped at different epochs are averaged over the seeds that reached each epoch (n per epoch is
in the CSV).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from msam.report.collect import GROUP_KEYS

CURVE_VALUES = ("test_acc", "train_loss")


def epoch_rows(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per (run, epoch) with the run's configuration columns; notes for runs without a
    readable metrics.jsonl."""
    rows, notes = [], []
    for run in runs.itertuples(index=False):
        path = Path(run.run_dir) / "metrics.jsonl"
        try:
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError) as error:
            notes.append(f"no learning curve for {run.run_dir} (metrics.jsonl: {error.__class__.__name__})")
            continue
        config = {key: getattr(run, key) for key in GROUP_KEYS}
        rows += [{**config, "seed": run.seed, "epoch": line["epoch"],
                  **{value: line.get(value) for value in CURVE_VALUES}} for line in lines if "epoch" in line]
    return pd.DataFrame(rows, columns=[*GROUP_KEYS, "seed", "epoch", *CURVE_VALUES]), notes


def label_of(row) -> str:
    label = f"{row.method} m={int(row.m)} ρ={row.rho:g}"
    if isinstance(row.norm_scale, str):
        label += f" λ={row.rw_lambda:g} ({row.norm_scale}, {row.norm_estimator})"
    if isinstance(row.switch_to, str):
        label += f" → {row.switch_to} at {100 * row.switch_fraction:g}%"
    return label


def curve_numbers(per_epoch: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (0 for one seed) and n of each value, per configuration and epoch."""
    grouped = per_epoch.groupby([*GROUP_KEYS, "epoch"], sort=True, dropna=False)
    table = grouped[list(CURVE_VALUES)].agg(["mean", "std"])
    table.columns = [f"{value}_{stat}" for value, stat in table.columns]
    table = table.fillna({f"{value}_std": 0.0 for value in CURVE_VALUES})
    table["n"] = grouped.size()
    table = table.reset_index()
    return table.assign(label=[label_of(r) for r in table.itertuples()])
