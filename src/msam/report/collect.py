"""Read the summaries of finished runs under a folder into a pandas DataFrame."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

COLUMNS = ["dataset", "model", "method", "m", "rho", "seed", "test_acc", "best_test_acc",
           "seconds_per_epoch", "epochs", "epochs_completed", "seed_group", "run_dir"]


def collect_runs(root: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """Finished runs as rows, and a note for every run directory that was skipped and why."""
    rows, skipped = [], []
    for path in sorted(Path(root).rglob("summary.json")):
        summary = json.loads(path.read_text())
        if summary.get("status") != "finished":
            skipped.append(f"{path.parent}: status {summary.get('status')!r}, not finished")
            continue
        rows.append({key: summary.get(key) for key in COLUMNS})
    return pd.DataFrame(rows, columns=COLUMNS), skipped


def mean_std_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration up to the seed: test accuracy mean, std (n-1) and n."""
    keys = ["dataset", "model", "method", "m", "rho", "epochs", "seed_group"]
    grouped = runs.groupby(keys, sort=False)
    table = grouped.agg(acc_mean=("test_acc", "mean"), acc_std=("test_acc", "std"), n=("test_acc", "size"),
                        seconds_per_epoch=("seconds_per_epoch", "mean")).reset_index()
    table["acc_std"] = table["acc_std"].fillna(0.0)
    return table
