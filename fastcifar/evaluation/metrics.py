"""Figures of a set of predictions: top-k, superclass accuracy, per-class accuracy, confusions, calibration.

Pure functions of tensors on the CPU (logits ``(N, C)`` float, labels ``(N,)`` int64); accuracies
are percentages (0..100), as everywhere in fastcifar.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

ECE_BINS = 15


def top1_predictions(logits: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` -> ``(N,)`` the top-1 class, chosen as the training's evaluation chooses it (``topk``)."""
    return logits.topk(1, dim=1).indices[:, 0]


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share (%) of rows whose label is among the ``k`` largest logits (``k`` capped at C)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return 100.0 * (top == labels[:, None]).any(dim=1).double().mean().item()


def superclass_figures(predicted: torch.Tensor, labels: torch.Tensor, fine_to_coarse: np.ndarray) -> dict[str, Any]:
    """Superclass accuracy of fine predictions, and where the fine errors land.

    Args:
        predicted, labels: ``(N,)`` fine classes.
        fine_to_coarse: ``(C,)`` the superclass of each fine class (-1: unknown, never right).
    Returns:
        ``top1``: % of images whose predicted class lies in the true class's superclass;
        ``errors_within_superclass``: % of the wrongly classified images whose prediction still lies
        in the right superclass (None when there is no error); ``errors``: their count.
    """
    mapping = torch.as_tensor(fine_to_coarse, dtype=torch.int64)
    true_coarse = mapping[labels]
    same = (mapping[predicted] == true_coarse) & (true_coarse >= 0)
    wrong = predicted != labels
    errors = int(wrong.sum())
    within = 100.0 * same[wrong].double().mean().item() if errors else None
    return {"top1": 100.0 * same.double().mean().item(), "errors_within_superclass": within, "errors": errors}


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C, C)`` int64 counts: row = true class, column = predicted class."""
    flat = labels * num_classes + predicted
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[dict[str, Any]]:
    """For each class: its test images and their top-1 accuracy (%; None for a class with no image)."""
    totals = confusion.sum(dim=1)
    return [
        {
            "class": index,
            "images": int(total),
            "top1": 100.0 * int(confusion[index, index]) / int(total) if int(total) else None,
        }
        for index, total in enumerate(totals)
    ]


def most_confused(confusion: torch.Tensor, count: int = 10) -> list[dict[str, Any]]:
    """The ``count`` largest off-diagonal cells: (true, predicted, images, % of the true class's images).

    Ties are broken by the order of (true, predicted), so the list is deterministic.
    """
    off = confusion.clone()
    off.fill_diagonal_(0)
    rows, columns = torch.nonzero(off, as_tuple=True)
    cells = [(int(off[t, p]), t, p) for t, p in zip(rows.tolist(), columns.tolist())]
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))  # most images first
    totals = confusion.sum(dim=1)
    return [{"true": t, "predicted": p, "images": n, "share": 100.0 * n / int(totals[t])} for n, t, p in cells[:count]]


def calibration(logits: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> dict[str, Any]:
    """Expected calibration error (%) of the top-1 softmax confidence, with its reliability bins.

    Confidence = the largest softmax probability; images are put in ``bins`` equal-width bins of
    confidence over (0, 1] (a confidence of exactly ``i/bins`` falls in bin ``i-1``). ECE = sum over
    bins of (images in bin / N) * |accuracy - mean confidence|, in percentage points.
    """
    probabilities = torch.softmax(logits.double(), dim=1)
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels).double()
    index = torch.clamp(torch.ceil(confidence * bins).long() - 1, 0, bins - 1)
    n = labels.shape[0]
    ece = 0.0
    table = []
    for b in range(bins):
        members = index == b
        size = int(members.sum())
        accuracy = correct[members].mean().item() if size else None
        mean_confidence = confidence[members].mean().item() if size else None
        if size:
            ece += size / n * abs(accuracy - mean_confidence)
        table.append(
            {
                "lower": b / bins,
                "upper": (b + 1) / bins,
                "images": size,
                "accuracy": None if accuracy is None else 100.0 * accuracy,
                "confidence": None if mean_confidence is None else 100.0 * mean_confidence,
            }
        )
    return {"ece": 100.0 * ece, "bins": table, "mean_confidence": 100.0 * confidence.mean().item()}


def superclass_order(fine_to_coarse: np.ndarray | None, num_classes: int) -> list[int]:
    """Classes sorted by superclass (unknown last), then by class index: the confusion plot's order."""
    if fine_to_coarse is None:
        return list(range(num_classes))
    key = [(int(c) if c >= 0 else num_classes, i) for i, c in enumerate(fine_to_coarse)]
    return [i for _, i in sorted(key)]
