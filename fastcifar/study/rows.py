"""The study's rows and experiments, defined once, and how each row is trained.

A :class:`Row` names one line of the study's report (Table 1, Table 2 or the base methods): a row
id, the registry model and overrides that rebuild it, and how its notebook trained it when that
differs from the common recipe. The study's own figures (params, top-1/top-5, losses) are not
repeated here: :func:`study_result` reads them from the model registry (docs/models.md, "The
study's figures").

:func:`train_args` is the one recipe -> ``fastcifar.train`` flags mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastcifar.errors import UserError
from fastcifar.models.registry import StudyResult, get_entry, tiny_overrides
from fastcifar.training.config import RESUME_MAY_CHANGE

RECIPES = ("study", "uniform")
# Flags that do not change what a run computes: they may differ between attempts of one run (they
# are what fastcifar.train's --resume accepts), so they are not part of a run's identity.
RUNTIME_FLAGS = RESUME_MAY_CHANGE


@dataclass(frozen=True)
class Row:
    """One row of the study.

    ``deviations`` are the ``fastcifar.train`` flags in which the row's notebook departs from the
    common recipe (docs/models.md, "Training recipe"); ``--recipe study`` applies them,
    ``--recipe uniform`` does not.
    """

    id: str
    model: str
    overrides: dict[str, Any] = field(default_factory=dict)
    deviations: dict[str, Any] = field(default_factory=dict)
    why: str = ""


def _sk_densenet(k: int) -> Row:
    return Row(f"dense_sk_k{k}", "sk_densenet", {"k": k})


ROWS: dict[str, Row] = {
    row.id: row
    for row in (
        # Table 1 (and the base methods' SKNet and CA)
        Row("ca", "ca_mobilenetv2"),
        Row("ca_triplet", "ca_triplet"),
        Row("sknet", "sknet26_study"),
        Row("sknet_ca_post", "sknet_ca_post"),
        Row("sknet_ca_pre", "sknet_ca_pre"),
        # Table 2
        Row("densenet", "densenet121"),
        Row("dense_catsk_k2", "sk_densenet_catsk"),
        _sk_densenet(2),
        _sk_densenet(4),
        _sk_densenet(5),
        _sk_densenet(6),
        Row("dense_ca", "densenet_ca"),
        Row("dense_triplet", "densenet_triplet"),
        # The other base methods
        Row(
            "triplet_resnet",
            "triplet_resnet",
            deviations={"weight_decay": 5e-4, "lr": 0.001, "randaugment": False},
            why="TripleAttention notebook: Adam weight decay 5e-4, OneCycle max_lr 0.001, no RandAugment",
        ),
        Row(
            "van",
            "van",
            deviations={"schedule": "constant"},
            why="VAN notebook: OneCycle built but never stepped (constant lr 4e-4, Adam beta1 0.95)",
        ),
        Row("res2net", "res2net"),
    )
}

EXPERIMENTS: dict[str, tuple[str, ...]] = {
    "table1": ("ca", "ca_triplet", "sknet", "sknet_ca_post", "sknet_ca_pre"),
    "table2": (
        "densenet",
        "dense_catsk_k2",
        "dense_sk_k2",
        "dense_sk_k4",
        "dense_sk_k5",
        "dense_sk_k6",
        "dense_ca",
        "dense_triplet",
    ),
    "base": ("sknet", "ca", "triplet_resnet", "van", "res2net"),
}
EXPERIMENTS["all"] = tuple(dict.fromkeys(r for name in ("table1", "table2", "base") for r in EXPERIMENTS[name]))

# The study's claims, as (better row, worse row, what the report says). The report checks them
# with one run each; the study report says for each whether it holds over seeds.
Claim = tuple[str, str, str]


def _best_of(best: str, others: tuple[str, ...], text: str) -> tuple[Claim, ...]:
    """One claim "``best`` beats x" per ``x`` in ``others``, all with the report's ``text``."""
    return tuple((best, other, text) for other in others)


CLAIMS: dict[str, tuple[Claim, ...]] = {
    "table1": (
        ("sknet_ca_pre", "sknet", "CA before SKNet's unit improves SKNet"),
        ("sknet_ca_post", "sknet", "CA after the SK convolution improves SKNet"),
        ("sknet_ca_pre", "sknet_ca_post", "CA first is the better order"),
        ("ca_triplet", "ca", "Triplet attention improves the CA network"),
    ),
    "table2": (
        *_best_of("dense_sk_k5", ("dense_sk_k4", "dense_sk_k6", "dense_sk_k2"), "//5 is the best SK rule"),
        ("dense_sk_k2", "dense_catsk_k2", "SK between the convolutions beats SK after the concatenation"),
        ("dense_sk_k5", "densenet", "SK improves DenseNet"),
        ("dense_ca", "densenet", "CA improves DenseNet"),
        ("dense_triplet", "densenet", "Triplet attention improves DenseNet"),
    ),
    "base": _best_of("sknet", ("ca", "van", "res2net", "triplet_resnet"), "SK is the best base method"),
}
CLAIMS["all"] = tuple(dict.fromkeys(c for name in ("table1", "table2", "base") for c in CLAIMS[name]))


