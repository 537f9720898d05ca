"""The one vocabulary for *how* a model runs: compilation, memory layout, precision, kernels.

A :class:`Variant` is what the training presets (``--fast``, ``--baseline``), the profiler
(``fastcifar.profile``) and the training benchmark (``bench/train.py``) vary. :data:`VARIANTS`
names the ones they compare; :func:`build_model` builds a registered model for a variant and
:meth:`Variant.wrap` compiles the forward that a training step calls. :func:`resolve_device` is
the project's single parser of ``--device``.

Example::

    device = resolve_device("cuda")
    variant = VARIANTS["compiled_bf16_cl_triton"]
    model = build_model("sk_densenet", {}, variant, device)   # eager module, on device, in layout
    forward = variant.wrap(model)                             # what the step calls
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fastcifar.errors import UserError

AMP_MODES = ("bf16", "fp16", "off")
KERNEL_IMPLS = ("triton", "torch")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Inductor modes that capture the compiled graphs in CUDA graphs (on CUDA inputs).
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class Variant:
    """How a model runs; every field is validated on construction (:class:`UserError`).

    ``kernels=None`` leaves the model's own default (Triton on CUDA when it imports, else PyTorch);
    it only matters for models whose attention layers take ``impl`` (SK and Triplet layers).
    """

    compile: bool = False
    compile_mode: str | None = None  # torch.compile mode; None = "default"
    channels_last: bool = False
    amp: str = "off"  # "off" | "bf16" | "fp16"
    kernels: str | None = None  # "torch" | "triton" | None (the model's own default)

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise UserError(f"unknown amp {self.amp!r}; choose one of: {', '.join(AMP_MODES)}.")
        if self.kernels is not None and self.kernels not in KERNEL_IMPLS:
            raise UserError(f"unknown kernels {self.kernels!r}; choose one of: {', '.join(KERNEL_IMPLS)}.")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise UserError(f"unknown compile_mode {self.compile_mode!r}; choose one of: {', '.join(COMPILE_MODES)}.")

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def uses_cudagraphs(self) -> bool:
        """True when the compiled step replays CUDA graphs (each step must then be marked, see engine)."""
        return self.compile and self.compile_mode in CUDAGRAPH_MODES

    def wrap(self, model: nn.Module, *, backend: str = "inductor") -> nn.Module:
        """``torch.compile(model, mode=compile_mode)`` for compiled variants, else ``model`` itself.

        ``backend="aot_eager"`` traces without code generation (quick checks on CPU); the mode is an
        Inductor option, so it is passed to Inductor only.
        """
        if not self.compile:
            return model
        from fastcifar.training.compile_cache import check_compile_cache

        check_compile_cache()
        if backend == "inductor":
            return torch.compile(model, mode=self.compile_mode)
        return torch.compile(model, backend=backend)

    def describe(self) -> dict[str, Any]:
        """The fields as a plain dict (recorded in run.json files and benchmark results)."""
        return {
            "compile": self.compile,
            "compile_mode": self.compile_mode,
            "channels_last": self.channels_last,
            "amp": self.amp,
            "kernels": self.kernels,
        }


VARIANTS: dict[str, Variant] = {
    # The study's setting: eager, fp32, NCHW, pure-PyTorch attention layers.
    "eager_fp32": Variant(kernels="torch"),
    "eager_bf16_cl": Variant(channels_last=True, amp="bf16", kernels="torch"),
    "compiled_bf16_cl": Variant(compile=True, channels_last=True, amp="bf16", kernels="torch"),
    "compiled_bf16_cl_triton": Variant(compile=True, channels_last=True, amp="bf16", kernels="triton"),
    # The same captured in CUDA graphs: each compiled graph's many kernel launches become one replay.
    "compiled_bf16_cl_triton_cudagraphs": Variant(
        compile=True, compile_mode="reduce-overhead", channels_last=True, amp="bf16", kernels="triton"
    ),
    # NCHW bf16: on CPU, bf16 + channels_last gives non-finite gradients for the SK layers' grouped
    # dilated convolutions, so CPU comparisons use these.
    "eager_bf16": Variant(amp="bf16", kernels="torch"),
    "compiled_bf16": Variant(compile=True, amp="bf16", kernels="torch"),
}
# --fast keeps the default compile mode until a GPU run shows reduce-overhead is faster.
FAST: Variant = VARIANTS["compiled_bf16_cl_triton"]
# --fast on a CPU: NCHW, because CPU bf16 autocast with channels_last gives non-finite weight
# gradients for grouped dilated convolutions (the SK layers' branches; an upstream bug, see
# docs/training.md), and the PyTorch layers, because the Triton kernels run on CUDA only.
FAST_CPU: Variant = VARIANTS["compiled_bf16"]
FAST_CPU_NOTE = (
    "--fast on a CPU: compile + bf16 in NCHW with the PyTorch layers (CPU bf16 with channels_last gives "
    "non-finite gradients for grouped dilated convolutions, and the Triton kernels need CUDA)"
)


def fast_variant(device_type: str) -> Variant:
    """What ``--fast`` runs on a device of type ``device_type`` (``"cuda"``: :data:`FAST`, else :data:`FAST_CPU`)."""
    return FAST if device_type == "cuda" else FAST_CPU


BASELINE: Variant = VARIANTS["eager_fp32"]


def get_variant(name: str) -> Variant:
    """The variant called ``name`` (a :data:`VARIANTS` key)."""
    variant = VARIANTS.get(name)
    if variant is None:
        raise UserError(f"unknown variant {name!r}; choose from: {', '.join(VARIANTS)}.")
    return variant


def parse_variants(names: str | Sequence[str]) -> list[str]:
    """``"a,b"`` or a sequence of names -> validated list (order kept, duplicates dropped)."""
    given = names.split(",") if isinstance(names, str) else [str(n) for n in names]
    cleaned = [n.strip() for n in given if n.strip()]
    unknown = [n for n in cleaned if n not in VARIANTS]
    if unknown or not cleaned:
        choices = ", ".join(VARIANTS)
        raise UserError(f"unknown variant(s) {', '.join(unknown) or '(none given)'}; choose from: {choices}.")
    return list(dict.fromkeys(cleaned))


_DEVICE_PATTERN = re.compile(r"(cpu|cuda)(?::(\d+))?")


def resolve_device(requested: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """Parse and check a ``--device`` value.

    ``None``, ``""`` or ``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available, else CPU;
    ``"cuda"`` -> ``cuda:<local_rank>``; ``"cuda:N"`` and ``"cpu"`` as given. Anything else, a
    CUDA request without CUDA, or a GPU index this machine lacks is a :class:`UserError`.
    """
    if requested is None or str(requested) in ("", "auto"):
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    text = str(requested)
    match = _DEVICE_PATTERN.fullmatch(text)
    if match is None:
        raise UserError(f"--device {text!r} is not a device; use cpu, cuda or cuda:<index> (e.g. cuda:0).")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"--device {text} was asked for but CUDA is not available here; use --device cpu.")
    device = torch.device("cuda", int(index) if index is not None else local_rank)
    if device.index >= torch.cuda.device_count():
        raise UserError(f"--device {device} does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    return device


def resolve_overrides(arch: str, overrides: dict[str, Any], variant: Variant) -> dict[str, Any]:
    """The ``create_model`` keyword arguments for ``arch`` in ``variant`` (names checked).

    ``impl=variant.kernels`` is added when the model takes ``impl`` and ``overrides`` do not set
    it: an explicit override wins over the variant.
    """
    from fastcifar.models import get_entry

    entry = get_entry(arch)  # unknown id: UserError listing the valid ones
    entry.check_overrides(overrides, what="model options")
    kwargs = dict(overrides)
    if variant.kernels is not None and "impl" in entry.override_names() and "impl" not in kwargs:
        kwargs["impl"] = variant.kernels
    return kwargs


def kernels_in_use(model: nn.Module, device: torch.device) -> str | None:
    """What ``model``'s SK / Triplet layers run on ``device``: ``"triton"``, ``"torch"``, or None (it has none).

    ``impl="triton"`` runs the Triton kernels on CUDA tensors (and on CPU tensors under
    ``TRITON_INTERPRET=1``); elsewhere ``fastcifar.kernels`` runs its PyTorch reference: ``"torch"``.
    """
    from fastcifar.models.layers import SKSelect, ZPool

    impls = {module.impl for module in model.modules() if isinstance(module, (SKSelect, ZPool))}
    if "triton" in impls:
        from fastcifar.kernels import use_triton

        if not use_triton(torch.empty(0, device=device)):
            impls = (impls - {"triton"}) | {"torch"}
    return ",".join(sorted(impls)) or None


def build_model(
    arch: str, overrides: dict[str, Any], variant: Variant, device: torch.device, *, num_classes: int = 100
) -> nn.Module:
    """Create registered model ``arch`` for ``variant``: on ``device``, in the variant's layout.

    Not compiled: a training step calls ``variant.wrap(model)``; checkpoints and evaluation keep
    using the plain module. Seeding is the caller's (weights are drawn here). Values the model
    refuses (a ``TypeError`` or ``ValueError`` from its constructor) are one :class:`UserError` line.
    """
    from fastcifar.models import create_model

    kwargs = resolve_overrides(arch, overrides, variant)
    try:
        model = create_model(arch, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"--model_kwargs {overrides} do not fit model {arch!r}: {str(err).splitlines()[0]}") from None
    return model.to(device=device, memory_format=variant.memory_format)
