"""Normalisation and the study's train/test transforms as ``nn.Module`` s over uint8 batches.

Train: RandomHorizontalFlip -> RandomCrop(32, padding=4, reflect) -> RandAugment(2, 10) ->
ToTensor + Normalize(ImageNet mean/std), each sample with its own random draws. Test: normalise only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fastcifar.augment.geometric import random_crop_reflect, random_hflip
from fastcifar.augment.randaugment import rand_augment

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "normalize", "TrainTransform", "TestTransform"]

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
    # One fused multiply-add in float32 (exact enough for bf16/fp16 outputs), then one cast.
    out = torch.addcmul(shift.view(1, -1, 1, 1), x.to(torch.float32), scale.view(1, -1, 1, 1))
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
    """Holds the normalisation coefficients as buffers so ``.to(device)`` moves them once."""

    def __init__(
        self,
        mean: Sequence[float] | torch.Tensor,
        std: Sequence[float] | torch.Tensor,
        dtype: torch.dtype,
        channels_last: bool,
    ) -> None:
        super().__init__()
        scale, shift = _affine_coefficients(mean, std)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)
        self.dtype = dtype
        self.channels_last = channels_last

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale, self.shift
        if scale.device != x.device:  # module not moved: copy without synchronising
            scale = scale.to(x.device, non_blocking=True)
            shift = shift.to(x.device, non_blocking=True)
        return _apply_affine(x, scale, shift, self.dtype, self.channels_last)


class TestTransform(_NormalizingTransform):
    """Evaluation transform: normalisation only.

    ``forward(x, generator=None)``: uint8 ``(N, C, H, W)`` -> ``dtype`` ``(N, C, H, W)``;
    ``generator`` is accepted for signature parity with :class:`TrainTransform` and ignored.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        mean: Sequence[float] | torch.Tensor = IMAGENET_MEAN,
        std: Sequence[float] | torch.Tensor = IMAGENET_STD,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = True,
    ) -> None:
        super().__init__(mean, std, dtype, channels_last)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._normalize(x)


class TrainTransform(_NormalizingTransform):
    """The study's training transform on uint8 batches, every sample drawn independently.

    Horizontal flip (p=0.5) -> random crop with reflect padding 4 -> RandAugment(num_ops,
    magnitude) when ``randaugment`` -> normalisation to ``dtype``/layout.

    ``forward(x, generator=None)``: uint8 ``(N, C, H, W)`` -> ``dtype`` ``(N, C, H, W)``; pass a
    generator on ``x.device`` for reproducible draws.
    """

    def __init__(
        self,
        mean: Sequence[float] | torch.Tensor = IMAGENET_MEAN,
        std: Sequence[float] | torch.Tensor = IMAGENET_STD,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = True,
        randaugment: bool = True,
        num_ops: int = 2,
        magnitude: int = 10,
        padding: int = 4,
    ) -> None:
        super().__init__(mean, std, dtype, channels_last)
        self.randaugment = randaugment
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.padding = padding

    def augment(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The uint8 part of the pipeline: ``(N, C, H, W)`` uint8 in and out."""
        x = random_hflip(x, generator=generator)
        x = random_crop_reflect(x, padding=self.padding, generator=generator)
        if self.randaugment and self.num_ops > 0:
            x = rand_augment(x, num_ops=self.num_ops, magnitude=self.magnitude, generator=generator)
        return x

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._normalize(self.augment(x, generator))

    def extra_repr(self) -> str:
        return (
            f"randaugment={self.randaugment}, num_ops={self.num_ops}, magnitude={self.magnitude}, "
            f"padding={self.padding}, dtype={self.dtype}, channels_last={self.channels_last}"
        )
