"""Visual Attention Network (docs/models.md §7) with the depths that give the reported 11.06M: 2,2,2,2.

The study's committed ``van_b1`` has depths 2,2,4,2 (13,400,100 params); ``depths=(2, 2, 4, 2)``
rebuilds it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fastcifar.models.layers import LKA, check_stage_lists
from fastcifar.models.registry import ModelEntry, StudyResult, register

# Per stage: embedding width, blocks and MLP ratio of the 11.06M configuration.
_EMBED_DIMS = (64, 128, 320, 512)
_DEPTHS = (2, 2, 2, 2)
_MLP_RATIOS = (8, 8, 4, 4)


class SpatialAttention(nn.Module):
    """1x1 -> GELU -> LKA -> 1x1, plus the input: ``(N, D, H, W) -> (N, D, H, W)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()
        self.lka = LKA(dim)
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj_out(self.lka(self.act(self.proj_in(x))))


class ConvMlp(nn.Module):
    """1x1 D->RD -> depthwise 3x3 -> GELU -> 1x1 RD->D, all +bias: ``(N, D, H, W) -> (N, D, H, W)``."""

    def __init__(self, dim: int, ratio: int) -> None:
        super().__init__()
        hidden = dim * ratio
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class VANBlock(nn.Module):
    """x + ls1 * Attn(BN(x)), then x + ls2 * MLP(BN(x)); layer scales start at 0.01.

    Shapes: ``(N, D, H, W) -> (N, D, H, W)``.
    """

    def __init__(self, dim: int, mlp_ratio: int, layer_scale: float = 1e-2) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = SpatialAttention(dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, mlp_ratio)
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1[:, None, None] * self.attn(self.norm1(x))
        return x + self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: strided conv (+bias) -> BN: ``(N, Cin, H, W) -> (N, D, H/s, W/s)``."""

    def __init__(self, in_channels: int, dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class VAN(nn.Module):
    """VAN: per stage a patch embedding, blocks, and a LayerNorm over channels; mean-pool head.

    Shapes: ``(N, 3, H, W) -> (N, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int = 100,
        *,
        embed_dims: Sequence[int] = _EMBED_DIMS,
        depths: Sequence[int] = _DEPTHS,
        mlp_ratios: Sequence[int] = _MLP_RATIOS,
    ) -> None:
        super().__init__()
        check_stage_lists(embed_dims=embed_dims, depths=depths, mlp_ratios=mlp_ratios)
        self.embeds = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.norms = nn.ModuleList()
        channels = 3
        for s, (dim, depth, ratio) in enumerate(zip(embed_dims, depths, mlp_ratios)):
            kernel, stride = (7, 4) if s == 0 else (3, 2)
            self.embeds.append(PatchEmbed(channels, dim, kernel, stride))
            self.stages.append(nn.Sequential(*(VANBlock(dim, ratio) for _ in range(depth))))
            self.norms.append(nn.LayerNorm(dim, eps=1e-6))
            channels = dim
        self.classifier = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """VAN's init: conv N(0, sqrt(2 / fan_out)) bias 0; Linear trunc-normal 0.02; LN 1/0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) -> (N, num_classes)``."""
        for embed, blocks, norm in zip(self.embeds, self.stages, self.norms):
            x = blocks(embed(x))
            # LayerNorm over channels at every position (the original flattens to tokens for it).
            x = norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.classifier(x.mean(dim=(2, 3)))


register(
    ModelEntry(
        "van",
        VAN,
        "Visual Attention Network (LKA), dims 64/128/320/512, depths 2/2/2/2",
        study=(
            StudyResult("11.06M", 63.02, 88.46, method="VAN", source="base methods", train_loss=1.09, test_loss=1.39),
        ),
        tiny={"embed_dims": (8, 16), "depths": (1, 1), "mlp_ratios": (2, 2)},
    )
)
