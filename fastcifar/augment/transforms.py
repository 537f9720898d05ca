"""Normalisation and the study's train/test transforms as ``nn.Module`` s over uint8 batches.

Train: RandomHorizontalFlip -> RandomCrop(32, padding=4, reflect) -> RandAugment(2, 10) ->
ToTensor + Normalize(ImageNet mean/std), each sample with its own random draws. Test: normalise only.

The train transform has two routes over the same draws: eager (the reference) and one compiled
graph (``torch.compile``; the default on CUDA, where a few hundred small eager kernels per batch
would be launch-bound). The generator is only used outside the graph, so both routes draw the
same numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from fastcifar.augment.color import fma_f32
from fastcifar.augment.geometric import crop_applies, crop_reflect, draw_crop_offsets, draw_flips, hflip_where
from fastcifar.augment.randaugment import (
    NUM_MAGNITUDE_BINS,
    StepDraw,
    StepTables,
    _check_batch,
    _use_subsets,
    apply_rand_augment,
    draw_rand_augment,
    step_tables,
)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "normalize", "TrainDraws", "TrainTransform", "TestTransform"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _affine_coefficients(
    mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 CPU ``(C,)`` scale and shift with ``(x / 255 - mean) / std == x * scale + shift``."""
    mean_t = torch.as_tensor(mean, dtype=torch.float64).flatten().cpu()
    std_t = torch.as_tensor(std, dtype=torch.float64).flatten().cpu()
    if (std_t <= 0).any():
        raise ValueError(f"std must be positive, got {std_t.tolist()}")
    return (1.0 / (255.0 * std_t)).float(), (-mean_t / std_t).float()


def _apply_affine(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, dtype: torch.dtype, channels_last: bool
) -> torch.Tensor:
    if x.dim() != 4 or x.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 (N, C, H, W) tensor, got {x.dtype} of shape {tuple(x.shape)}")
    if scale.numel() != x.shape[1]:
        raise ValueError(f"mean/std have {scale.numel()} channels, images have {x.shape[1]}")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    # One fused multiply-add into float32 (exact enough for bf16/fp16 outputs), then one cast; fma_f32
    # rounds once on both routes (x is an integer, so its float64 emulation is exact).
    out = fma_f32(x, scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1))
    return out.to(dtype=dtype, memory_format=fmt)


