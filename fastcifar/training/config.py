"""The training flags: :class:`TrainConfig` is their one list (name, default, help, check).

``python -m fastcifar.train`` builds its command-line signature and ``--help`` from the dataclass
fields, :func:`resolve_config` checks given flags against the same fields, and the resolved
config is what every checkpoint and summary.json records. Three flags are not part of the
config: ``--resume`` (which run to continue) and the presets ``--fast`` / ``--baseline``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fastcifar.cli import Flag, to_bool, to_float, to_int, to_mapping
from fastcifar.environment import is_rank_zero
from fastcifar.errors import UserError

# numpy's legacy seeding (np.random.seed) takes seeds below 2**32.
MAX_SEED = 2**32 - 1
# Flags that may differ when a run is resumed: where and how fast it runs, not what it computes.
# data_root: a moved data folder; the run checks that the data found there is the data it trained on.
RESUME_MAY_CHANGE = ("device", "workers", "log_every", "compile_cache", "data_root")
# Flags that are not TrainConfig fields, with their help.
EXTRA_FLAGS = {
    "resume": "run folder to continue (or --resume with --out DIR); other flags may be repeated with their saved "
    "values, and only " + ", ".join(f"--{name}" for name in RESUME_MAY_CHANGE) + " may change",
    "fast": "preset: compile + channels_last + bf16 + Triton kernels + gpu loader (on a CPU: NCHW, PyTorch layers)",
    "baseline": "preset: the study's pipeline: eager fp32 NCHW, PyTorch layers, torch DataLoader",
}


def _loaders() -> tuple[str, ...]:
    from fastcifar.data.loaders import list_loaders

    return tuple(list_loaders())


def _datasets() -> tuple[str, ...]:
    from fastcifar.data import DATASETS

    return DATASETS


def _schedules() -> tuple[str, ...]:
    from fastcifar.training import engine

    return engine.SCHEDULES


def _amp_modes() -> tuple[str, ...]:
    from fastcifar.training.variant import AMP_MODES

    return AMP_MODES


def _kernel_impls() -> tuple[str, ...]:
    from fastcifar.training.variant import KERNEL_IMPLS

    return KERNEL_IMPLS


def _compile_modes() -> tuple[str, ...]:
    from fastcifar.training.variant import COMPILE_MODES

    return COMPILE_MODES


def flag(default: Any, help: str, kind: str, **checks: Any) -> Any:
    """A TrainConfig field: ``kind`` names its parser in :data:`_PARSERS`; ``checks`` its limits.

    Checks: ``minimum`` / ``maximum`` (numbers), ``choices`` (a function returning the names, so
    that importing this module stays cheap), ``optional`` (``None`` accepted).
    """
    metadata = {"help": help, "kind": kind, **checks}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def choice(default: str | None, help: str, choices: Callable[[], tuple[str, ...]], **checks: Any) -> Any:
    """A TrainConfig field taking one of the names ``choices()`` returns (``optional``: or ``None``)."""
    return flag(default, help, "choice", choices=choices, **checks)


@dataclass(frozen=True)
class TrainConfig:
    """A fully resolved and validated run configuration (saved in every checkpoint)."""

    arch: str = flag("sk_densenet", "model id (python -m fastcifar.models lists them)", "str")
    model_kwargs: dict[str, Any] = flag({}, 'model options, e.g. \'{"growth_rate": 12, "k": 4}\'', "model_kwargs")
    epochs: int = flag(30, "number of epochs (the study: 30)", "int", minimum=1)
    batch_size: int = flag(256, "training batch per process (the study: 256; BatchNorm needs 2)", "int", minimum=2)
    eval_batch_size: int = flag(512, "test batch size (the study: 512)", "int", minimum=1)
    lr: float = flag(0.01, "peak learning rate: OneCycle's max_lr (the study: 0.01)", "float", positive=True)
    weight_decay: float = flag(0.0, "Adam's (coupled, L2) weight decay (the study: 0)", "float", minimum=0.0)
    schedule: str = choice(
        "onecycle", "learning-rate schedule: onecycle (the study) or constant (max_lr / 25)", _schedules
    )
    label_smoothing: float = flag(
        0.0, "cross-entropy label smoothing in [0, 1) (the study: 0)", "float", minimum=0.0, below=1.0
    )
    randaugment: bool = flag(
        True, "RandAugment(2, 10) in the train augmentation (--norandaugment: flip + crop only)", "bool"
    )
    loader: str = choice("gpu", "data loader: gpu (data on the device), ffcv, torch (the study's DataLoader)", _loaders)
    dataset: str = choice("cifar100", "cifar100, cifar10 or synthetic; missing betons are prepared first", _datasets)
    data_root: str = flag("data", "folder holding <dataset>/{train,test}.beton (stored as an absolute path)", "path")
    device: str | None = flag(None, "cpu, cuda or cuda:N (default: cuda when available)", "device", optional=True)
    compile: bool = flag(False, "torch.compile the model", "bool")
    compile_cache: str | None = flag(
        None,
        "folder of the torch.compile cache (Inductor's graphs, Triton's kernels in DIR/triton); default: "
        "TORCHINDUCTOR_CACHE_DIR, else Inductor's per-user /tmp/torchinductor_<user>",
        "path",
        optional=True,
    )
    compile_mode: str | None = choice(
        None, "torch.compile mode (default, reduce-overhead, max-autotune, ...)", _compile_modes, optional=True
    )
    amp: str = flag("off", "autocast: bf16, fp16 (with a GradScaler) or off", "amp", choices=_amp_modes)
    channels_last: bool = flag(False, "NHWC memory format for model and batches", "bool")
    kernels: str | None = choice(
        None, "triton or torch for the SK / Triplet layers (default: the model's choice)", _kernel_impls, optional=True
    )
    seed: int = flag(0, "seed of weights, shuffle and augmentation (0 .. 2**32-1)", "int", minimum=0, maximum=MAX_SEED)
    out: str = flag(
        "", "run folder (default runs/<arch>-<timestamp>; stored as an absolute path)", "path", optional=True
    )
    workers: int | None = flag(
        None, "CPU workers of the ffcv / torch loaders (default: from the cores)", "int", minimum=0, optional=True
    )
    log_every: int = flag(25, "steps between progress-bar loss updates (each one a host sync)", "int", minimum=1)

    @property
    def variant(self):
        """How the model runs (:class:`fastcifar.training.variant.Variant`)."""
        from fastcifar.training.variant import Variant

        return Variant(
            compile=self.compile,
            compile_mode=self.compile_mode,
            channels_last=self.channels_last,
            amp=self.amp,
            kernels=self.kernels,
        )


def config_fields() -> tuple[Field, ...]:
    return fields(TrainConfig)


def flag_help() -> dict[str, str]:
    """Every flag of ``python -m fastcifar.train`` with its one-line description, in order."""
    return {**{f.name: f.metadata["help"] for f in config_fields()}, **EXTRA_FLAGS}


def default_value(spec: Field) -> Any:
    return spec.default_factory() if spec.default is MISSING else spec.default  # type: ignore[misc]


# ------------------------------------------------------------------------------------------
# One check per kind of flag. Each takes (flag name, value, field metadata) and returns the checked
# value or raises UserError naming the flag. Values come from the command line (parsed by
# fastcifar.cli's parser of their kind, :data:`CLI_KINDS`) or from Python callers; the generic part
# (is it an integer, a dict, ...) is that same parser.


def _parse_bool(name: str, value: Any, spec: dict) -> bool:
    return to_bool(name, value)


def _parse_int(name: str, value: Any, spec: dict) -> int:
    value = to_int(name, value)
    if "minimum" in spec and value < spec["minimum"]:
        raise UserError(f"--{name} must be at least {spec['minimum']}, got {value}.")
    if "maximum" in spec and value > spec["maximum"]:
        raise UserError(f"--{name} must be at most {spec['maximum']}, got {value}.")
    return value


def _parse_float(name: str, value: Any, spec: dict) -> float:
    value = to_float(name, value)
    if value != value:
        raise UserError(f"--{name} must be a number, got {value!r}.")
    if spec.get("positive") and not value > 0:
        raise UserError(f"--{name} must be positive, got {value!r}.")
    if "minimum" in spec and value < spec["minimum"]:
        raise UserError(f"--{name} must be at least {spec['minimum']}, got {value}.")
    if "below" in spec and not value < spec["below"]:
        raise UserError(f"--{name} must be in [{spec.get('minimum', 0)}, {spec['below']}), got {value}.")
    return value


def _parse_choice(name: str, value: Any, spec: dict) -> str:
    choices = spec["choices"]()
    if value not in choices:
        raise UserError(f"unknown --{name} {value!r}; choose one of: {', '.join(choices)}.")
    return value


def _parse_amp(name: str, value: Any, spec: dict) -> str:
    return _parse_choice(name, "off" if value is False else value, spec)  # `--noamp` / `--amp=false`


def _parse_str(name: str, value: Any, spec: dict) -> str:
    if not isinstance(value, str) or not value:
        raise UserError(f"--{name} must be a name, got {value!r}.")
    return value


def _parse_path(name: str, value: Any, spec: dict) -> str:
    """A folder path: ``~`` expanded (as ``prepare --root`` does) and made absolute, so a resumed run
    finds the same folder from any working directory."""
    from fastcifar.data import expand_root

    if not isinstance(value, str) or not value:
        raise UserError(f"--{name} must be a folder path, got {value!r}.")
    return os.path.abspath(expand_root(value))


def _parse_device(name: str, value: Any, spec: dict) -> str:
    # The full check (syntax, CUDA present, index in range) needs torch: fastcifar.training.variant does it.
    from fastcifar.training.variant import resolve_device

    resolve_device(value, int(os.environ.get("LOCAL_RANK", "0")))
    return value


def _parse_model_kwargs(name: str, value: Any, spec: dict) -> dict[str, Any]:
    value = to_mapping(name, value)
    if "num_classes" in value:
        raise UserError(f"--{name} cannot set num_classes: it comes from the dataset.")
    return value


_PARSERS: dict[str, Callable[[str, Any, dict], Any]] = {
    "bool": _parse_bool,
    "int": _parse_int,
    "float": _parse_float,
    "choice": _parse_choice,
    "amp": _parse_amp,
    "str": _parse_str,
    "path": _parse_path,
    "device": _parse_device,
    "model_kwargs": _parse_model_kwargs,
}


def parse_flag(name: str, value: Any) -> Any:
    """Check one TrainConfig flag's value; UserError (one sentence) when it is wrong."""
    spec = next(f for f in config_fields() if f.name == name)
    meta = dict(spec.metadata)
    if value is None and meta.get("optional"):
        return None
    if name == "kernels" and value == "auto":
        return None
    if name == "device" and value == "auto":
        return None
    return _PARSERS[meta["kind"]](name, value, meta)


