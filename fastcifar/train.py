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

The flags are the fields of :class:`fastcifar.config.TrainConfig` plus ``--resume``, ``--fast`` and
``--baseline``; the run itself is :mod:`fastcifar.run`.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastcifar.config import EXTRA_FLAGS, TrainConfig, config_fields, default_value, flag_help, resolve_config
from fastcifar.errors import UserError

PROG = "fastcifar.train"
__all__ = ["PROG", "TrainConfig", "main", "resolve_config", "train"]


def train(*, batch_hook: Callable[[str, Any, Any], None] | None = None, **flags: Any) -> dict[str, Any]:
    """Train with the given flags (the names of ``python -m fastcifar.train --help``); return the summary.

    The summary is also written to ``<out>/summary.json``; after Ctrl-C the result is
    ``{"interrupted": True, ...}`` instead. ``resume=RUN_FOLDER`` continues a run with its saved
    config. ``batch_hook(split, images, labels)``, when given, sees every train and test batch
    (``split`` is ``"train"`` or ``"test"``): a hook for tests and debugging, not a flag.
    """
    from fastcifar.config import check_flag_names, resumed_config

    check_flag_names(flags)
    resume = flags.pop("resume", None)
    if resume is None or resume is False:
        config = resolve_config(**flags)
        from fastcifar import run as run_module  # torch and the data stack: after the flags are checked

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
    from fastcifar import checkpoint as ckpt
    from fastcifar import run as run_module

    state = ckpt.load_checkpoint(ckpt.checkpoint_path(folder))
    config = resumed_config(state["config"], str(folder), flags)
    if int(state["epoch"]) >= config.epochs:
        raise UserError(f"the run in {folder} already finished all {config.epochs} epochs; start a new run.")
    return run_module.run(config, resume_state=state, batch_hook=batch_hook)


# ------------------------------------------------------------------------------------------
# Command line: fire, with a signature and --help built from TrainConfig


def _is_flag(token: str) -> bool:
    """fire's notion of a flag: a leading hyphen, unless the token is a negative number."""
    return token.startswith("-") and re.fullmatch(r"-\d+(\.\d*)?([eE][-+]?\d+)?", token) is None


def given_flag_names(argv: list[str]) -> list[str]:
    """The flag names on a command line, checked before any work starts.

    Rejects (UserError) unknown flags, stray positional arguments (``--out x 3`` must not quietly
    set some parameter to 3) and anything after ``--`` (fire's own options). A ``--name`` without
    ``=`` takes the next token as its value unless that is a flag too (then it means true), as in fire.
    """
    known = flag_help()
    names = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "--":
            raise UserError(f"nothing may follow --; pass flags as --name value (see python -m {PROG} --help).")
        if token in ("--help", "-h"):
            index += 1
            continue
        if not _is_flag(token):
            raise UserError(f"unexpected argument {token!r}: every value needs its flag, e.g. --lr 0.01.")
        name, has_value = token.lstrip("-").split("=", 1)[0].replace("-", "_"), "=" in token
        is_bool = not has_value and (index + 1 == len(argv) or _is_flag(argv[index + 1]))
        if is_bool and name not in known and name.startswith("no") and name[2:] in known:
            name = name[2:]
        shortcut = [flag for flag in known if flag[0] == name] if len(name) == 1 and not token.startswith("--") else []
        if len(shortcut) == 1:  # fire's one-letter form of a flag (--help lists them, e.g. -o for --out)
            name = shortcut[0]
        if name not in known or (not token.startswith("--") and not shortcut):
            raise UserError(
                f"unknown flag {token.split('=', 1)[0]}; valid flags: " + ", ".join(f"--{n}" for n in known) + "."
            )
        names.append(name)
        index += 1 if has_value or is_bool else 2
    return names


def _command_docstring() -> str:
    lines = [__doc__.split("\n\n")[0].split(": ", 1)[1], "", "Args:"]
    lines += [f"    {name}: {text}" for name, text in flag_help().items()]
    return "\n".join(lines) + "\n"


def _command_signature() -> inspect.Signature:
    """Keyword-only parameters, one per flag, with TrainConfig's defaults (what --help shows)."""
    types = {"str": str, "int": int, "float": float, "bool": bool, "dict[str, Any]": dict}
    parameters = [
        inspect.Parameter(
            spec.name, inspect.Parameter.KEYWORD_ONLY, default=default_value(spec),
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
    if argv is not None:
        sys.argv = [sys.argv[0], *args]

    def command(**flags: Any) -> None:
        given = set(given_flag_names(args))
        # fire fills in the signature's defaults; only the flags on the command line count as given
        # (presets and --resume tell given flags from defaults).
        train(batch_hook=batch_hook, **{name: value for name, value in flags.items() if name in given})

    command.__signature__ = _command_signature()  # type: ignore[attr-defined]
    command.__doc__ = _command_docstring()
    command.__name__ = "train"
    # Fail before fire parses anything (and before torch is imported).
    run_cli(command, PROG, check=lambda: given_flag_names(args))


if __name__ == "__main__":
    main()
