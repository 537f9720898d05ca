"""The evaluation's figures: reliability diagram and confusion matrix (PNG, matplotlib Agg, atomic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fastcifar.atomic import atomic_path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    """Write ``fig`` atomically; no software/date metadata, so equal figures give equal files."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})


def reliability_diagram(calibration: dict[str, Any], path: Path, title: str) -> None:
    """Accuracy per confidence bin against the diagonal of perfect calibration, with the ECE."""
    plt = _pyplot()
    bins = calibration["bins"]
    width = bins[0]["upper"] - bins[0]["lower"]
    centres = [100 * (b["lower"] + width / 2) for b in bins]
    accuracy = [b["accuracy"] or 0.0 for b in bins]
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=[3, 1], sharex=True)
    ax.bar(centres, accuracy, width=100 * width, edgecolor="black", linewidth=0.5, label="accuracy")
    ax.plot([0, 100], [0, 100], linestyle="--", color="grey", label="perfect calibration")
    ax.set(ylabel="accuracy (%)", xlim=(0, 100), ylim=(0, 100), title=f"{title}\nECE {calibration['ece']:.2f}%")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    ax_count.bar(centres, [b["images"] for b in bins], width=100 * width, color="grey")
    ax_count.set(xlabel="top-1 confidence (%)", ylabel="images")
    fig.tight_layout()
    try:
        _save(fig, path)
    finally:
        plt.close(fig)


def confusion_plot(
    confusion: torch.Tensor,
    order: list[int],
    path: Path,
    *,
    title: str,
    class_names: list[str] | None = None,
    groups: list[int] | None = None,
    group_names: list[str] | None = None,
) -> None:
    """Row-normalised confusion matrix ``(C, C)`` with classes in ``order``; lines between superclasses.

    ``groups``: the superclass of each class (in class-index order), for the separating lines and
    the superclass labels on the left; None draws no lines.
    """
    plt = _pyplot()
    index = torch.tensor(order)
    counts = confusion[index][:, index].double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    size = len(order)
    fig, ax = plt.subplots(figsize=(11, 10))
    image = ax.imshow(rates.numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    # Colour bar on top: the superclass names take the right-hand side.
    fig.colorbar(image, ax=ax, location="top", fraction=0.03, pad=0.02, label="share of the true class's images")
    ax.set(xlabel="predicted class", ylabel="true class")
    fig.suptitle(title)
    if class_names is not None and size <= 100:
        labels = [class_names[i] for i in order]
        ax.set_xticks(range(size), labels, rotation=90, fontsize=4)
        ax.set_yticks(range(size), labels, fontsize=4)
    if groups is not None:
        ordered = [groups[i] for i in order]
        starts = [i for i in range(size) if i == 0 or ordered[i] != ordered[i - 1]]
        for start in starts[1:]:
            ax.axhline(start - 0.5, color="white", linewidth=0.6)
            ax.axvline(start - 0.5, color="white", linewidth=0.6)
        if group_names:
            ends = [*starts[1:], size]
            for start, end in zip(starts, ends):
                group = ordered[start]
                name = group_names[group] if 0 <= group < len(group_names) else "unknown"
                ax.text(size + 0.5, (start + end - 1) / 2, name, fontsize=5, va="center")
    fig.tight_layout()
    try:
        _save(fig, path)
    finally:
        plt.close(fig)
