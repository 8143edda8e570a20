"""Test-set evaluation: loss, accuracy and the data set's extra metrics, summed over the processes."""

from __future__ import annotations

import torch

from msam import dist
from msam.methods.base import model_output
from msam.metrics import confusion_update, from_confusion
from msam.precision import Precision


@torch.no_grad()
def evaluate(model, loader, device, precision: Precision, ctx: dist.DistContext, num_classes: int, metrics=()) -> dict:
    """Test loss (plain cross-entropy, no label smoothing), accuracy and the data set's extra
    metrics (msam.metrics, from a confusion matrix), in eval mode, summed over the processes."""
    model.eval()
    totals = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, correct, count
    confusion = torch.zeros(num_classes, num_classes, device=device, dtype=torch.float64)
    for inputs, targets in loader.epoch(0):
        with precision.forward():
            logits = model_output(model, inputs)
        totals[0] += torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
        totals[1] += (logits.argmax(1) == targets).sum()
        totals[2] += targets.shape[0]
        if metrics:
            confusion_update(confusion, targets, logits.argmax(1))
    model.train()
    dist.all_reduce_sum([totals, confusion] if metrics else [totals], ctx)
    loss_sum, correct, count = totals.tolist()
    return {"test_loss": loss_sum / count, "test_acc": 100.0 * correct / count, **from_confusion(confusion, metrics)}
