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

import inspect
import sys
from collections.abc import Callable
from typing import Any

from fastcifar.errors import UserError

PROG = "fastcifar.evaluate"
__all__ = ["PROG", "check_path_and_flags", "evaluate", "main"]


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


def check_path_and_flags(argv: list[str], function: Callable[..., Any], what: str, prog: str) -> None:
    """A command taking one path first, then flags: UserError (one line) for anything else.

    (fastcifar.cli's check forbids positional words; here the first word is the path.)
    """
    from fastcifar.cli import check_arguments

    if any(token in ("-h", "--help") for token in argv):
        return
    if not argv or argv[0].startswith("-"):
        raise UserError(f"give {what} first, e.g. python -m {prog} runs/<run> [flags].")
    flags = [name for name in inspect.signature(function).parameters if name != "path"]
    check_arguments(argv[1:], flags)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: ``python -m fastcifar.evaluate --help``."""
    from fastcifar.cli import run_cli

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        check_path_and_flags(args, evaluate, "the run folder, checkpoint or export to evaluate", PROG)
    except UserError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    run_cli(evaluate, PROG, argv=args, check=False)


if __name__ == "__main__":
    main()
