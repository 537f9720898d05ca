"""Batched per-sample augmentation on uint8 ``(N, C, H, W)`` tensors on any device.

Every sample gets its own random draws (unlike torchvision v2 / Kornia RandAugment, which draw one
op per batch), shapes stay fixed and nothing is read back to the host, so the CUDA path never
synchronises. Semantics follow torchvision's per-image transforms. The train transform runs eagerly
or as one compiled graph over the same draws (the default on CUDA); see docs/augment.md.
"""

from __future__ import annotations

from fastcifar.augment.geometric import affine_nearest, inverse_affine_theta, random_crop_reflect, random_hflip
from fastcifar.augment.randaugment import RAND_AUGMENT_OPS, rand_augment
from fastcifar.augment.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TestTransform,
    TrainDraws,
    TrainTransform,
    normalize,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RAND_AUGMENT_OPS",
    "TestTransform",
    "TrainDraws",
    "TrainTransform",
    "affine_nearest",
    "inverse_affine_theta",
    "normalize",
    "rand_augment",
    "random_crop_reflect",
    "random_hflip",
]
