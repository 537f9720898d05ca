"""The study's "Coordinate Attention on a ResNet": in fact a MobileNetV2 with CA (docs/models.md §4, §5).

``ca_mobilenetv2`` (alias ``ca_resnet``) is CANet.ipynb at the commit whose widths give the
reported 9.7M; ``ca_triplet`` is Triple+CA.ipynb at that commit with its duplicate-class bug fixed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fastcifar.errors import UserError
from fastcifar.models.layers import CoordinateAttention, TripletAttention, conv_bn_act
from fastcifar.models.registry import ModelEntry, StudyResult, register

# Rows (expansion t, channels c, repeats n, first stride s) of the 9.7M configuration.
STUDY_CONFIG: tuple[tuple[int, int, int, int], ...] = (
    (1, 64, 1, 1),
    (6, 128, 2, 2),
    (6, 256, 3, 2),
    (6, 384, 2, 2),
    (6, 512, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor``, never going more than 10% below it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class InvertedResidual(nn.Module):
    """MobileNetV2 block with CA after the depthwise conv (expanding blocks only).

    t == 1: dw3x3-BN-ReLU6 -> 1x1-BN(-ReLU6). Otherwise 1x1-BN-ReLU6 -> dw3x3-BN-ReLU6 -> CA
    -> 1x1-BN(-ReLU6). ``project_act`` chooses ReLU6 after the projection (CANet) or a linear
    projection (Triple+CA); ``triplet`` adds TripletAttention on the block output before the add.
    Residual add when stride 1 and in == out.

    Shapes: ``(N, Cin, H, W) -> (N, Cout, H / stride, W / stride)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expansion: int,
        *,
        project_act: bool = True,
        triplet: bool = False,
        impl: str | None = None,
    ) -> None:
        super().__init__()
        hidden = round(in_channels * expansion)
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_act(in_channels, hidden, 1, act=nn.ReLU6))
        layers.append(conv_bn_act(hidden, hidden, 3, stride=stride, groups=hidden, act=nn.ReLU6))
        if expansion != 1:
            layers.append(CoordinateAttention(hidden))
        layers.append(conv_bn_act(hidden, out_channels, 1, act=nn.ReLU6 if project_act else None))
        if triplet:
            layers.append(TripletAttention(impl=impl))
        self.body = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.use_residual else out


class CAMobileNetV2(nn.Module):
    """MobileNetV2 trunk for 32x32 inputs (stem 3x3/2) with CA in every expanding block.

    Args:
        config: rows (t, c, n, s) as in the MobileNetV2 paper.
        stem_width / head_width: 32 and 1280 in the study.
    Shapes: ``(N, 3, H, W) -> (N, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int = 100,
        *,
        config: Sequence[Sequence[int]] = STUDY_CONFIG,
        stem_width: int = 32,
        head_width: int = 1280,
        dropout: float = 0.1,
        project_act: bool = True,
        triplet: bool = False,
        impl: str | None = None,
    ) -> None:
        super().__init__()
        rows = [tuple(int(v) for v in row) for row in config]
        if not rows or any(len(r) != 4 or min(r) < 1 for r in rows):
            raise UserError(f"config must be rows of 4 positive integers (t, c, n, s), got {config!r}.")
        channels = make_divisible(stem_width)
        self.stem = conv_bn_act(3, channels, 3, stride=2, act=nn.ReLU6)
        blocks: list[nn.Module] = []
        for t, c, n, s in rows:
            out_channels = make_divisible(c)
            for i in range(n):
                blocks.append(
                    InvertedResidual(
                        channels,
                        out_channels,
                        s if i == 0 else 1,
                        t,
                        project_act=project_act,
                        triplet=triplet,
                        impl=impl,
                    )
                )
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn_act(channels, head_width, 1, act=nn.ReLU6)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(head_width, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """The notebooks' init: conv N(0, sqrt(2 / (k*k*out))), bias 0; BN 1/0; Linear N(0, 0.01)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) -> (N, num_classes)``."""
        x = self.head(self.blocks(self.stem(x))).mean(dim=(2, 3))
        return self.classifier(self.dropout(x))


# A t=1 row and one expanding row of two blocks (one downsampling, one residual), narrow head.
_TINY = {"config": ((1, 8, 1, 1), (6, 16, 2, 2)), "head_width": 32}


register(
    ModelEntry(
        "ca_mobilenetv2",
        CAMobileNetV2,
        "MobileNetV2 + CA in each expanding block (the study's 'CA on ResNet', CANet.ipynb)",
        fixed={"project_act": True, "triplet": False, "impl": None},
        study=(
            StudyResult(
                "9.7M",
                66.66,
                90.25,
                method="Coordinate attention",
                source="base methods; Table 1",
                train_loss=0.91,
                test_loss=1.22,
            ),
        ),
        tiny=_TINY,
        aliases=("ca_resnet",),
    )
)
register(
    ModelEntry(
        "ca_triplet",
        CAMobileNetV2,
        "ca_mobilenetv2 with linear projections + Triplet on every block output (Triple+CA)",
        fixed={"project_act": False, "triplet": True},
        study=(StudyResult("9.7M", 67.0, 90.5, method="Coordinate attention+Triple attention", source="Table 1"),),
        tiny=_TINY,
    )
)
