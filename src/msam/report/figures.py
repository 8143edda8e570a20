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
