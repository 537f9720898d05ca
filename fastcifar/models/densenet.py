"""DenseNet-BC family of the study (docs/models.md §11-§14): the baseline and its SK / CA / Triplet variants.

Two layouts exist in the study and both are kept, because the reported numbers need them:

- pre-activation (``densenet121``, ``densenet_ca``, ``densenet_triplet``, ``sk_densenet_catsk``):
  BN-ReLU-conv layers, bare stem, transitions without ReLU, final BN-ReLU before pooling;
- post-activation (``sk_densenet``): conv-BN-ReLU layers, stem conv-BN-ReLU + SKConv, transitions
  with ReLU, no final BN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from fastcifar.errors import UserError
from fastcifar.models.layers import CoordinateAttention, SKConv, TripletAttention, conv_bn_act
from fastcifar.models.registry import ModelEntry, StudyResult, register

# Layers per dense block of the study's "DenseNet121" (DenseNet-121 depths at growth 20).
_DEFAULT_BLOCKS = (6, 12, 24, 16)
# A factory for the attention module placed after each bottleneck's 1x1 conv: channels -> module.
AttentionFactory = Callable[[int], nn.Module]


def _check_config(growth_rate: int, block_config: Sequence[int], compression: float) -> None:
    if growth_rate < 1:
        raise UserError(f"growth_rate must be a positive integer, got {growth_rate!r}.")
    if not block_config or any(int(n) < 1 for n in block_config):
        raise UserError(f"block_config must be positive layer counts, got {block_config!r}.")
    if not 0.0 < compression <= 1.0:
        raise UserError(f"compression must be in (0, 1], got {compression!r}.")


def _check_sk_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise UserError(f"k (SK in every n//k-th layer) must be a positive integer, got {k!r}.")


def sk_layer_indices(num_layers: int, k: int) -> set[int]:
    """Layers of a block of ``num_layers`` that carry an SKConv: i with i mod max(1, n // k) == 0.

    The study's rule is ``i % (n // k) == 0``; it divides by zero when n < k (e.g. k > 6 on the
    6-layer first block), so the step is clamped to 1 there (every layer gets SK), which only
    matters for tiny test configurations.
    """
    step = max(1, num_layers // k)
    return {i for i in range(num_layers) if i % step == 0}


def dense_stages(
    channels: int,
    growth_rate: int,
    block_config: Sequence[int],
    compression: float,
    layer: Callable[[int, int, int], nn.Module],
    transition: Callable[[int, int], nn.Module],
) -> tuple[nn.Sequential, int]:
    """The dense blocks of both layouts, a transition between consecutive blocks; also the channels out.

    ``layer(in_channels, i, num_layers)`` builds layer ``i`` of a block of ``num_layers``, which adds
    ``growth_rate`` channels; ``transition(in_channels, out_channels)`` compresses by ``compression``.
    """
    stages: list[nn.Module] = []
    for b, num_layers in enumerate(block_config):
        layers = []
        for i in range(num_layers):
            layers.append(layer(channels, i, num_layers))
            channels += growth_rate
        stages.append(nn.Sequential(*layers))
        if b < len(block_config) - 1:
            out_channels = int(channels * compression)
            stages.append(transition(channels, out_channels))
            channels = out_channels
    return nn.Sequential(*stages), channels


# --------------------------------------------------------------------------------------------
# Pre-activation DenseNet-BC
# --------------------------------------------------------------------------------------------


class PreActBottleneck(nn.Module):
    """BN-ReLU-1x1 (-> attention) -BN-ReLU-3x3, concatenated to the input (optionally then SK).

    Shapes: ``(N, Cin, H, W) -> (N, Cin + k, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        growth_rate: int,
        *,
        bottleneck_width: int = 4,
        attention: nn.Module | None = None,
        post_concat: nn.Module | None = None,
    ) -> None:
        super().__init__()
        inner = bottleneck_width * growth_rate
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, inner, 1, bias=False)
        self.attention = attention if attention is not None else nn.Identity()
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, growth_rate, 3, padding=1, bias=False)
        self.post_concat = post_concat if post_concat is not None else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.attention(self.conv1(self.relu(self.bn1(x))))
        out = self.conv2(self.relu(self.bn2(out)))
        return self.post_concat(torch.cat([x, out], dim=1))


