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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from msam.report.collect import GROUP_KEYS  # noqa: E402

CURVE_VALUES = ("test_acc", "train_loss")
CURVE_LABELS = {"test_acc": "test accuracy (%)", "train_loss": "training loss"}


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


def curves_figure(numbers: pd.DataFrame):
    """Rows: (dataset, model); columns: test accuracy, training loss (log scale)."""
    panels = list(numbers.groupby(["dataset", "model"], sort=True))
    figure, axes = plt.subplots(len(panels), 2, figsize=(10, 3.6 * len(panels)), squeeze=False)
    for row_axes, ((dataset, model), rows) in zip(axes, panels):
        for axis, value in zip(row_axes, CURVE_VALUES):
            for label, line in rows.groupby("label", sort=True):
                mean, std = line[f"{value}_mean"], line[f"{value}_std"]
                axis.plot(line["epoch"], mean, label=label, linewidth=1.2)
                axis.fill_between(line["epoch"], mean - std, mean + std, alpha=0.2)
            if value == "train_loss":
                axis.set_yscale("log")
            axis.set_xlabel("epoch")
            axis.set_ylabel(CURVE_LABELS[value])
            axis.set_title(f"{dataset} / {model}")
            axis.grid(alpha=0.3)
        row_axes[0].legend(fontsize=7)
    figure.tight_layout()
    return figure
