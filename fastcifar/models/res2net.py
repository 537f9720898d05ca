"""Res2Net-26 (26w x 4s) as the study's Res2Net.ipynb builds it (docs/models.md §8)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fastcifar.errors import UserError
from fastcifar.models.layers import check_stage_lists, conv_bn_act, imagenet_stem, init_kaiming_fan_out
from fastcifar.models.registry import ModelEntry, StudyResult, register

# Res2Net-26: blocks per stage and their planes (output channels are planes * 4).
_LAYERS = (2, 2, 2, 2)
_PLANES = (64, 128, 256, 512)


class Bottle2neck(nn.Module):
    """Res2Net bottleneck: 1x1 -> hierarchical 3x3 convs over ``scale`` splits -> 1x1, + shortcut.

    A "stage" block (first of its stage) convolves splits 1..s-1 independently and average-pools
    the last split with the block stride; a normal block adds each conv's output to the next split.
    The shortcut of a stage block is avg-pool (kernel = stride) -> 1x1 -> BN.

    Shapes: ``(N, Cin, H, W) -> (N, planes * 4, H / stride, W / stride)``.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        *,
        stride: int = 1,
        first: bool = False,
        base_width: int = 26,
        scale: int = 4,
    ) -> None:
        super().__init__()
        width = planes * base_width // 64
        out_channels = planes * self.expansion
        self.width, self.scale, self.first = width, scale, first
        self.conv1 = conv_bn_act(in_channels, width * scale, 1)
        self.convs = nn.ModuleList(conv_bn_act(width, width, 3, stride=stride) for _ in range(scale - 1))
        self.pool = nn.AvgPool2d(3, stride=stride, padding=1) if first else None
        self.conv3 = conv_bn_act(width * scale, out_channels, 1, act=None)
        self.shortcut: nn.Module = nn.Identity()
        if first:
            pool: nn.Module = nn.Identity()
            if stride != 1:
                pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
            self.shortcut = nn.Sequential(pool, conv_bn_act(in_channels, out_channels, 1, act=None))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        splits = torch.split(self.conv1(x), self.width, dim=1)
        outs = []
        prev = None
        for i, conv in enumerate(self.convs):
            inp = splits[i] if (self.first or prev is None) else splits[i] + prev
            prev = conv(inp)
            outs.append(prev)
        outs.append(self.pool(splits[-1]) if self.pool is not None else splits[-1])
        out = self.conv3(torch.cat(outs, dim=1))
        return self.relu(out + self.shortcut(x))


class Res2Net(nn.Module):
    """Res2Net with a 3x3/2 stem + max-pool (32x32 -> 8x8) and Bottle2neck stages.

    Shapes: ``(N, 3, H, W) -> (N, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int = 100,
        *,
        layers: Sequence[int] = _LAYERS,
        planes: Sequence[int] = _PLANES,
        stem_width: int = 64,
        base_width: int = 26,
        scale: int = 4,
    ) -> None:
        super().__init__()
        check_stage_lists(layers=layers, planes=planes)
        if scale < 2 or min(planes) * base_width // 64 < 1:
            raise UserError("scale must be >= 2 and planes * base_width // 64 at least 1.")
        self.stem = imagenet_stem(stem_width, kernel_size=3)
        blocks: list[nn.Module] = []
        channels = stem_width
        for s, (depth, plane) in enumerate(zip(layers, planes)):
            for b in range(depth):
                stride = 2 if (s > 0 and b == 0) else 1
                blocks.append(
                    Bottle2neck(
                        channels,
                        plane,
                        stride=stride,
                        first=b == 0,
                        base_width=base_width,
                        scale=scale,
                    )
                )
                channels = plane * Bottle2neck.expansion
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(channels, num_classes)
        init_kaiming_fan_out(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) -> (N, num_classes)``."""
        return self.classifier(self.blocks(self.stem(x)).mean(dim=(2, 3)))


register(
    ModelEntry(
        "res2net",
        Res2Net,
        "Res2Net-26 (26w x 4s), 3x3/2 stem + max-pool (Res2Net.ipynb)",
        study=(
            StudyResult("14.03M", 60.0, 85.36, method="Res2Net", source="base methods", train_loss=1.1, test_loss=1.55),
        ),
        tiny={"layers": (1, 1), "planes": (8, 16)},
    )
)
