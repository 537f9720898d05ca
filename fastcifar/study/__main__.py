"""``python -m fastcifar.study list | run | report``: reproduce the study's tables with seeds.

python -m fastcifar.study list
python -m fastcifar.study run --experiment table2 --seeds 3 --out runs/study-table2 [--fast ...]
python -m fastcifar.study report runs/study-table2
"""

from __future__ import annotations

from typing import Any

from fastcifar.cli import Command, command, run_cli
from fastcifar.errors import UserError

PROG = "fastcifar.study"


def list_experiments() -> None:
    """Print the experiments, their rows and each row's model, overrides and recipe deviations."""
    from fastcifar.study.rows import EXPERIMENTS, ROWS, study_result

    for name, members in EXPERIMENTS.items():
        print(f"{name}: {', '.join(members)}")
    print()
    width = max(len(r) for r in ROWS)
    for row in ROWS.values():
        study = study_result(row)
        figures = "/".join("–" if v is None else f"{v:g}" for v in (study.top1, study.top5))
        overrides = "".join(f" {k}={v}" for k, v in row.overrides.items())
        deviations = f"; notebook recipe: {row.why}" if row.deviations else ""
        print(
            f"{row.id:<{width}}  {row.model}{overrides}: {study.method or '-'} (study {study.params or '–'}, "
            f"top-1/top-5 {figures}){deviations}"
        )


def run(
    experiment: str = "all",
    seeds: int = 3,
    out: str | None = None,
    rows: Any = None,
    recipe: str = "study",
    executor: str = "local",
    ray_address: str | None = None,
    devices: Any = None,
    tiny: bool = False,
    plan: bool = False,
    **train_flags: Any,
) -> None:
    """Train every (row, seed) of an experiment that is not finished yet, then write the report.

    Args:
        experiment: table1, table2, base or all (``list`` shows their rows).
        seeds: runs per row, with seeds 0..seeds-1.
        out: the study folder (default ``runs/study-<experiment>``); runs go to ``<out>/<row>/seed<k>/``.
        rows: comma-separated row ids instead of the experiment's rows.
        recipe: ``study`` (each row as its notebook trained it) or ``uniform`` (the common recipe).
        executor: ``local`` (one run at a time per device) or ``ray`` (one task per run on a cluster).
        ray_address: the Ray cluster to join (default: start a local one).
        devices: GPU indices for the local executor, e.g. 0,1 (default: every visible GPU).
        tiny: use each model's tiny configuration (smoke runs and tests).
        plan: print each row's device hours (from measured step times where a GPU run recorded them,
            else from the computed roofline floor at a stated efficiency) and run nothing.
        train_flags: any ``fastcifar.train`` flag, applied to every row (--epochs, --fast, --dataset, ...).
    """
    if plan:
        from fastcifar.study.cost import plan_table
        from fastcifar.study.rows import select_rows

        selected = select_rows(experiment, rows)
        print(
            plan_table(
                selected, seeds=seeds, epochs=int(train_flags.get("epochs", 30)), fast=bool(train_flags.get("fast"))
            )
        )
        return
    from fastcifar.study.runner import run as run_study

    report = run_study(
        experiment=experiment,
        seeds=seeds,
        out=out,
        rows=rows,
        recipe=recipe,
        executor=executor,
        ray_address=ray_address,
        devices=devices,
        tiny=tiny,
        **train_flags,
    )
    if any(r["status"] != "finished" for r in report["runs"]):
        raise SystemExit(1)


def report(folder: str) -> None:
    """Rebuild ``<folder>/study.md``, ``study.json`` and the figures from the run folders."""
    from pathlib import Path

    from fastcifar.study.report import write_report

    if not Path(folder).is_dir():
        raise UserError(f"no study folder at {folder}.")
    write_report(folder)
    print(f"report: {Path(folder) / 'study.md'}")


def commands() -> dict[str, Command]:
    """The subcommands; ``run`` also takes every training flag (passed on to each run, checked by the runner)."""
    from fastcifar.training.config import command_flags

    return {
        "list": command(list_experiments),
        "run": command(run, extra_flags=command_flags()),
        "report": command(report),
    }


def main(argv: list[str] | None = None) -> None:
    """Command-line entry."""
    run_cli(commands(), PROG, argv=argv)


if __name__ == "__main__":
    main()
