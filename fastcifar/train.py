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

import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastcifar.errors import UserError
from fastcifar.preemption import PREEMPTED_EXIT_CODE
from fastcifar.training.config import EXTRA_FLAGS, TrainConfig, config_fields, default_value, flag_help, resolve_config

PROG = "fastcifar.train"
__all__ = ["PROG", "TrainConfig", "main", "resolve_config", "train"]


def train(*, batch_hook: Callable[[str, Any, Any], None] | None = None, **flags: Any) -> dict[str, Any]:
    """Train with the given flags (the names of ``python -m fastcifar.train --help``); return the summary.

    The summary is also written to ``<out>/summary.json``; after Ctrl-C the result is
    ``{"interrupted": True, ...}`` instead (after SIGTERM, SIGUSR1 or SIGHUP also ``"preempted"``: the
    signal's name; the command line then exits 75). ``resume=RUN_FOLDER`` continues a run with its saved
    config. ``batch_hook(split, images, labels)``, when given, sees every train and test batch
    (``split`` is ``"train"`` or ``"test"``): a hook for tests and debugging, not a flag.
    """
    from fastcifar.training.config import check_flag_names, resumed_config

    check_flag_names(flags)
    resume = flags.pop("resume", None)
    if resume is None or resume is False:
        config = resolve_config(**flags)
        from fastcifar.training import run as run_module  # torch and the data stack: after the flags are checked

        run_module.refuse_existing_run(config.out)
        return run_module.run(config, batch_hook=batch_hook)
    if resume is True:  # `--resume --out DIR`
        resume = flags.pop("out", None)
        if resume is None:
            raise UserError("--resume without a folder needs --out RUN_FOLDER (or pass --resume RUN_FOLDER).")
    if not isinstance(resume, (str, Path)) or not str(resume):
        raise UserError(f"--resume takes a run folder, got {resume!r}.")
    folder = Path(resume).expanduser()
    if not (folder / "checkpoint.pt").is_file():  # checked before the (slow) torch import
        raise UserError(f"no checkpoint at {folder / 'checkpoint.pt'}: pass the folder of a run started by {PROG}")
    from fastcifar.training import checkpoint as ckpt
    from fastcifar.training import run as run_module

    state = ckpt.load_checkpoint(ckpt.checkpoint_path(folder))
    config = resumed_config(state["config"], str(folder), flags)
    if int(state["epoch"]) >= config.epochs:
        raise UserError(f"the run in {folder} already finished all {config.epochs} epochs; start a new run.")
    return run_module.run(config, resume_state=state, batch_hook=batch_hook)


# ------------------------------------------------------------------------------------------
# Command line: fire, with a signature and --help built from TrainConfig


def given_flag_names(argv: list[str]) -> list[str]:
    """The flag names on a command line, checked before any work starts (see :func:`fastcifar.cli.check_arguments`)."""
    from fastcifar.cli import check_arguments

    return check_arguments(argv, list(flag_help()))


def _command_docstring() -> str:
    lines = [__doc__.split("\n\n")[0].split(": ", 1)[1], "", "Args:"]
    lines += [f"    {name}: {text}" for name, text in flag_help().items()]
    return "\n".join(lines) + "\n"


def _command_signature() -> inspect.Signature:
    """Keyword-only parameters, one per flag, with TrainConfig's defaults (what --help shows)."""
    types = {"str": str, "int": int, "float": float, "bool": bool, "dict[str, Any]": dict}
    parameters = [
        inspect.Parameter(
            spec.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=default_value(spec),
            annotation=types[str(spec.type).removesuffix(" | None")],
        )
        for spec in config_fields()
    ]
    extras = {"resume": (None, str), "fast": (False, bool), "baseline": (False, bool)}
    parameters += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=extras[name][0], annotation=extras[name][1])
        for name in EXTRA_FLAGS
    ]
    return inspect.Signature(parameters)


def main(argv: list[str] | None = None, *, batch_hook: Callable[[str, Any, Any], None] | None = None) -> None:
    """Command-line entry: ``python -m fastcifar.train --help``.

    ``batch_hook`` is passed to :func:`train` (a test entry point runs this under torchrun with one).
    """
    from fastcifar.cli import run_cli

    args = sys.argv[1:] if argv is None else list(argv)

    def command(**flags: Any) -> None:
        given = set(given_flag_names(args))
        # fire fills in the signature's defaults; only the flags on the command line count as given
        # (presets and --resume tell given flags from defaults).
        result = train(batch_hook=batch_hook, **{name: value for name, value in flags.items() if name in given})
        if result.get("preempted"):  # saved after SIGTERM / SIGUSR1 / SIGHUP: a status that says so
            raise SystemExit(PREEMPTED_EXIT_CODE)

    command.__signature__ = _command_signature()  # type: ignore[attr-defined]
    command.__doc__ = _command_docstring()
    command.__name__ = "train"
    # run_cli checks the arguments against this signature before fire parses them (and before torch is imported).
    run_cli(command, PROG, argv=args)


if __name__ == "__main__":
    main()
