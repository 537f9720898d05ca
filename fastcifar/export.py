"""``python -m fastcifar.export RUN``: write a run's ``model.safetensors`` + ``model.json``.

Every run that finishes writes them itself; this command does it for runs that finished before
(or rewrites them: the content depends only on the checkpoint, so it comes out the same). Load the
result with ``fastcifar.load_model("RUN/model.json")``; see :mod:`fastcifar.evaluation.export`.
"""

from __future__ import annotations

PROG = "fastcifar.export"
__all__ = ["PROG", "export", "main"]


def export(path: str) -> None:
    """Write <run>/model.safetensors (weights only) and <run>/model.json from the run's checkpoint.

    Args:
        path: the folder of a run of fastcifar.train.
    """
    from fastcifar.evaluation.export import export_run

    export_run(str(path))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: ``python -m fastcifar.export --help``."""
    from fastcifar.cli import run_cli

    run_cli(export, PROG, argv=argv)


if __name__ == "__main__":
    main()