# The command line's value kind (fastcifar.cli.VALUE_KINDS) of each kind of TrainConfig field. amp is
# a literal so that --noamp (False) reads as off.
CLI_KINDS = {
    "bool": "bool",
    "int": "int",
    "float": "float",
    "choice": "str",
    "amp": "literal",
    "str": "str",
    "path": "str",
    "device": "str",
    "model_kwargs": "mapping",
}


def command_flags() -> tuple[Flag, ...]:
    """The flags of ``python -m fastcifar.train`` for :mod:`fastcifar.cli`: TrainConfig's fields, then the extras."""
    flags = [
        Flag(
            spec.name,
            CLI_KINDS[spec.metadata["kind"]],
            default_value(spec),
            spec.metadata["help"],
            optional=bool(spec.metadata.get("optional")),
        )
        for spec in config_fields()
    ]
    extras = {"resume": ("literal", None), "fast": ("bool", False), "baseline": ("bool", False)}
    flags += [
        Flag(name, extras[name][0], extras[name][1], text, optional=extras[name][1] is None)
        for name, text in EXTRA_FLAGS.items()
    ]
    return tuple(flags)


def presets(device_type: str = "cuda") -> dict[str, dict[str, Any]]:
    """The preset flags on a ``device_type`` device: the model part from fastcifar.training.variant
    (``--fast`` differs on a CPU, see :data:`~fastcifar.training.variant.FAST_CPU`), the loader part from here."""
    from fastcifar.training.variant import BASELINE, fast_variant

    return {
        "fast": {**fast_variant(device_type).describe(), "loader": "gpu"},
        "baseline": {**BASELINE.describe(), "loader": "torch"},
    }


