"""``python -m fastcifar.train``: train a model of the registry with the study's recipe.

Defaults reproduce the study: 30 epochs, batch 256, Adam (0.9, 0.999), OneCycleLR max 0.01 stepped
every batch (pct_start 0.3, beta1 cycled), plain cross-entropy, RandAugment(2, 10) + flip +
reflect-crop, ImageNet mean/std, evaluation on the full test set after every epoch.

Examples::

    python -m fastcifar.train --arch sk_densenet                 # study recipe, gpu loader, eager fp32
    python -m fastcifar.train --arch sk_densenet --fast          # compile + channels_last + bf16 + Triton
    python -m fastcifar.train --arch sk_densenet --baseline      # the study's pipeline: eager fp32, torch loader
    python -m fastcifar.train --resume runs/sk_densenet-20261128-101500
    torchrun --nproc_per_node=4 -m fastcifar.train --arch sk_densenet --fast

Every epoch writes ``<out>/metrics.jsonl``, TensorBoard scalars (``<out>/tb``), ``<out>/curves.png``
and ``<out>/checkpoint.pt``; the end of the run writes ``<out>/summary.json``.

The flags are the fields of :class:`fastcifar.training.config.TrainConfig` plus ``--resume``, ``--fast`` and
``--baseline``; the run itself is :mod:`fastcifar.training.run`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastcifar.cli import Command, command, run_cli
from fastcifar.errors import UserError
from fastcifar.preemption import PREEMPTED_EXIT_CODE
from fastcifar.training.config import TrainConfig, command_flags, resolve_config

PROG = "fastcifar.train"
__all__ = ["PROG", "TrainConfig", "main", "resolve_config", "train", "train_command"]


def train(*, batch_hook: Callable[[str, Any, Any], None] | None = None, **flags: Any) -> dict[str, Any]:
    """Train with the given flags (the names of ``python -m fastcifar.train --help``); return the summary.

    The summary is also written to ``<out>/summary.json``; after Ctrl-C the result is
    ``{"interrupted": True, ...}`` instead (after SIGTERM, SIGUSR1 or SIGHUP also ``"preempted"``: the
    signal's name; the command line then exits 75). ``resume=RUN_FOLDER`` continues a run with its saved
    config. ``batch_hook(split, images, labels)``, when given, sees every train and test batch
    (``split`` is ``"train"`` or ``"test"``): a hook for tests and debugging, not a flag.
    """
    from fastcifar.training.config import check_flag_names

    check_flag_names(flags)
    resume = flags.pop("resume", None)
    if resume is None or resume is False:
        config = resolve_config(**flags)
        from fastcifar.training import run as run_module  # torch and the data stack: after the flags are checked

        return run_module.start(config, batch_hook=batch_hook)
    if resume is True:  # `--resume --out DIR`
        resume = flags.pop("out", None)
        if resume is None:
            raise UserError("--resume without a folder needs --out RUN_FOLDER (or pass --resume RUN_FOLDER).")
    if not isinstance(resume, (str, Path)) or not str(resume):
        raise UserError(f"--resume takes a run folder, got {resume!r}.")
    folder = Path(resume).expanduser()
    if not (folder / "checkpoint.pt").is_file():  # checked before the (slow) torch import
        raise UserError(f"no checkpoint at {folder / 'checkpoint.pt'}: pass the folder of a run started by {PROG}")
    from fastcifar.training import run as run_module

    # A complete checkpoint is finished (whatever a cut-short end did not write), then exits 0.
    return run_module.resume(folder, flags, batch_hook=batch_hook)


def train_command(batch_hook: Callable[[str, Any, Any], None] | None = None) -> Command:
    """The command line: :func:`train` with TrainConfig's flags (fastcifar.cli checks, parses, prints --help)."""

    def command_line_train(**flags: Any) -> None:
        result = train(batch_hook=batch_hook, **flags)
        if result.get("preempted"):  # saved after SIGTERM / SIGUSR1 / SIGHUP: a status that says so
            raise SystemExit(PREEMPTED_EXIT_CODE)

    return command(command_line_train, flags=command_flags(), summary=__doc__.split("\n\n")[0].split(": ", 1)[1])


def main(argv: list[str] | None = None, *, batch_hook: Callable[[str, Any, Any], None] | None = None) -> None:
    """Command-line entry: ``python -m fastcifar.train --help``.

    ``batch_hook`` is passed to :func:`train` (a test entry point runs this under torchrun with one).
    """
    run_cli(train_command(batch_hook), PROG, argv=argv)


if __name__ == "__main__":
    main()