class PreActTransition(nn.Module):
    """BN -> 1x1 conv -> 2x2 average pool (no ReLU, as in the study): ``(N, C, H, W) -> (N, C', H/2, W/2)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.bn(x)))


# --------------------------------------------------------------------------------------------
# Post-activation SK-DenseNet
# --------------------------------------------------------------------------------------------


class PostActBottleneck(nn.Module):
    """1x1-BN-ReLU (-> SKConv) -> 3x3-BN-ReLU, concatenated to the input (docs/models.md §12).

    Shapes: ``(N, Cin, H, W) -> (N, Cin + k, H, W)``.
    """

    def __init__(
        self, in_channels: int, growth_rate: int, *, sk: nn.Module | None = None, bottleneck_width: int = 4
    ) -> None:
        super().__init__()
        inner = bottleneck_width * growth_rate
        self.conv1 = conv_bn_act(in_channels, inner, 1)
        self.sk = sk if sk is not None else nn.Identity()
        self.conv2 = conv_bn_act(inner, growth_rate, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv2(self.sk(self.conv1(x)))], dim=1)


# --------------------------------------------------------------------------------------------
# The network (both layouts)
# --------------------------------------------------------------------------------------------


class DenseNet(nn.Module):
    """DenseNet-BC for 32x32 inputs in the study's two layouts; its keyword parameters are every DenseNet id's options.

    Args:
        growth_rate: k; the stem gives 2k channels, bottlenecks 4k.
        block_config: layers per dense block; compression: channel factor of each transition.
        layout: ``"pre"`` (BN-ReLU-conv layers, bare stem, transitions without ReLU, final BN-ReLU;
            docs/models.md §11, §13, §14) or ``"post"`` (conv-BN-ReLU layers and transitions, stem
            conv-BN-ReLU + SKConv, no final BN; §12).
        attention: ``"ca"`` or ``"triplet"`` (``no_spatial``, ``impl``) after every bottleneck's 1x1
            conv, on 4k channels (pre-activation layout).
        k: SKConv (``sk_*``, ``impl``) after the stem and in the layers :func:`sk_layer_indices`
            chooses: inside the bottleneck after its 1x1 conv (post-activation; required there) or
            after the concat (pre-activation; None = no SK).

    The ids fix ``layout`` and ``attention`` and leave out the options that do not apply to them.
    The study's post-activation counts also include one never-used CA per bottleneck (823,198 dead
    parameters at k=20); they cannot change the output, so they are not built here.

    Shapes: ``(N, 3, 32, 32) -> (N, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int = 100,
        *,
        growth_rate: int = 20,
        block_config: Sequence[int] = _DEFAULT_BLOCKS,
        compression: float = 0.5,
        layout: str = "pre",
        attention: str | None = None,
        no_spatial: bool = False,
        k: int | None = None,
        sk_groups: int = 2,
        sk_reduction: int = 8,
        sk_min_dim: int = 32,
        sk_branches: int = 2,
        impl: str | None = None,
    ) -> None:
        super().__init__()
        _check_config(growth_rate, block_config, compression)
        post = layout == "post"
        if post or k is not None:
            _check_sk_k(k)
        sk_kwargs = dict(groups=sk_groups, reduction=sk_reduction, min_dim=sk_min_dim, branches=sk_branches, impl=impl)
        attend: dict[str | None, AttentionFactory | None] = {
            None: None,
            "ca": CoordinateAttention,
            "triplet": lambda _channels: TripletAttention(no_spatial=no_spatial, impl=impl),
        }
        factory = attend[attention]
        channels = 2 * growth_rate

        def sk_at(i: int, num_layers: int) -> bool:
            return k is not None and i in sk_layer_indices(num_layers, k)

        def pre_layer(in_channels: int, i: int, num_layers: int) -> nn.Module:
            return PreActBottleneck(
                in_channels,
                growth_rate,
                attention=factory(4 * growth_rate) if factory else None,
                post_concat=SKConv(in_channels + growth_rate, **sk_kwargs) if sk_at(i, num_layers) else None,
            )

        def post_layer(in_channels: int, i: int, num_layers: int) -> nn.Module:
            sk = SKConv(4 * growth_rate, **sk_kwargs) if sk_at(i, num_layers) else None
            return PostActBottleneck(in_channels, growth_rate, sk=sk)

        def post_transition(in_channels: int, out_channels: int) -> nn.Module:
            return nn.Sequential(conv_bn_act(in_channels, out_channels, 1), nn.AvgPool2d(2))

        stem: list[nn.Module] = [
            conv_bn_act(3, channels, 3) if post else nn.Conv2d(3, channels, 3, padding=1, bias=False)
        ]
        if k is not None:
            stem.append(SKConv(channels, **sk_kwargs))
        self.stem = nn.Sequential(*stem)
        layer, transition = (post_layer, post_transition) if post else (pre_layer, PreActTransition)
        self.features, channels = dense_stages(channels, growth_rate, block_config, compression, layer, transition)
        self.final = nn.Identity() if post else nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) -> (N, num_classes)``."""
        x = self.final(self.features(self.stem(x)))
        return self.classifier(x.mean(dim=(2, 3)))


# --------------------------------------------------------------------------------------------
# Registry entries
# --------------------------------------------------------------------------------------------

_DEAD_CA_NOTE = "report count includes 823,198 dead CA params"
# Two dense blocks of two layers at growth 4: a transition, and (for the SK variants) the stem SK
# plus SK in every layer, in a few thousand parameters.
_TINY = {"growth_rate": 4, "block_config": (2, 2)}


def _sk_densenet_study(k: int, reported: str, **figures: object) -> StudyResult:
    """sk_densenet's row of Table 2 at ``k`` (the default k=5 is the report's best model)."""
    overrides = {} if k == 5 else {"k": k}
    note = ("k=5; " if k == 5 else "") + _DEAD_CA_NOTE
    method = f"DenseNet+SK Conv(//{k}, Conv1->SK Conv->Conv2)"
    return StudyResult(reported, overrides=overrides, note=note, method=method, **figures)


# What the ids without SK fix: those options do not apply to them.
_NO_SK = {"k": None, "sk_groups": 2, "sk_reduction": 8, "sk_min_dim": 32, "sk_branches": 2}
_NO_ATTENTION = {"attention": None, "no_spatial": False}


def _without_sk(name: str, attention: str | None, summary: str, study: StudyResult) -> ModelEntry:
    """A pre-activation id without SK: the baseline, or CA / Triplet after every bottleneck 1x1 conv."""
    triplet_options = {} if attention == "triplet" else {"no_spatial": False, "impl": None}
    fixed = {"layout": "pre", "attention": attention, **triplet_options, **_NO_SK}
    return ModelEntry(name, DenseNet, summary, fixed=fixed, study=(study,), tiny=_TINY)


def _with_sk(
    name: str,
    layout: str,
    summary: str,
    defaults: dict[str, Any],
    study: tuple[StudyResult, ...],
    tiny: dict[str, Any] = _TINY,
) -> ModelEntry:
    """An SK id (no attention): SK after the stem and in every n//k-th layer; ``defaults`` its k and SK settings."""
    fixed = {"layout": layout, **_NO_ATTENTION}
    return ModelEntry(name, DenseNet, summary, defaults=defaults, fixed=fixed, study=study, tiny=tiny)