def normalize(
    x: torch.Tensor,
    mean: Sequence[float] | torch.Tensor = IMAGENET_MEAN,
    std: Sequence[float] | torch.Tensor = IMAGENET_STD,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel, i.e. torchvision ``ToTensor`` + ``Normalize``.

    Args:
        x: uint8 ``(N, C, H, W)`` on any device.
        mean, std: per-channel statistics on the 0..1 scale (``C`` values each).
        dtype: output floating dtype (arithmetic is float32, then one cast).
        channels_last: return ``torch.channels_last`` memory format (logical shape unchanged).
    Returns:
        ``(N, C, H, W)`` tensor of ``dtype`` on ``x.device``.
    """
    scale, shift = _affine_coefficients(mean, std)
    # non_blocking: a pageable host->device copy that does not synchronise the stream.
    scale = scale.to(x.device, non_blocking=True)
    shift = shift.to(x.device, non_blocking=True)
    return _apply_affine(x, scale, shift, dtype, channels_last)


class _NormalizingTransform(nn.Module):
    """Holds the normalisation coefficients as buffers so ``.to(device)`` moves them once.

    ``mean``, ``std``: per-channel statistics on the 0..1 scale; ``dtype``, ``channels_last``: the
    output's dtype and memory format (as :func:`normalize` takes them).
    """

    def __init__(
        self,
        mean: Sequence[float] | torch.Tensor = IMAGENET_MEAN,
        std: Sequence[float] | torch.Tensor = IMAGENET_STD,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        scale, shift = _affine_coefficients(mean, std)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)
        self.dtype = dtype
        self.channels_last = channels_last

    def _coefficients(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = self.scale, self.shift
        if scale.device != device:  # module not moved: copy without synchronising
            scale = scale.to(device, non_blocking=True)
            shift = shift.to(device, non_blocking=True)
        return scale, shift

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self._coefficients(x.device)
        return _apply_affine(x, scale, shift, self.dtype, self.channels_last)


class TestTransform(_NormalizingTransform):
    """Evaluation transform: normalisation only.

    ``forward(x, generator=None)``: uint8 ``(N, C, H, W)`` -> ``dtype`` ``(N, C, H, W)``;
    ``generator`` is accepted for signature parity with :class:`TrainTransform` and ignored.
    """

    __test__ = False  # not a pytest test class despite the name

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._normalize(x)


class TrainDraws(NamedTuple):
    """Every random number of one :class:`TrainTransform` call, drawn before any image work.

    ``flip_u``: ``(N,)`` float32 uniforms, a sample is mirrored where below 0.5; ``offsets``:
    ``(N, 2)`` int64 crop offsets, or ``None`` when the crop is off; ``steps``: one
    :class:`~fastcifar.augment.randaugment.StepDraw` per RandAugment op. Comparisons with the
    uniforms happen in the (compiled) apply, not here.
    """

    flip_u: torch.Tensor
    offsets: torch.Tensor | None
    steps: list[StepDraw]


def _augment_uint8(
    x: torch.Tensor,
    draws: TrainDraws,
    tables: StepTables | None,
    padding: int,
    subsets: bool,
) -> torch.Tensor:
    """Flip, crop and RandAugment ``x`` with ``draws``: uint8 ``(N, C, H, W)`` in and out.

    Deterministic. Per-batch path: no ``.item()``, ``.tolist()`` or ``bool(tensor)`` unless
    ``subsets`` (eager CPU only), so it neither synchronises on CUDA nor breaks a compiled graph.
    """
    x = hflip_where(x, draws.flip_u, 0.5)
    if draws.offsets is not None:
        x = crop_reflect(x, draws.offsets, padding)
    if draws.steps:
        x = apply_rand_augment(x, draws.steps, tables, subsets)
    return x


def _train_pipeline(
    x: torch.Tensor,
    draws: TrainDraws,
    tables: StepTables | None,
    scale: torch.Tensor,
    shift: torch.Tensor,
    padding: int,
    dtype: torch.dtype,
    channels_last: bool,
    subsets: bool,
) -> torch.Tensor:
    """The body of :meth:`TrainTransform.forward`, the same code on both routes: augment, normalise."""
    return _apply_affine(_augment_uint8(x, draws, tables, padding, subsets), scale, shift, dtype, channels_last)


@functools.cache
def _compiled_pipeline(backend: str) -> Callable[..., torch.Tensor]:
    """:func:`_train_pipeline` under ``torch.compile``: static shapes, one graph (``fullgraph``)."""
    return torch.compile(_train_pipeline, backend=backend, dynamic=False, fullgraph=True)


class TrainTransform(_NormalizingTransform):
    """The study's training transform on uint8 batches, every sample drawn independently.

    Horizontal flip (p=0.5) -> random crop with reflect padding 4 -> RandAugment(num_ops,
    magnitude) when ``randaugment`` -> normalisation to ``dtype``/layout.

    ``forward(x, generator=None)``: uint8 ``(N, C, H, W)`` -> ``dtype`` ``(N, C, H, W)``; pass a
    generator on ``x.device`` for reproducible draws.

    ``compiled``: ``None`` runs the compiled graph on CUDA inputs and eagerly elsewhere;
    ``True``/``False`` force one route on any device. Both routes take the same draws from the
    generator and give the same bytes on the CPU (see docs/augment.md for CUDA). The compiled graph
    has static shapes: each new batch shape, dtype or layout compiles once more.
    ``compile_backend``: the ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` in tests).
    ``normalization``: ``mean``, ``std``, ``dtype``, ``channels_last`` by keyword, as
    :class:`TestTransform` takes them (same defaults).
    """

    def __init__(
        self,
        randaugment: bool = True,
        num_ops: int = 2,
        magnitude: int = 10,
        padding: int = 4,
        compiled: bool | None = None,
        compile_backend: str = "inductor",
        **normalization: Any,
    ) -> None:
        super().__init__(**normalization)
        self.randaugment = randaugment
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.padding = padding
        self.compiled = compiled
        self.compile_backend = compile_backend

    @property
    def _num_steps(self) -> int:
        return self.num_ops if self.randaugment else 0

    def uses_compiled(self, device: torch.device) -> bool:
        """Whether :meth:`forward` takes the compiled route for inputs on ``device``."""
        return device.type == "cuda" if self.compiled is None else self.compiled

    def draw(self, x: torch.Tensor, generator: torch.Generator | None = None) -> TrainDraws:
        """All random draws for batch ``x``, in the order the eager functions make them
        (flip, crop offsets, then op and sign per RandAugment step)."""
        _check_batch(x, self._num_steps)
        n = x.shape[0]
        flip_u = draw_flips(n, x.device, generator)
        crop = crop_applies(x.shape, self.padding)
        offsets = draw_crop_offsets(n, self.padding, x.device, generator) if crop else None
        steps = draw_rand_augment(n, self._num_steps, x.device, generator) if n else []
        return TrainDraws(flip_u, offsets, steps)

    def _tables(self, x: torch.Tensor) -> StepTables | None:
        """RandAugment's lookup tables for ``x``'s size and device (cached: no host reads per batch)."""
        if not self._num_steps:
            return None
        return step_tables(self.magnitude, NUM_MAGNITUDE_BINS, x.shape[-2], x.shape[-1], x.device)

    def augment(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The uint8 part of the pipeline, eagerly: ``(N, C, H, W)`` uint8 in and out."""
        draws = self.draw(x, generator)
        return _augment_uint8(x, draws, self._tables(x), self.padding, _use_subsets(x.device))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        draws = self.draw(x, generator)  # eager on both routes: the generator never enters a graph
        scale, shift = self._coefficients(x.device)
        args = (x, draws, self._tables(x), scale, shift, self.padding, self.dtype, self.channels_last)
        if self.uses_compiled(x.device) and x.shape[0] > 0:
            return _compiled_pipeline(self.compile_backend)(*args, False)
        return _train_pipeline(*args, _use_subsets(x.device))

    def extra_repr(self) -> str:
        return (
            f"randaugment={self.randaugment}, num_ops={self.num_ops}, magnitude={self.magnitude}, "
            f"padding={self.padding}, dtype={self.dtype}, channels_last={self.channels_last}, "
            f"compiled={self.compiled}"
        )
