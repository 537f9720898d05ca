"""``python -m fastcifar.evaluate RUN_OR_CHECKPOINT``: evaluate a trained model on a test set.

Examples::

    python -m fastcifar.evaluate runs/sk_densenet-20261128-101500              # -> RUN/eval/
    python -m fastcifar.evaluate runs/sk_densenet-20261128-101500 --tta flip --out runs/eval-flip
    python -m fastcifar.evaluate runs/x/model.json --data_root /data --device cpu --batch_size 256

Writes ``eval.json``, ``eval.md``, ``reliability.png`` and ``confusion.png`` into ``--out``
(default ``<run>/eval/``): top-1 / top-5 (without TTA equal to the run's last epoch), superclass
top-1 and the share of errors inside the right superclass, per-class accuracy, the most confused
pairs, the expected calibration error; with ``--tta flip`` also the flip-averaged figures and the
gain. A folder that already holds an ``eval.json`` is refused (the earlier results are kept). The
library is :mod:`fastcifar.evaluation`; see docs/training.md.
"""

from __future__ import annotations

from typing import Any

PROG = "fastcifar.evaluate"
__all__ = ["PROG", "evaluate", "main"]


def evaluate(
    path: str,
    data_root: str | None = None,
    dataset: str | None = None,
    tta: str = "none",
    device: str | None = None,
    batch_size: int | None = None,
    out: str | None = None,
) -> dict[str, Any]:
    """Evaluate a trained model and write eval.json, eval.md and the PNGs.

    Args:
        path: a run folder, its checkpoint.pt, or an export (model.json / model.safetensors).
        data_root: folder holding <dataset>/test.beton (default: the run's).
        dataset: cifar100, cifar10 or synthetic (default: the run's); same number of classes.
        tta: none, or flip (average the logits of each image and its mirror).
        device: cpu, cuda or cuda:N (default: cuda when available).
        batch_size: test batch size (default: the run's eval batch size).
        out: output folder (default: <folder of path>/eval); must not hold an eval.json yet.
    """
    from fastcifar.evaluation.report import evaluate as run_evaluation

    return run_evaluation(
        str(path),
        data_root=None if data_root is None else str(data_root),
        dataset=dataset,
        tta=str(tta),
        device=None if device is None else str(device),
        batch_size=batch_size,
        out=None if out is None else str(out),
    )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: ``python -m fastcifar.evaluate --help``."""
    from fastcifar.cli import run_cli

    run_cli(evaluate, PROG, argv=argv)


if __name__ == "__main__":
    main()
