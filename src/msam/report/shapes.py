"""The Hessian's spectral density and the loss landscape around each run's trained weights
(msam-report tables=density, tables=landscape), averaged over seeds.

These read the curves themselves from each run's sharpness.json (collect.py keeps only scalars).
A configuration is GROUP_KEYS up to the seed, as in every other report; its line is the mean
over its seeds with a band of ± one sample std (0 for one seed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from msam.report.collect import GROUP_KEYS
from msam.report.curves import label_of
from msam.report.measures import density_at, ends_rise

GRID_POINTS = 400       # the common grid of a panel's densities
GRID_MARGIN = 4.0       # the grid reaches this many sigma past the extreme Ritz values
SLICE_KINDS = ("random", "eigenvector", "path")  # the 1-D panels, in this order


def sections(runs: pd.DataFrame, name: str) -> tuple[pd.DataFrame, list[dict], list[str]]:
    """The runs whose sharpness.json holds `name`, their sections (in the same order), and a note
    naming each run without it and the command that measures it."""
    kept, found, notes = [], [], []
    for index, run_dir in zip(runs.index, runs["run_dir"]):
        command = f"(run: msam-sharpness run={run_dir} measures=[{name}])"
        path = Path(run_dir) / "sharpness.json"
        if not path.is_file():
            notes.append(f"no sharpness.json: {run_dir} {command}")
            continue
        section = json.loads(path.read_text()).get(name)
        if not section:
            notes.append(f"no {name} in sharpness.json: {run_dir} {command}")
            continue
        kept.append(index)
        found.append(section)
    return runs.loc[kept], found, notes


def labels(configs: pd.DataFrame) -> list[str]:
    """Each configuration's label as the other figures write it (method, m, ρ, ...); two that would
    share one (they differ in epochs, say) get their configuration hash added, as in run names."""
    plain = [(row.dataset, row.model, label_of(row)) for row in configs.itertuples()]
    return [f"{key[2]}, config {row.seed_group}" if plain.count(key) > 1 else key[2]
            for key, row in zip(plain, configs.itertuples())]


def configurations(runs: pd.DataFrame) -> list[tuple[str, list[int]]]:
    """(label, positions of its runs in `runs`) per configuration."""
    groups = [list(group.index) for _, group in
              runs.reset_index(drop=True).groupby(GROUP_KEYS, sort=False, dropna=False)]
    firsts = runs.iloc[[members[0] for members in groups]]
    return list(zip(labels(firsts), groups))


def seed_band(values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std (n - 1; 0 for one seed) of equally long arrays, pointwise."""
    stacked = np.stack(values)
    std = stacked.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(stacked.shape[1:])
    return stacked.mean(axis=0), std


def common_grid(found: list[dict]) -> np.ndarray:
    """One grid for every density of a panel: the runs' own grids differ, and a mean over seeds
    needs one set of points."""
    low = min(min(min(row) for row in s["nodes"]) - GRID_MARGIN * s["sigma"] for s in found)
    high = max(max(max(row) for row in s["nodes"]) + GRID_MARGIN * s["sigma"] for s in found)
    return np.linspace(low, high, GRID_POINTS)


def density_curves(runs: pd.DataFrame, found: list[dict]) -> list[dict]:
    """Per configuration: its panel, label, the common grid of its panel, the density's mean and
    std over seeds on it, n."""
    curves = []
    for (dataset, model), panel in runs.reset_index(drop=True).groupby(["dataset", "model"], sort=True):
        grid = common_grid([found[i] for i in panel.index])
        for label, members in configurations(panel):
            mean, std = seed_band([density_at(grid, found[panel.index[i]]) for i in members])
            curves.append({"dataset": dataset, "model": model, "label": label, "grid": grid, "mean": mean,
                           "std": std, "n": len(members)})
    return curves


def slice_of(section: dict, kind: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(x, loss) of one 1-D cut of a landscape: a slice along alpha, or the path along t."""
    if kind == "path":
        path = section.get("path")
        return None if not path else (np.asarray(path["t"], float), np.asarray(path["loss"], float))
    cut = (section.get("slices") or {}).get(kind)
    return None if not cut else (np.asarray(cut["alpha"], float), np.asarray(cut["loss"], float))


def on_first(cuts: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Each cut's loss on the first cut's x (seeds normally share it; else interpolated)."""
    x = cuts[0][0]
    return [loss if len(xs) == len(x) and np.allclose(xs, x) else np.interp(x, xs[np.argsort(xs)],
                                                                             loss[np.argsort(xs)])
            for xs, loss in cuts]


def landscape_lines(runs: pd.DataFrame, found: list[dict]) -> list[dict]:
    """Per configuration and 1-D kind its seeds measured: panel, label, kind, x, mean and std of the
    loss over seeds, n."""
    lines = []
    for label, members in configurations(runs):
        first = runs.iloc[members[0]]
        for kind in SLICE_KINDS:
            cuts = [cut for cut in (slice_of(found[i], kind) for i in members) if cut is not None]
            if cuts:
                mean, std = seed_band(on_first(cuts))
                lines.append({"dataset": first["dataset"], "model": first["model"], "label": label, "kind": kind,
                              "x": cuts[0][0], "mean": mean, "std": std, "n": len(cuts)})
    return lines


def landscape_planes(runs: pd.DataFrame, found: list[dict]) -> tuple[list[dict], list[str]]:
    """Per configuration with 2-D planes: the mean loss over seeds on the first seed's (alpha, beta)
    grid; a plane on another grid is left out with a note (2-D interpolation would invent values)."""
    planes, notes = [], []
    for label, members in configurations(runs):
        measured = [(runs.iloc[i]["run_dir"], found[i]["plane"]) for i in members if found[i].get("plane")]
        if not measured:
            continue
        alpha, beta = np.asarray(measured[0][1]["alpha"], float), np.asarray(measured[0][1]["beta"], float)
        losses = []
        for run_dir, plane in measured:
            same = (len(plane["alpha"]) == len(alpha) and len(plane["beta"]) == len(beta)
                    and np.allclose(plane["alpha"], alpha) and np.allclose(plane["beta"], beta))
            if same:
                losses.append(np.asarray(plane["loss"], float))
            else:
                notes.append(f"plane of {run_dir} left out of {label}'s mean: its alpha/beta differ from the "
                             "first seed's")
        first = runs.iloc[members[0]]
        planes.append({"dataset": first["dataset"], "model": first["model"], "label": label, "alpha": alpha,
                       "beta": beta, "loss": np.mean(losses, axis=0), "n": len(losses)})
    return planes, notes


def rise_rows(runs: pd.DataFrame, found: list[dict]) -> pd.DataFrame:
    """Per run: its configuration, and each slice's rise at its -alpha and +alpha ends over the loss
    at the trained weights (NaN where that slice was not measured)."""
    rows = []
    for (_, run), section in zip(runs.iterrows(), found):
        row = {key: run[key] for key in [*GROUP_KEYS, "seed", "run_dir"]}
        for kind in SLICE_KINDS[:2]:
            cut = slice_of(section, kind)
            row[f"{kind}_minus"], row[f"{kind}_plus"] = ends_rise(*cut) if cut else (np.nan, np.nan)
        rows.append(row)
    return pd.DataFrame(rows, columns=[*GROUP_KEYS, "seed", "run_dir",
                                       *[f"{k}_{end}" for k in SLICE_KINDS[:2] for end in ("minus", "plus")]])
