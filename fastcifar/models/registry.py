"""The one model registry: ``@register_model`` on a builder, ``create_model(name, ...)`` to build.

A builder is a function ``builder(num_classes: int = 100, *, <overrides>) -> nn.Module``; its
keyword parameters are the overrides :func:`create_model` accepts (e.g. ``growth_rate``,
``block_config``), so a typo in an override name is caught with the list of valid ones.

Each entry also carries the study's reported figures (:class:`StudyResult`, see docs/models.md
"The study's figures") and one ``tiny`` override set: a configuration of the same family small
enough for tests, smoke runs and CPU benchmarks (``tiny_overrides(name)``).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fastcifar.errors import UserError

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class StudyResult:
    """What the study's report gives for one configuration of a model (None = not reported).

    ``overrides`` names the configuration (e.g. ``{"k": 2}``) when it is not the default one.
    ``method`` is the report's own name for the row and ``source`` where it appears ("Table 2",
    "§1.2"); ``train_loss`` / ``test_loss`` are the final losses the report gives for the base
    methods and the best model. Accuracies are percentages.
    """

    params: str | None = None
    top1: float | None = None
    top5: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    method: str = ""
    source: str = ""
    train_loss: float | None = None
    test_loss: float | None = None


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its id, builder, one-line summary, the study's figures, a tiny config."""

    name: str
    builder: Builder
    summary: str
    study: tuple[StudyResult, ...] = ()
    tiny: dict[str, Any] = field(default_factory=dict)

    def override_names(self) -> list[str]:
        """Keyword overrides the builder accepts (everything but ``num_classes``)."""
        params = inspect.signature(self.builder).parameters
        return [p for p in params if p != "num_classes"]

    def check_overrides(self, overrides: dict[str, Any], *, what: str = "options") -> None:
        """Raise :class:`UserError` naming the valid ``what`` when ``overrides`` has an unknown name."""
        valid = self.override_names()
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise UserError(
                f"model {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                f"valid {what}: {', '.join(valid) or '(none)'}."
            )


_REGISTRY: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}


def register_model(
    name: str,
    *,
    summary: str,
    aliases: tuple[str, ...] = (),
    study: tuple[StudyResult, ...] = (),
    tiny: dict[str, Any] | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator that registers ``builder`` under ``name`` (and ``aliases``).

    ``tiny`` is the family's small configuration (overrides of ``builder``), checked here so a
    renamed builder argument cannot leave a stale tiny config behind.
    """

    def decorate(builder: Builder) -> Builder:
        for key in (name, *aliases):
            if key in _REGISTRY or key in _ALIASES:
                raise ValueError(f"model id {key!r} is registered twice")
        entry = ModelEntry(name, builder, summary, study, dict(tiny or {}))
        stale = sorted(set(entry.tiny) - set(entry.override_names()))
        if stale:
            raise ValueError(f"tiny config of {name!r} names unknown overrides {stale}")
        _REGISTRY[name] = entry
        for alias in aliases:
            _ALIASES[alias] = name
        return builder

    return decorate


def _ensure_families_loaded() -> None:
    """Import every family module once so their decorators have run."""
    from fastcifar.models import (  # noqa: F401  (imported for registration side effects)
        densenet,
        mobilenet,
        res2net,
        resnet,
        sknet,
        van,
    )


def list_models(include_aliases: bool = False) -> list[str]:
    """Registered model ids, sorted; with ``include_aliases`` the aliases too."""
    _ensure_families_loaded()
    names = set(_REGISTRY)
    if include_aliases:
        names |= set(_ALIASES)
    return sorted(names)


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name`` (an id or alias); unknown names raise :class:`UserError`."""
    _ensure_families_loaded()
    canonical = _ALIASES.get(name, name)
    if canonical not in _REGISTRY:
        valid = ", ".join(list_models(include_aliases=True))
        raise UserError(f"unknown model {name!r}; choose one of: {valid}.")
    return _REGISTRY[canonical]


def tiny_overrides(name: str) -> dict[str, Any]:
    """The registered tiny configuration of ``name`` (a fresh copy): a few thousand parameters.

    ``create_model(name, **tiny_overrides(name))`` builds the same family at toy size; it keeps
    the attention layers, so tests and CPU smoke runs exercise the real code paths.
    """
    return copy.deepcopy(get_entry(name).tiny)


def create_model(name: str, num_classes: int = 100, **overrides: Any) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs; ``overrides`` adjust its configuration.

    Example: ``create_model("sk_densenet", growth_rate=4, block_config=(2, 2, 2, 2))``.
    Raises :class:`UserError` for an unknown id, an unknown override or an invalid value.
    """
    entry = get_entry(name)
    entry.check_overrides(overrides)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}.")
    return entry.builder(num_classes=num_classes, **overrides)