def check_flag_names(names: Any) -> None:
    """UserError for any name that is not a flag of ``python -m fastcifar.train``."""
    known = flag_help()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UserError(f"unknown flag --{unknown[0]}; valid flags: " + ", ".join(f"--{n}" for n in known) + ".")


def _requested(flags: dict[str, Any], saved_device: str | None = None, announce: bool = False) -> dict[str, Any]:
    """The TrainConfig values the given ``flags`` ask for: each given flag checked, a preset expanded.

    A flag given explicitly wins over its preset value; fields neither given nor preset are absent.
    ``--fast`` depends on the device the run uses (the given ``--device``, else ``saved_device``,
    else the default); with ``announce`` the CPU choice is said in one line (rank 0).
    """
    flags = dict(flags)
    fast = _parse_bool("fast", flags.pop("fast", False), {})
    baseline = _parse_bool("baseline", flags.pop("baseline", False), {})
    if fast and baseline:
        raise UserError("--fast and --baseline are opposite presets; pass at most one of them.")
    values = {name: parse_flag(name, value) for name, value in flags.items()}
    preset: dict[str, Any] = {}
    if fast or baseline:
        from fastcifar.training.variant import FAST_CPU_NOTE, resolve_device

        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device_type = resolve_device(values.get("device", saved_device), local_rank).type
        preset = presets(device_type)["fast" if fast else "baseline"]
        if fast and device_type != "cuda" and announce and is_rank_zero():
            print(FAST_CPU_NOTE, flush=True)
    return {**{name: value for name, value in preset.items() if name not in values}, **values}


