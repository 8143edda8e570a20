"""Figures with matplotlib (Agg backend: no display needed), error bars = std over seeds."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MEASURE_LABELS = {"test_acc": "test accuracy (%)", "lambda_max": "λ_max (top Hessian eigenvalue)",
                  "trace": "Hessian trace", "train_loss": "training loss"}


def measured(numbers, values) -> list[str]:
    """The values of MEASURES that at least one row has (a panel each)."""
    return [v for v in values if f"{v}_mean" in numbers and numbers[f"{v}_mean"].notna().any()]


def against_figure(numbers, *, x: str, xlabel: str, values, reference=None, log2_x: bool = False):
    """Rows of panels: one per (dataset, model); columns: one per measured value. One line per
    `label` (error bars: std over seeds); each row of `reference` (configurations that have no
    place on the x axis, e.g. vanilla against m) is a dashed horizontal line with its label."""
    panels = list(numbers.groupby(["dataset", "model"], sort=True))
    values = measured(numbers, values)
    figure, axes = plt.subplots(len(panels), len(values), figsize=(4.6 * len(values), 3.6 * len(panels)),
                                squeeze=False)
    for row_axes, ((dataset, model), rows) in zip(axes, panels):
        same = [] if reference is None else [
            r for r in reference.itertuples() if (r.dataset, r.model) == (dataset, model)]
        for axis, value in zip(row_axes, values):
            for label, line in rows.groupby("label", sort=False):
                line = line.dropna(subset=[f"{value}_mean"]).sort_values(x)
                axis.errorbar(line[x], line[f"{value}_mean"], yerr=line[f"{value}_std"], marker="o", capsize=3,
                              label=label)
            for color, ref in zip(itertools.cycle(("gray", "tab:brown", "tab:pink", "tab:olive", "black")), same):
                mean = getattr(ref, f"{value}_mean")
                if mean == mean:  # not NaN
                    axis.axhline(mean, linestyle="--", linewidth=1, color=color, label=f"{ref.label}")
            if log2_x:
                axis.set_xscale("log", base=2)
                axis.set_xticks(sorted(rows[x].unique()))
                axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            axis.set_xlabel(xlabel)
            axis.set_ylabel(MEASURE_LABELS[value])
            axis.set_title(f"{dataset} / {model}")
            axis.grid(alpha=0.3)
        row_axes[0].legend(fontsize=7)
    figure.tight_layout()
    return figure


def curves_figure(numbers, values):
    """Rows: (dataset, model); columns: the per-epoch values (training loss on a log scale), one
    line per configuration with a band of ± one std over seeds."""
    panels = list(numbers.groupby(["dataset", "model"], sort=True))
    figure, axes = plt.subplots(len(panels), len(values), figsize=(5 * len(values), 3.6 * len(panels)),
                                squeeze=False)
    for row_axes, ((dataset, model), rows) in zip(axes, panels):
        for axis, value in zip(row_axes, values):
            for label, line in rows.groupby("label", sort=True):
                mean, std = line[f"{value}_mean"], line[f"{value}_std"]
                axis.plot(line["epoch"], mean, label=label, linewidth=1.2)
                axis.fill_between(line["epoch"], mean - std, mean + std, alpha=0.2)
            if value == "train_loss":
                axis.set_yscale("log")
            axis.set_xlabel("epoch")
            axis.set_ylabel(MEASURE_LABELS[value])
            axis.set_title(f"{dataset} / {model}")
            axis.grid(alpha=0.3)
        row_axes[0].legend(fontsize=7)
    figure.tight_layout()
    return figure


DENSITY_FLOOR = 1e-8  # a spectral density is drawn on a log scale: zeros and negative band edges clipped here


def density_figure(curves):
    """One panel per (dataset, model): each configuration's spectral density on the panel's common
    grid, mean over seeds with a band of ± one std, log y axis."""
    panels = sorted({(c["dataset"], c["model"]) for c in curves})
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for axis, (dataset, model) in zip(axes[0], panels):
        for curve in (c for c in curves if (c["dataset"], c["model"]) == (dataset, model)):
            low = (curve["mean"] - curve["std"]).clip(DENSITY_FLOOR)
            axis.plot(curve["grid"], curve["mean"].clip(DENSITY_FLOOR), label=curve["label"], linewidth=1.2)
            axis.fill_between(curve["grid"], low, (curve["mean"] + curve["std"]).clip(DENSITY_FLOOR), alpha=0.2)
        axis.set_yscale("log")
        axis.set_xlabel("eigenvalue")
        axis.set_ylabel("spectral density")
        axis.set_title(f"{dataset} / {model}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


SLICE_TITLES = {"random": "random direction (filter-normalized)", "eigenvector": "top eigenvector",
                "path": "linear path"}
SLICE_XLABELS = {"random": "α", "eigenvector": "α", "path": "t (0: this run, 1: the run it is paired with)"}


def landscape_figure(lines, planes):
    """Per (dataset, model): a row of 1-D panels, one per kind measured (random slice, eigenvector
    slice, linear path), one line per configuration (mean, ± std band over seeds); below it, where
    measured, a row of 2-D contour panels, one per configuration (mean over seeds)."""
    kinds = [k for k in SLICE_TITLES if any(line["kind"] == k for line in lines)]
    layout = []  # (dataset, model, "1d" | "2d") per row of panels
    for dataset, model in sorted({(x["dataset"], x["model"]) for x in [*lines, *planes]}):
        if any((line["dataset"], line["model"]) == (dataset, model) for line in lines):
            layout.append((dataset, model, "1d"))
        if any((plane["dataset"], plane["model"]) == (dataset, model) for plane in planes):
            layout.append((dataset, model, "2d"))
    width = max([len(kinds)] + [sum((p["dataset"], p["model"]) == (d, m) for p in planes) for d, m, _ in layout])
    figure, axes = plt.subplots(len(layout), width, figsize=(4.8 * width, 3.8 * len(layout)), squeeze=False)
    for row_axes, (dataset, model, shape) in zip(axes, layout):
        same = lambda x: (x["dataset"], x["model"]) == (dataset, model)  # noqa: E731
        used = (slice_panels(row_axes, [x for x in lines if same(x)], kinds, dataset, model) if shape == "1d"
                else plane_panels(row_axes, [p for p in planes if same(p)], dataset, model))
        for axis in row_axes[used:]:
            axis.set_axis_off()
    figure.tight_layout()
    return figure


def slice_panels(row_axes, lines, kinds, dataset, model) -> int:
    for axis, kind in zip(row_axes, kinds):
        for line in (x for x in lines if x["kind"] == kind):
            axis.plot(line["x"], line["mean"], label=line["label"], linewidth=1.2)
            axis.fill_between(line["x"], line["mean"] - line["std"], line["mean"] + line["std"], alpha=0.2)
        axis.set_xlabel(SLICE_XLABELS[kind])
        axis.set_ylabel("training loss")
        axis.set_title(f"{dataset} / {model}: {SLICE_TITLES[kind]}", fontsize=9)
        axis.grid(alpha=0.3)
        if axis.get_lines():
            axis.legend(fontsize=7)
        else:  # another data set or model measured this kind: the column is kept, said empty
            axis.text(0.5, 0.5, "not measured", ha="center", va="center", transform=axis.transAxes, color="gray")
    return len(kinds)


def plane_panels(row_axes, planes, dataset, model) -> int:
    for axis, plane in zip(row_axes, planes):
        # loss[i][j] is at alpha[i], beta[j]: rows along alpha (y), columns along beta (x)
        filled = axis.contourf(plane["beta"], plane["alpha"], plane["loss"], levels=20, cmap="viridis")
        axis.figure.colorbar(filled, ax=axis, label="training loss")
        axis.plot([0], [0], marker="+", color="white")  # the trained weights
        axis.set_xlabel("β (second random direction)")
        axis.set_ylabel("α (first random direction)")
        axis.set_title(f"{dataset} / {model}: {plane['label']} (n={plane['n']})", fontsize=9)
    return len(planes)
