"""Read finished runs (summary.json, and sharpness.json where measured) into a DataFrame.

Run directories are the only source; a directory that is unfinished, unreadable or missing
its files is reported by name with the reason and skipped, never silently dropped.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pandas as pd
import yaml

from msam.report.measures import run_measures

COLUMNS = ["dataset", "model", "method", "m", "rho", "seed", "epochs", "epochs_completed", "test_acc", "test_mcc", "test_f1",
           "best_test_acc", "seconds_per_epoch", "train_seconds", "seed_group", "lambda_max", "trace",
           "switch_to", "switch_fraction", "impl", "rw_lambda", "norm_scale", "norm_estimator", "run_dir",
           "negative_mass", "rise_1d", "sharpness_rho", "compile_seconds"]
# and, where some run measured them, one column per k-th eigenvalue (lambda_k=5) and per m-sharpness
# row (sharpness:worst@micro): their names depend on what was measured (msam.report.measures)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"unreadable {path.name} ({error.__class__.__name__})") from None


def rwsam_settings(config_path: Path) -> dict:
    """RW-SAM's temperature, its scaling and its norm estimator (None for other methods): what
    tells RW-SAM runs of one rho apart in a report. A config from before norm_estimator existed
    ran the finite-difference probe, the only estimator then."""
    try:
        method = (yaml.safe_load(config_path.read_text()) or {}).get("method") or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"unreadable config.yaml ({error.__class__.__name__})") from None
    if method.get("name") != "rwsam":
        return {"rw_lambda": None, "norm_scale": None, "norm_estimator": None}
    return {"rw_lambda": float(method["lambda"]), "norm_scale": method["norm_scale"],
            "norm_estimator": method.get("norm_estimator", "finite_difference")}


def read_run(run_dir: Path) -> dict:
    summary = read_json(run_dir / "summary.json")
    if summary.get("status") != "finished":
        raise ValueError(f"status {summary.get('status')!r}, not finished")
    if not (run_dir / "config.yaml").is_file():
        raise ValueError("config.yaml missing")
    row = {key: summary.get(key) for key in COLUMNS}
    row.update(rwsam_settings(run_dir / "config.yaml"))
    row["train_seconds"] = summary["seconds_per_epoch"] * summary["epochs_completed"]
    row["impl"] = (summary.get("derived") or {}).get("method.impl")  # mSAM/RW-SAM: the implementation that ran
    row["run_dir"] = str(run_dir)
    sharpness_path = run_dir / "sharpness.json"
    if sharpness_path.is_file():
        sharpness = read_json(sharpness_path)
        # measures=[topk] alone on a run not measured before writes no lambda_max
        row["lambda_max"], row["trace"] = sharpness.get("lambda_max"), sharpness.get("trace")
        row["sharpness_measured"] = True
        row.update(run_measures(sharpness))
    return row


def collect_runs(root: str | Path, match=None) -> tuple[pd.DataFrame, list[str]]:
    """Finished runs as rows, and one note per run directory skipped, with the reason. `match`:
    only run directories whose name matches one of these fnmatch patterns."""
    rows, skipped = [], []
    for path in sorted(Path(root).rglob("summary.json")):
        if match is not None and not any(fnmatch.fnmatchcase(path.parent.name, p) for p in match):
            continue
        try:
            rows.append(read_run(path.parent))
        except (ValueError, KeyError, TypeError, IndexError) as error:
            skipped.append(f"{path.parent}: {error}")
    measured = sorted({key for row in rows for key in row} - set(COLUMNS))
    return pd.DataFrame(rows, columns=COLUMNS + measured), skipped


def single_method(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that used one method throughout (no hybrid switch): the rows of Tables 2, 4, 5."""
    return runs[runs["switch_to"].isna()]


GROUP_KEYS = ["dataset", "model", "method", "m", "rho", "epochs", "switch_to", "switch_fraction", "rw_lambda",
              "norm_scale", "norm_estimator", "seed_group"]


def implementations(runs: pd.DataFrame) -> pd.DataFrame:
    """Per configuration, the implementations its seeds ran ("loop", "vmap", "loop/vmap", ..., or "")."""
    return (runs.groupby(GROUP_KEYS, sort=False, dropna=False)["impl"]
            .agg(lambda labels: "/".join(sorted({x for x in labels if isinstance(x, str)}))).reset_index())


def mean_std(runs: pd.DataFrame, value: str) -> pd.DataFrame:
    """One row per configuration up to the seed: mean, sample std (n-1, 0 for n=1) and n."""
    present = runs.dropna(subset=[value])
    table = (present.groupby(GROUP_KEYS, sort=False, dropna=False)[value]
             .agg(mean="mean", std="std", n="size").reset_index())
    table["std"] = table["std"].fillna(0.0)
    return table


MEASURES = ("test_acc", "lambda_max", "trace")  # what the figures plot against an axis


def measures(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: mean, std and n of test accuracy, lambda_max and the trace
    (columns <value>_mean, <value>_std, <value>_n; NaN where a value was never measured)."""
    table = None
    for value in MEASURES:
        part = mean_std(runs, value).rename(columns={"mean": f"{value}_mean", "std": f"{value}_std",
                                                     "n": f"{value}_n"})
        table = part if table is None else table.merge(part, on=GROUP_KEYS, how="outer")
    return table

