"""The measures msam-sharpness adds to a run's sharpness.json beyond λ_max and the trace (its
"measures" list: topk, density, sharpness, landscape), read per run.

Pure functions of one sharpness.json; the reports average their results over seeds.
"""

from __future__ import annotations

import math

import numpy as np

SHARPNESS_PREFIX = "sharpness:"  # the runs frame's column of one m-sharpness row: sharpness:worst@micro
TOPK_PREFIX = "lambda_k="         # the runs frame's column of the k-th eigenvalue: lambda_k=5
KIND_NAMES = {"worst": "worst", "average": "avg"}
N_ORDER = {"micro": 0, "batch": 1, "full": 2}  # a number (n samples) sorts after these, by size


def sharpness_name(row: dict) -> str:
    """A short name of one m-sharpness row: kind, "-adaptive" for the scaled ball, "@" and the batch
    size it was averaged over (worst@micro, avg-adaptive@full, worst@256)."""
    scale = "-adaptive" if row["scale"] == "adaptive" else ""
    return f"{KIND_NAMES.get(row['kind'], row['kind'])}{scale}@{row['n_label']}"


def sharpness_order(name: str) -> tuple:
    """Sort key of a sharpness name: worst before avg, plain before adaptive, micro, batch, full,
    then numbers ascending."""
    kind, n_label = name.split("@", 1)
    kinds = ["worst", "worst-adaptive", "avg", "avg-adaptive"]
    number = float(n_label) if n_label.replace(".", "", 1).isdigit() else math.inf
    return (kinds.index(kind) if kind in kinds else len(kinds), N_ORDER.get(n_label, 3), number, name)


def ends_rise(alpha, loss) -> tuple[float, float]:
    """The loss at each end of a 1-D slice (alpha = -span, +span) minus the loss at alpha = 0 (the
    trained weights; interpolated if the slice has no point at exactly 0)."""
    alpha, loss = np.asarray(alpha, float), np.asarray(loss, float)
    order = np.argsort(alpha)
    alpha, loss = alpha[order], loss[order]
    centre = float(np.interp(0.0, alpha, loss))
    return float(loss[0] - centre), float(loss[-1] - centre)


def density_at(t, section: dict) -> np.ndarray:
    """The smoothed spectral density of one run at the points t, from its Lanczos nodes and weights:
    (1/probes) sum_p sum_j weights[p][j] N(t; nodes[p][j], sigma^2). Each run has its own grid, so
    averaging over seeds needs the density on a common one."""
    t = np.asarray(t, float)[:, None]
    nodes = np.concatenate([np.asarray(row, float) for row in section["nodes"]])[None, :]
    weights = np.concatenate([np.asarray(row, float) for row in section["weights"]])[None, :]
    sigma = float(section["sigma"])
    gauss = np.exp(-0.5 * ((t - nodes) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return (gauss * weights).sum(axis=1) / len(section["nodes"])  # one row of nodes per probe


def run_measures(sharpness: dict) -> dict:
    """The scalar columns of one run from its sharpness.json: the k-th largest eigenvalue, the
    density's negative mass, each m-sharpness row's mean, the random slice's 1-D rise. A measure
    the file lacks gives no key (the runs frame fills NaN)."""
    values = {}
    topk = sharpness.get("topk")
    if topk:
        k = int(topk["k"])
        values[f"{TOPK_PREFIX}{k}"] = float(sorted(topk["eigenvalues"], reverse=True)[k - 1])
    density = sharpness.get("density")
    if density:
        values["negative_mass"] = float(density["negative_mass"])
    rows = (sharpness.get("sharpness") or {}).get("rows") or []
    for row in rows:
        values[SHARPNESS_PREFIX + sharpness_name(row)] = float(row["mean"])
    if rows:
        values["sharpness_rho"] = float(sharpness["sharpness"]["rho"])
    random = ((sharpness.get("landscape") or {}).get("slices") or {}).get("random")
    if random:
        values["rise_1d"] = float(np.mean(ends_rise(random["alpha"], random["loss"])))
    return values
