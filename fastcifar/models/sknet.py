"""SKNet-26 (docs/models.md §2) and SKNet + Coordinate Attention (docs/models.md §3).

The study's stage builder passed the stage stride into the unit's branch-count slot: the first
unit of stage 1 got M=1, the first units of stages 2-4 got M=2 and no stage ever downsampled (all
stages at 8x8). The reported 4.81M needs that bug, so two ids exist:

- ``sknet26``: the corrected network (strides 1/2/2/2 applied, M=2 everywhere), 4,819,620 params;
- ``sknet26_study``: the network as the study ran it (``stride_bug=True``), 4,810,532 params.

``sknet_ca_post`` / ``sknet_ca_pre`` are the reading of docs/models.md §3 (no SKNet+CA code exists
in the study): ``sknet26_study`` plus one 1x1 CoordinateAttention per unit, after the SKConv (post)
or on the unit input before the first 1x1 conv (pre).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fastcifar.errors import UserError
from fastcifar.models.layers import (
    CoordinateAttention,
    SKConv,
    check_stage_lists,
    conv_bn_act,
    imagenet_stem,
    init_kaiming_fan_out,
)
from fastcifar.models.registry import ModelEntry, StudyResult, register

CA_PLACES = (None, "post", "pre")
# SKNet-26: output and SK channels per stage, units per stage.
_WIDTHS = (256, 384, 512, 1024)
_MIDS = (128, 256, 384, 512)
_DEPTHS = (2, 2, 2, 2)


class SKUnit(nn.Module):
    """Bottleneck with an SKConv: 1x1-BN-ReLU -> SKConv -> 1x1-BN, + shortcut, ReLU.

    ``ca="post"`` adds CA(mid) after the SKConv; ``ca="pre"`` adds CA(in) on the main path's input.
    Shapes: ``(N, Cin, H, W) -> (N, Cout, H / stride, W / stride)``.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        *,
        branches: int = 2,
        stride: int = 1,
        sk_kwargs: dict | None = None,
        ca: str | None = None,
    ) -> None:
        super().__init__()
        self.pre = CoordinateAttention(in_channels) if ca == "pre" else nn.Identity()
        self.conv1 = conv_bn_act(in_channels, mid_channels, 1)
        self.sk = SKConv(mid_channels, branches=branches, stride=stride, **(sk_kwargs or {}))
        self.post = CoordinateAttention(mid_channels) if ca == "post" else nn.Identity()
        self.conv2 = conv_bn_act(mid_channels, out_channels, 1, act=None)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = conv_bn_act(in_channels, out_channels, 1, stride=stride, act=None)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.post(self.sk(self.conv1(self.pre(x)))))
        return self.relu(out + self.shortcut(x))


class SKNet(nn.Module):
    """SKNet with an ImageNet stem (7x7/2 + max-pool: 32x32 -> 8x8) and SK units.

    Args:
        widths: output channels per stage; mids: SK channels per stage; depths: units per stage.
        stride_bug: reproduce the study's stride->M bug (see module docstring).
        ca: None, "post" or "pre" (one CoordinateAttention per unit).
    Shapes: ``(N, 3, H, W) -> (N, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int = 100,
        *,
        widths: Sequence[int] = _WIDTHS,
        mids: Sequence[int] = _MIDS,
        depths: Sequence[int] = _DEPTHS,
        stem_width: int = 64,
        stride_bug: bool = False,
        ca: str | None = None,
        sk_groups: int = 32,
        sk_reduction: int = 16,
        impl: str | None = None,
    ) -> None:
        super().__init__()
        check_stage_lists(widths=widths, mids=mids, depths=depths)
        if ca not in CA_PLACES:
            raise UserError(f"unknown CA placement {ca!r}; choose 'post', 'pre' or None.")
        self.stem = imagenet_stem(stem_width)
        sk_kwargs = dict(groups=sk_groups, reduction=sk_reduction, impl=impl)
        units: list[nn.Module] = []
        channels = stem_width
        for s, (width, mid, depth) in enumerate(zip(widths, mids, depths)):
            stage_stride = 1 if s == 0 else 2
            for u in range(depth):
                if u == 0 and stride_bug:
                    # The study's call put the stage stride where M belongs and left stride at 1.
                    branches, stride = stage_stride, 1
                else:
                    branches, stride = 2, stage_stride if u == 0 else 1
                units.append(
                    SKUnit(
                        channels,
                        mid,
                        width,
                        branches=branches,
                        stride=stride,
                        sk_kwargs=sk_kwargs,
                        ca=ca,
                    )
                )
                channels = width
        self.units = nn.Sequential(*units)
        self.classifier = nn.Linear(channels, num_classes)
        init_kaiming_fan_out(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) -> (N, num_classes)``."""
        return self.classifier(self.units(self.stem(x)).mean(dim=(2, 3)))


# Two stages of one unit each, 32 groups -> 8: every SKNet reading (bug, CA) at a few thousand params.
_TINY = {"widths": (32, 64), "mids": (32, 32), "depths": (1, 1), "sk_groups": 8}


for _entry in (
    ModelEntry(
        "sknet26",
        SKNet,
        "SKNet-26 (M=2, G=32, r=16), strides 1/2/2/2 applied: the corrected network",
        fixed={"stride_bug": False, "ca": None},
        study=(StudyResult(note="the study ran sknet26_study"),),
        tiny=_TINY,
    ),
    ModelEntry(
        "sknet26_study",
        SKNet,
        "SKNet-26 as the study ran it: stride->M bug (first unit M=1, every stage at 8x8)",
        fixed={"stride_bug": True, "ca": None},
        study=(
            StudyResult(
                "4.81M", 69.65, 91.06, method="SKNet", source="base methods; Table 1", train_loss=0.36, test_loss=1.28
            ),
        ),
        tiny=_TINY,
    ),
    *(
        ModelEntry(
            f"sknet_ca_{place}",
            SKNet,
            f"sknet26_study + {where} (docs/models.md §3; no study code exists)",
            fixed={"stride_bug": True, "ca": place},
            study=(StudyResult("6.65M", top1, top5, note="6.65M not reproducible", method=method, source="Table 1"),),
            tiny=_TINY,
        )
        for place, where, top1, top5, method in (
            ("post", "CA(mid) after each SKConv", 70.02, 91.86, "SKNet(Conv1->SK Conv->CA Conv->Conv2)"),
            ("pre", "CA(in) on each unit's input", 70.12, 91.72, "SKNet(CA Conv->Conv1->SK Conv->Conv2)"),
        )
    ),
):
    register(_entry)
