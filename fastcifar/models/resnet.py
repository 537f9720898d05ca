"""ResNet-18 family (docs/models.md §6, §9, §10): the baseline, Triplet-ResNet18 and the GC-block ResNet18.

``resnet18`` and ``triplet_resnet`` use the ImageNet stem (7x7/2 conv + 3x3/2 max-pool, so a 32x32
image is 8x8 after the stem, as in the study); ``gcnet`` uses the CIFAR stem (3x3/1, no pool).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fastcifar.errors import UserError
from fastcifar.models.layers import GCBlock, TripletAttention, check_stage_lists, conv_bn_act, imagenet_stem
from fastcifar.models.registry import ModelEntry, StudyResult, register

STEMS = ("imagenet", "cifar")
# ResNet-18: BasicBlocks per stage and their widths.
_WIDTHS = (64, 128, 256, 512)
_DEPTHS = (2, 2, 2, 2)


class BasicBlock(nn.Module):
    """3x3-BN-ReLU -> 3x3-BN (-> attention) + shortcut -> ReLU.

    Shapes: ``(N, Cin, H, W) -> (N, Cout, H / stride, W / stride)``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, attention: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv_bn_act(in_channels, out_channels, 3, stride=stride)
        self.conv2 = conv_bn_act(out_channels, out_channels, 3, act=None)
        self.attention = attention if attention is not None else nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = conv_bn_act(in_channels, out_channels, 1, stride=stride, act=None)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.attention(self.conv2(self.conv1(x)))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """BasicBlock ResNet with optional Triplet in every block and an optional standalone GC block.

    Args:
        widths / depths: channels and BasicBlocks per stage (strides 1, 2, 2, ...).
        stem: ``"imagenet"`` (7x7/2 + max-pool) or ``"cifar"`` (3x3/1).
        triplet: put a TripletAttention after each block's second BN (and initialise as the Triplet
            notebook does).
        gc_stage: stage index (0-based) with a GC block after its first BasicBlock, or None.
    Shapes: ``(N, 3, H, W) -> (N, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int = 100,
        *,
        widths: Sequence[int] = _WIDTHS,
        depths: Sequence[int] = _DEPTHS,
        stem: str = "imagenet",
        stem_width: int | None = None,
        triplet: bool = False,
        gc_stage: int | None = None,
        impl: str | None = None,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise UserError(f"unknown stem {stem!r}; choose one of: {', '.join(STEMS)}.")
        check_stage_lists(widths=widths, depths=depths)
        if gc_stage is not None and not 0 <= gc_stage < len(widths):
            raise UserError(f"gc_stage must be a stage index below {len(widths)}, got {gc_stage!r}.")
        stem_width = stem_width or widths[0]
        if stem == "imagenet":
            self.stem = imagenet_stem(stem_width)
        else:
            self.stem = conv_bn_act(3, stem_width, 3)
        stages = []
        channels = stem_width
        for s, (width, depth) in enumerate(zip(widths, depths)):
            blocks: list[nn.Module] = []
            for b in range(depth):
                stride = 2 if (s > 0 and b == 0) else 1
                attention = TripletAttention(impl=impl) if triplet else None
                blocks.append(BasicBlock(channels, width, stride, attention))
                channels = width
                if gc_stage == s and b == 0:
                    blocks.append(GCBlock(width))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Linear(channels, num_classes)
        if triplet:  # the Triplet notebook's network, with its own initialisation
            _init_normal_fan_out(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) -> (N, num_classes)``."""
        return self.classifier(self.stages(self.stem(x)).mean(dim=(2, 3)))


def _init_normal_fan_out(model: nn.Module) -> None:
    """The Triplet notebook's init: conv weights N(0, sqrt(2 / (k*k*out))), BN weight 1, bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# Two stages of one BasicBlock at widths 8/16 (the GC variant needs a third stage to host its block).
_TINY = {"widths": (8, 16), "depths": (1, 1)}


register(
    ModelEntry(
        "resnet18",
        ResNet,
        "ResNet-18, ImageNet stem (ResNet.ipynb)",
        fixed={"triplet": False, "gc_stage": None, "impl": None},
        study=(StudyResult(),),
        tiny=_TINY,
    )
)
register(
    ModelEntry(
        "triplet_resnet",
        ResNet,
        "ResNet-18 (ImageNet stem) + Triplet Attention before every residual add",
        fixed={"triplet": True, "gc_stage": None},
        study=(
            StudyResult(
                "11.23M",
                59.6,
                85.5,
                method="Triplet Attention",
                source="base methods",
                train_loss=1.30,
                test_loss=1.54,
            ),
        ),
        tiny=_TINY,
    )
)
register(
    ModelEntry(
        "gcnet",
        ResNet,
        "CIFAR ResNet-18 + one GC block between stage 3's blocks (GCNet.ipynb, fixed to run)",
        defaults={"stem": "cifar", "gc_stage": 2},
        fixed={"triplet": False, "impl": None},
        study=(StudyResult(note="the study's notebook does not run"),),
        tiny={"widths": (8, 16, 16), "depths": (1, 1, 2)},
    )
)