def study_result(row: Row) -> StudyResult:
    """The study's figures for ``row``: the registry's StudyResult whose overrides match the row's."""
    for result in get_entry(row.model).study:
        if result.overrides == row.overrides or (not result.overrides and is_default(row)):
            return result
    return StudyResult()


def is_default(row: Row) -> bool:
    """True when the row's overrides only restate the model's defaults (e.g. ``k=5``)."""
    defaults = get_entry(row.model).option_defaults()
    return all(defaults[name] == value for name, value in row.overrides.items() if name in defaults)


def select_rows(experiment: str, rows: str | tuple | list | None = None) -> list[Row]:
    """The rows of ``experiment``, or the given row ids (comma-separated or a list) in that order."""
    if experiment not in EXPERIMENTS:
        raise UserError(f"unknown --experiment {experiment!r}; choose one of: {', '.join(EXPERIMENTS)}.")
    if rows is None:
        return [ROWS[r] for r in EXPERIMENTS[experiment]]
    ids = [str(r).strip() for r in (rows.split(",") if isinstance(rows, str) else rows)]
    ids = [r for r in ids if r]
    unknown = [r for r in ids if r not in ROWS]
    if unknown or not ids:
        raise UserError(f"unknown --rows {', '.join(unknown) or '(empty)'}; choose from: {', '.join(ROWS)}.")
    return [ROWS[r] for r in dict.fromkeys(ids)]


def model_kwargs(row: Row, *, tiny: bool = False, user: dict[str, Any] | None = None) -> dict[str, Any]:
    """The row's registry overrides: tiny config (if asked) < the row's own < the user's ``--model_kwargs``.

    The row's overrides come after the tiny config so that e.g. ``k`` still tells the SK-DenseNet
    rows apart.
    """
    merged = tiny_overrides(row.model) if tiny else {}
    merged.update(row.overrides)
    merged.update(user or {})
    return merged


def train_args(
    row: Row, *, seed: int, out: str, recipe: str = "study", flags: dict[str, Any] | None = None, tiny: bool = False
) -> list[str]:
    """The ``python -m fastcifar.train`` arguments for one run of ``row``.

    Precedence: the common recipe (``fastcifar.train``'s defaults) < the row's deviations (with
    ``recipe="study"``) < the user's ``flags`` (applied to every row) < the row's model, seed and
    folder. ``flags`` may hold ``model_kwargs``; it is merged into the row's overrides.
    :data:`RUNTIME_FLAGS` are left out (see :func:`runtime_args`).
    """
    if recipe not in RECIPES:
        raise UserError(f"unknown --recipe {recipe!r}; choose one of: {', '.join(RECIPES)}.")
    flags = {name: value for name, value in (flags or {}).items() if name not in RUNTIME_FLAGS}
    user_kwargs = flags.pop("model_kwargs", None) or {}
    settings: dict[str, Any] = dict(row.deviations) if recipe == "study" else {}
    settings.update(flags)
    settings.update(arch=row.model, model_kwargs=model_kwargs(row, tiny=tiny, user=user_kwargs), seed=seed, out=out)
    return [token for name, value in settings.items() for token in _flag(name, value)]


def runtime_args(flags: dict[str, Any]) -> list[str]:
    """``--workers`` / ``--log_every`` / ``--compile_cache`` for every attempt, fresh or resumed (the
    executor adds ``--device``)."""
    return [token for name in RUNTIME_FLAGS if name != "device" for token in _flag(name, flags.get(name))]


def _flag(name: str, value: Any) -> list[str]:
    """One flag as fire reads it: ``--x`` / ``--nox`` for booleans, a Python literal otherwise."""
    if value is None:
        return []
    if isinstance(value, bool):
        return [f"--{name}" if value else f"--no{name}"]
    if isinstance(value, (tuple, list, dict)):
        value = _lists(value)
    return [f"--{name}={value!r}"]


def _lists(value: Any) -> Any:
    """Tuples as lists, recursively, so a row's overrides read the same back from JSON."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_lists(v) for v in value]
    return value
