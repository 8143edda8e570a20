"""Figures with matplotlib (Agg backend: no display needed), error bars = std over seeds."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def accuracy_vs_m_figure(numbers):
    """One panel per (dataset, model): accuracy against m on a log-2 axis."""
    panels = list(numbers.groupby(["dataset", "model"], sort=True))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for axis, ((dataset, model), rows) in zip(axes[0], panels):
        axis.errorbar(rows["m"], rows["mean"], yerr=rows["std"], marker="o", capsize=3)
        axis.set_xscale("log", base=2)
        axis.set_xticks(sorted(rows["m"].unique()))
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.set_xlabel("m (micro-batches per mini-batch)")
        axis.set_ylabel("test accuracy (%)")
        axis.set_title(f"{dataset} / {model}")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def switching_figure(hybrid, reference):
    """One panel per (dataset, model): accuracy against the switch percent, one line per order."""
    panels = list(hybrid.groupby(["dataset", "model"], sort=True))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for axis, ((dataset, model), rows) in zip(axes[0], panels):
        for order, line in rows.groupby("order", sort=True):
            axis.errorbar(line["switch_percent"], line["mean"], yerr=line["std"], marker="o", capsize=3, label=order)
        same = reference[(reference["dataset"] == dataset) & (reference["model"] == model)]
        for row in same.itertuples():
            axis.axhline(row.mean, linestyle="--", linewidth=1, color="gray")
            axis.annotate(f"{row.method} throughout", (0, row.mean), fontsize=7, color="gray")
        axis.set_xlabel("switch percent (% of epochs with the first method)")
        axis.set_ylabel("test accuracy (%)")
        axis.set_title(f"{dataset} / {model}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
