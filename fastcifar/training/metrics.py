"""Per-epoch metrics of a run: metrics.jsonl, TensorBoard scalars, curves.png, summary.json.

Accuracies are percentages (0..100). All files are written by rank 0 only; callers construct a
:class:`RunLogger` with ``enabled=False`` on other ranks.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fastcifar.atomic import atomic_path, write_json_atomic, write_text_atomic
from fastcifar.environment import versions

ACCURACY_THRESHOLDS = (50.0, 60.0, 70.0, 75.0)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of an append-only log such as metrics.jsonl ([] when absent).

    A kill while appending leaves a half-written last line (no final newline): it is dropped, as the
    row it would have held was never complete. A damaged line anywhere else is a UserError.
    """
    from fastcifar.errors import UserError

    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):  # the unterminated last line of an interrupted append
                break
            raise UserError(
                f"{path} line {number} is damaged (not valid JSON); restore the file or delete the run folder."
            ) from None
    return rows


def time_to_thresholds(
    history: Sequence[dict[str, Any]], thresholds: Iterable[float] = ACCURACY_THRESHOLDS
) -> dict[str, float | None]:
    """Cumulative run seconds (train + eval) until top-1 first reached each threshold, else None."""
    reached: dict[str, float | None] = {}
    for threshold in thresholds:
        elapsed = 0.0
        reached[f"{threshold:g}"] = None
        for row in history:
            elapsed += row["epoch_seconds"]
            if row["top1"] >= threshold:
                reached[f"{threshold:g}"] = round(elapsed, 3)
                break
    return reached


def summarize(history: Sequence[dict[str, Any]], config: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The run's summary.json content from its per-epoch rows."""
    if not history:
        raise ValueError("summarize needs at least one epoch")
    last = history[-1]
    epoch_seconds = [row["epoch_seconds"] for row in history]
    train_seconds = sum(row["train_seconds"] for row in history)
    compile_seconds = sum(row.get("compile_seconds", 0.0) for row in history)
    images = sum(row["train_images"] for row in history)
    # Each row's images_per_s already leaves out its first step's warm-up excess.
    timed_seconds = sum(row["train_images"] / row["images_per_s"] for row in history)
    steady = [row["images_per_s"] for row in history[1:]] or [history[0]["images_per_s"]]
    return {
        "epochs": len(history),
        "final_top1": last["top1"],
        "final_top5": last["top5"],
        "final_test_loss": last["test_loss"],
        "final_train_loss": last["train_loss"],
        "best_top1": max(row["top1"] for row in history),
        "best_top1_epoch": max(history, key=lambda row: row["top1"])["epoch"],
        "best_top5": max(row["top5"] for row in history),
        "total_seconds": round(sum(epoch_seconds), 3),
        "train_seconds": round(train_seconds, 3),
        "epoch_seconds": [round(s, 3) for s in epoch_seconds],
        "mean_epoch_seconds": round(statistics.fmean(epoch_seconds), 3),
        # Over all epochs, with the compile/warm-up excess of the first steps taken out.
        "images_per_s": round(images / max(timed_seconds, 1e-9), 1),
        "warmup_seconds": round(sum(row.get("warmup_seconds", 0.0) for row in history), 3),
        # Median of the per-epoch figures after the first epoch (the first one pays warm-up).
        "images_per_s_steady": round(statistics.median(steady), 1),
        "compile_seconds": round(compile_seconds, 3),
        "time_to_top1_seconds": time_to_thresholds(history),
        "config": config,
        "versions": versions(),
        **extra,
    }


# Files a RunLogger writes (atomically, except the appended metrics.jsonl).
RUN_FILES = ("metrics.jsonl", "curves.png", "summary.json")


class RunLogger:
    """Writes everything a run records per epoch into its folder (no-op when disabled).

    Nothing is created before the first :meth:`log_epoch` (or :meth:`restart_from`), so a run that
    fails before finishing an epoch leaves no metrics.jsonl or tb/ behind.
    """

    def __init__(self, out: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.out = Path(out)
        self.enabled = enabled
        self.tensorboard = tensorboard
        self.metrics_path = self.out / "metrics.jsonl"
        self.curves_path = self.out / "curves.png"
        self.summary_path = self.out / "summary.json"
        self._tb = None

    def _writer(self):
        """The TensorBoard writer, created (with tb/) on first use."""
        if self._tb is None and self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.out / "tb"))
        return self._tb

    def restart_from(self, history: Sequence[dict[str, Any]]) -> None:
        """Make metrics.jsonl hold exactly ``history`` (used on resume: drops rows past the checkpoint)."""
        if not self.enabled:
            return
        text = "".join(json.dumps(row) + "\n" for row in history)
        write_text_atomic(self.metrics_path, text)

    def log_epoch(self, row: dict[str, Any], history: Sequence[dict[str, Any]]) -> None:
        """Append ``row`` to metrics.jsonl, write its TensorBoard scalars, redraw curves.png."""
        if not self.enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self._writer() is not None:
            step = row["epoch"]
            self._tb.add_scalars("loss", {"train": row["train_loss"], "test": row["test_loss"]}, step)
            self._tb.add_scalars("accuracy", {"top1": row["top1"], "top5": row["top5"]}, step)
            for key in ("lr", "images_per_s", "epoch_seconds"):
                self._tb.add_scalar(key, row[key], step)
            self._tb.flush()
        plot_curves(history, self.curves_path)

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.enabled:
            write_json_atomic(self.summary_path, summary)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def plot_curves(history: Sequence[dict[str, Any]], path: Path) -> None:
    """Three panels like the study's Figure 6: loss (train/test), accuracy (top-1/top-5), lr."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(15, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in history], marker="o", label="test")
    ax_loss.set(title="cross-entropy loss", xlabel="epoch", ylabel="loss")
    ax_acc.plot(epochs, [r["top1"] for r in history], marker="o", label="top-1")
    ax_acc.plot(epochs, [r["top5"] for r in history], marker="o", label="top-5")
    ax_acc.set(title="test accuracy", xlabel="epoch", ylabel="%")
    ax_lr.plot(epochs, [r["lr"] for r in history], marker="o")
    ax_lr.set(title="learning rate (last step of epoch)", xlabel="epoch", ylabel="lr")
    for ax in (ax_loss, ax_acc):
        ax.legend()
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