def resolve_config(**flags: Any) -> TrainConfig:
    """Check the given flags, apply a preset, fill in defaults; UserError with one clear sentence.

    A flag given explicitly wins over its preset value; a flag not given takes the preset's value
    (``fast=True`` / ``baseline=True``) or the TrainConfig default.
    """
    check_flag_names(flags)
    if "resume" in flags:
        raise UserError("resolve_config does not resume; call fastcifar.train.train(resume=...)")
    requested = _requested(flags, announce=True)
    values = {spec.name: requested.get(spec.name, default_value(spec)) for spec in config_fields()}
    if not flags.get("out"):
        values["out"] = _parse_path("out", str(Path("runs") / f"{values['arch']}-{time.strftime('%Y%m%d-%H%M%S')}"), {})
    config = TrainConfig(**values)
    from fastcifar.training.variant import resolve_overrides

    resolve_overrides(config.arch, config.model_kwargs, config.variant)  # model id and option names
    return config


def _comparable(value: Any) -> Any:
    """``value`` with tuples as lists (nested), so that a flag compares equal to its saved value."""
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    return value


def _shown(value: Any) -> str:
    """A flag value as a user would type it (dicts and lists as JSON)."""
    return json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value)


def resumed_config(saved: dict[str, Any], folder: str, flags: dict[str, Any]) -> TrainConfig:
    """The config of the run saved in ``folder``, continued with the given ``flags``.

    ``flags`` are checked and normalised as for a new run (presets expanded, paths made absolute,
    ``--model_kwargs`` parsed). The RESUME_MAY_CHANGE ones replace the saved values; every other one
    must equal its saved value (``--out`` the run folder): the re-typed command that started the run
    is accepted, and a flag that would change the run is refused, each one named with both values.
    """
    names = {spec.name for spec in config_fields()}
    if not isinstance(saved, dict) or not set(saved) <= names:
        raise UserError(f"the checkpoint in {folder} records an unknown config; start a new run.")
    config = replace(TrainConfig(**saved), out=_parse_path("out", folder, {}))
    requested = _requested(flags, saved_device=config.device)
    differ = [
        f"--{name}: saved {_shown(getattr(config, name))}, given {_shown(value)}"
        for name, value in requested.items()
        if name not in RESUME_MAY_CHANGE and _comparable(value) != _comparable(getattr(config, name))
    ]
    if differ:
        raise UserError(
            f"--resume continues the run saved in {folder} with its own settings, and these flags differ from them: "
            f"{'; '.join(differ)} (only {', '.join('--' + name for name in RESUME_MAY_CHANGE)} may change on "
            "resume); drop them, or start a new run to change them."
        )
    return replace(config, **{name: value for name, value in requested.items() if name in RESUME_MAY_CHANGE})
