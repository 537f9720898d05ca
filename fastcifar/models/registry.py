"""The one model registry: an entry per model id, ``create_model(name, ...)`` to build.

An entry is data (:class:`ModelEntry`): the id, the family's network (a class or function
``network(num_classes: int = 100, *, <options>) -> nn.Module``), the arguments that make the id
what it is (``fixed``, e.g. ``triplet=True``), its own ``defaults`` for some options, and the
study's figures. The network's other keyword parameters are the options the id accepts (e.g.
``growth_rate``, ``block_config``), so a typo in an override name is caught with the list of
valid ones, and no id restates its family's options.

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
    """A registered model: its id, network, fixed arguments, option defaults, summary, study figures, tiny config.

    ``create_model(name, **overrides)`` calls ``network(num_classes, **defaults, **overrides, **fixed)``
    (overrides replacing defaults); ``fixed`` arguments are not options of the id.
    """

    name: str
    network: Builder
    summary: str
    defaults: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    study: tuple[StudyResult, ...] = ()
    tiny: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    def override_names(self) -> list[str]:
        """The id's options: the network's keyword parameters but ``num_classes`` and ``fixed``, in order."""
        keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        params = inspect.signature(self.network).parameters.values()
        return [p.name for p in params if p.kind in keyword and p.name != "num_classes" and p.name not in self.fixed]

    def option_defaults(self) -> dict[str, Any]:
        """Every option's value when not overridden: the id's ``defaults``, else the network's own."""
        params = inspect.signature(self.network).parameters
        return {name: self.defaults.get(name, params[name].default) for name in self.override_names()}

    def check_overrides(self, overrides: dict[str, Any], *, what: str = "options") -> None:
        """Raise :class:`UserError` naming the valid ``what`` when ``overrides`` has an unknown name."""
        valid = self.override_names()
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise UserError(
                f"model {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                f"valid {what}: {', '.join(valid) or '(none)'}."
            )

    def build(self, num_classes: int, overrides: dict[str, Any]) -> nn.Module:
        """The network with ``num_classes`` outputs, the id's defaults and then ``overrides`` applied."""
        return self.network(num_classes=num_classes, **{**self.defaults, **overrides, **self.fixed})


_REGISTRY: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}


def register(entry: ModelEntry) -> ModelEntry:
    """Add ``entry`` under its id and aliases.

    Its ``defaults`` and ``tiny`` config must name options of the id and ``fixed`` parameters of
    its network, checked here so a renamed network argument cannot leave a stale entry behind.
    """
    for key in (entry.name, *entry.aliases):
        if key in _REGISTRY or key in _ALIASES:
            raise ValueError(f"model id {key!r} is registered twice")
    parameters = inspect.signature(entry.network).parameters
    for label, names, valid in (
        ("defaults", entry.defaults, entry.override_names()),
        ("tiny config", entry.tiny, entry.override_names()),
        ("fixed arguments", entry.fixed, parameters),
    ):
        stale = sorted(set(names) - set(valid))
        if stale:
            raise ValueError(f"{label} of {entry.name!r} names unknown overrides {stale}")
    _REGISTRY[entry.name] = entry
    for alias in entry.aliases:
        _ALIASES[alias] = entry.name
    return entry


def register_model(
    name: str,
    *,
    summary: str,
    aliases: tuple[str, ...] = (),
    study: tuple[StudyResult, ...] = (),
    tiny: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    fixed: dict[str, Any] | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator form of :func:`register`: ``@register_model(name, ...)`` over a network."""

    def decorate(network: Builder) -> Builder:
        register(
            ModelEntry(
                name, network, summary, dict(defaults or {}), dict(fixed or {}), study, dict(tiny or {}), aliases
            )
        )
        return network

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
    return entry.build(num_classes, overrides)
