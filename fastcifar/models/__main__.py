"""``python -m fastcifar.models [--markdown | --json] [--models=a,b]``: the model zoo as a table.

For every registered id (and each reported study variant, e.g. ``sk_densenet`` k=2/4/6) it prints
the parameter count, the forward GFLOPs for one 3x32x32 image (:mod:`fastcifar.models.flops`: conv,
linear and matmul only, a multiply-add = 2 FLOPs), and the study's reported params, top-1/top-5
and final train/test loss (docs/models.md, "The study's figures"). ``--json`` prints, per model,
``params``, ``forward_gflops`` and ``train_gflops`` (per image: one training step's forward +
backward) instead.
"""

from __future__ import annotations

import json as _json  # main's flag is called json
from dataclasses import dataclass

from fastcifar.cli import run_cli
from fastcifar.errors import UserError
from fastcifar.models.flops import count_model, count_params, forward_flops, meta_model
from fastcifar.models.registry import StudyResult, get_entry, list_models


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    label: str
    params: int
    gflops: float
    study: StudyResult


def _label(name: str, overrides: dict) -> str:
    return name + "".join(f" {k}={v}" for k, v in overrides.items())


def build_rows(names: list[str]) -> list[Row]:
    """Measure every id in ``names`` (plus the study variants it lists), with a progress bar."""
    from tqdm import tqdm

    jobs = []
    for name in names:
        entry = get_entry(name)
        studies = entry.study or (StudyResult(),)
        for study in studies:
            jobs.append((entry.name, study))
    rows = []
    for name, study in tqdm(jobs, desc="measuring models", unit="model", leave=False):
        model = meta_model(name, **study.overrides)
        rows.append(Row(_label(name, study.overrides), count_params(model), forward_flops(model) / 1e9, study))
    return rows


def _fmt(value: float | str | None, spec: str = "") -> str:
    if value is None:
        return "–"
    return format(value, spec) if spec else str(value)


def render(rows: list[Row], markdown: bool = False) -> str:
    """The table as aligned text or as GitHub markdown."""
    header = [
        "id",
        "params",
        "GFLOPs/img",
        "study params",
        "study top-1",
        "study top-5",
        "study train loss",
        "study test loss",
        "note",
    ]
    body = [
        [
            r.label,
            f"{r.params:,}",
            f"{r.gflops:.3f}",
            _fmt(r.study.params),
            _fmt(r.study.top1, "g"),
            _fmt(r.study.top5, "g"),
            _fmt(r.study.train_loss, "g"),
            _fmt(r.study.test_loss, "g"),
            r.study.note,
        ]
        for r in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * 7 + ["---"]) + "|"]
        lines += ["| " + " | ".join(f"`{c}`" if i == 0 else c for i, c in enumerate(row)) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    right = {1, 2, 3, 4, 5, 6, 7}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def flop_table(names: list[str]) -> dict[str, dict[str, float | int]]:
    """Label -> ``params``, ``forward_gflops``, ``train_gflops`` per image, for ``names`` and their study variants."""
    from tqdm import tqdm

    jobs = [(entry.name, study) for entry in map(get_entry, names) for study in (entry.study or (StudyResult(),))]
    return {
        _label(name, study.overrides): count_model(name, **study.overrides).as_json()
        for name, study in tqdm(jobs, desc="counting FLOPs", unit="model", leave=False)
    }


def main(markdown: bool = False, json: bool = False, models: str | tuple | list | None = None) -> None:
    """Print the model table.

    Args:
        markdown: print a GitHub markdown table instead of aligned text.
        json: print per model ``params``, ``forward_gflops`` and ``train_gflops`` (per image) as JSON.
        models: comma-separated ids to include (default: all).
    """
    if markdown and json:
        raise UserError("--markdown and --json exclude each other; give one.")
    if models is None:
        names = list_models()
    else:
        names = [m.strip() for m in (models.split(",") if isinstance(models, str) else models)]
        names = [m for m in names if m]
        if not names:
            raise UserError("--models is empty; give comma-separated ids from list_models().")
        for name in names:
            get_entry(name)  # validate before the slow part
    if json:
        print(_json.dumps(flop_table(names), indent=2))
        return
    print(render(build_rows(names), markdown=markdown))


def cli(argv: list[str] | None = None) -> None:
    """Command-line entry: :func:`main` through fire (flags checked first by :func:`run_cli`)."""
    run_cli(main, PROG, argv=argv)


PROG = "fastcifar.models"

if __name__ == "__main__":
    cli()
