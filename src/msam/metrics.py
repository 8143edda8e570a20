"""Classification metrics from a confusion matrix (rows: true class, columns: predicted).

A confusion matrix is a sum over batches and processes, so these metrics are exact under
DistributedDataParallel evaluation (one all-reduce), unlike a mean of per-batch scores.
Conventions follow scikit-learn: MCC is 0 where it is undefined, F1 is of class 1 and 0 where
there is no positive prediction or label. Both are reported x 100, as the paper does.
"""

from __future__ import annotations

import torch

METRICS = ("mcc", "f1")


def confusion_update(confusion: torch.Tensor, targets: torch.Tensor, predictions: torch.Tensor) -> None:
    classes = confusion.shape[0]
    confusion += torch.bincount(targets * classes + predictions, minlength=classes * classes).view(classes, classes)


def matthews_corrcoef(confusion: torch.Tensor) -> float:
    """The multi-class MCC (Gorodkin's R_K); for two classes the usual phi coefficient."""
    c = confusion.double()
    total, correct = c.sum(), c.trace()
    predicted, true = c.sum(0), c.sum(1)
    numerator = correct * total - (predicted * true).sum()
    denominator = torch.sqrt((total**2 - (predicted**2).sum()) * (total**2 - (true**2).sum()))
    return 0.0 if denominator == 0 else float(numerator / denominator)


def binary_f1(confusion: torch.Tensor) -> float:
    tp, fp, fn = confusion[1, 1].item(), confusion[0, 1].item(), confusion[1, 0].item()
    return 0.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def from_confusion(confusion: torch.Tensor, names) -> dict:
    """test_<name> x 100 for each requested metric."""
    values = {"mcc": matthews_corrcoef, "f1": binary_f1}
    return {f"test_{name}": 100.0 * values[name](confusion) for name in names}