for _entry in (
    _without_sk(
        "densenet121",
        None,
        "pre-activation DenseNet-BC, growth 20, blocks 6/12/24/16 (the study's 'DenseNet121')",
        StudyResult("2.8M", 74.36, 94.3, method="DenseNet121", source="Table 2"),
    ),
    _without_sk(
        "densenet_ca",
        "ca",
        "densenet121 + Coordinate Attention after every bottleneck 1x1 conv",
        StudyResult("2.92M", 75.54, 94.11, method="DenseNet+CA Conv(Conv1->CA Conv->Conv2)", source="Table 2"),
    ),
    _without_sk(
        "densenet_triplet",
        "triplet",
        "densenet121 + Triplet Attention after every bottleneck 1x1 conv",
        StudyResult(
            "2.81M", 74.87, 94.04, method="DenseNet+Triple attention(Conv1->Triple attention->Conv2)", source="Table 2"
        ),
    ),
    _with_sk(
        "sk_densenet",
        "post",
        "post-activation DenseNet-BC + stem SK + SK (G=2, r=8) in every n//k-th layer",
        {"k": 5, "sk_groups": 2, "sk_reduction": 8},
        (
            _sk_densenet_study(2, "4.13M", top1=75.41, top5=94.25, source="Table 2"),
            _sk_densenet_study(4, "4.78M", top1=76.94, top5=94.72, source="Table 2"),
            # The report's best model; its final losses are given under Figure 6.
            _sk_densenet_study(
                5, "5.18M", top1=77.27, top5=94.76, source="Table 2, Figure 6", train_loss=0.207, test_loss=0.96
            ),
            _sk_densenet_study(6, "5.31M", top1=76.74, top5=94.68, source="Table 2"),
        ),
        tiny={**_TINY, "k": 2},
    ),
    _with_sk(
        "sk_densenet_catsk",
        "pre",
        "pre-activation DenseNet-BC + stem SK + SK (G=4, r=16) after the concat, n//2 rule",
        {"k": 2, "sk_groups": 4, "sk_reduction": 16},
        (StudyResult("5.9M", 74.68, 94.15, method="DenseNet+SK Conv(//2, Conv2->Cat->SK Conv)", source="Table 2"),),
    ),
):
    register(_entry)
