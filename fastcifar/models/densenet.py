"""DenseNet-BC family of the study (docs/models.md §11-§14): the baseline and its SK / CA / Triplet variants.

Two layouts exist in the study and both are kept, because the reported numbers need them:

- pre-activation (``densenet121``, ``densenet_ca``, ``densenet_triplet``, ``sk_densenet_catsk``):
  BN-ReLU-conv layers, bare stem, transitions without ReLU, final BN-ReLU before pooling;
- post-activation (``sk_densenet``): conv-BN-ReLU layers, stem conv-BN-ReLU + SKConv, transitions
  with ReLU, no final BN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from fastcifar.errors import UserError
from fastcifar.models.layers import CoordinateAttention, SKConv, TripletAttention, conv_bn_act
from fastcifar.models.registry import StudyResult, register_model

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


class PreActDenseNet(nn.Module):
    """Pre-activation DenseNet-BC for 32x32 inputs (docs/models.md §11, §13, §14).

    Args:
        growth_rate: k; the stem gives 2k channels, bottlenecks 4k.
        block_config: layers per dense block.
        attention: optional factory for a module after every bottleneck's 1x1 conv (on 4k channels).
        stem_sk / concat_sk_k: the catsk variant's SKConv after the stem and after the concat of
            the layers chosen by :func:`sk_layer_indices` with this k (None = no SK).
        sk_kwargs: SKConv settings (groups, reduction, impl, ...).
    Shapes: ``(N, 3, 32, 32) -> (N, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int = 100,
        *,
        growth_rate: int = 20,
        block_config: Sequence[int] = _DEFAULT_BLOCKS,
        compression: float = 0.5,
        attention: AttentionFactory | None = None,
        stem_sk: bool = False,
        concat_sk_k: int | None = None,
        sk_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        _check_config(growth_rate, block_config, compression)
        if concat_sk_k is not None:
            _check_sk_k(concat_sk_k)
        sk_kwargs = sk_kwargs or {}
        channels = 2 * growth_rate
        stem: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1, bias=False)]
        if stem_sk:
            stem.append(SKConv(channels, **sk_kwargs))
        self.stem = nn.Sequential(*stem)
        stages: list[nn.Module] = []
        for b, num_layers in enumerate(block_config):
            sk_at = sk_layer_indices(num_layers, concat_sk_k) if concat_sk_k else set()
            layers = []
            for i in range(num_layers):
                layers.append(
                    PreActBottleneck(
                        channels,
                        growth_rate,
                        attention=attention(4 * growth_rate) if attention else None,
                        post_concat=(SKConv(channels + growth_rate, **sk_kwargs) if i in sk_at else None),
                    )
                )
                channels += growth_rate
            stages.append(nn.Sequential(*layers))
            if b < len(block_config) - 1:
                out_channels = int(channels * compression)
                stages.append(PreActTransition(channels, out_channels))
                channels = out_channels
        self.features = nn.Sequential(*stages)
        self.final = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) -> (N, num_classes)``."""
        x = self.final(self.features(self.stem(x)))
        return self.classifier(x.mean(dim=(2, 3)))


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


class PostActDenseNet(nn.Module):
    """Post-activation DenseNet-BC with a stem SKConv and SKConv in every ⌊n/k⌋-th layer (docs/models.md §12).

    The study's reported counts also include one never-used CA per bottleneck (823,198 dead
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
        k: int = 5,
        sk_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        _check_config(growth_rate, block_config, compression)
        _check_sk_k(k)
        sk_kwargs = sk_kwargs or {}
        channels = 2 * growth_rate
        self.stem = nn.Sequential(conv_bn_act(3, channels, 3), SKConv(channels, **sk_kwargs))
        stages: list[nn.Module] = []
        for b, num_layers in enumerate(block_config):
            sk_at = sk_layer_indices(num_layers, k)
            layers = []
            for i in range(num_layers):
                sk = SKConv(4 * growth_rate, **sk_kwargs) if i in sk_at else None
                layers.append(PostActBottleneck(channels, growth_rate, sk=sk))
                channels += growth_rate
            stages.append(nn.Sequential(*layers))
            if b < len(block_config) - 1:
                out_channels = int(channels * compression)
                stages.append(nn.Sequential(conv_bn_act(channels, out_channels, 1), nn.AvgPool2d(2)))
                channels = out_channels
        self.features = nn.Sequential(*stages)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) -> (N, num_classes)``."""
        return self.classifier(self.features(self.stem(x)).mean(dim=(2, 3)))


# --------------------------------------------------------------------------------------------
# Registry entries
# --------------------------------------------------------------------------------------------

_DEAD_CA_NOTE = "report count includes 823,198 dead CA params"
# Two dense blocks of two layers at growth 4: a transition, and (for the SK variants) the stem SK
# plus SK in every layer, in a few thousand parameters.
_TINY = {"growth_rate": 4, "block_config": (2, 2)}
_SK_DENSENET_METHOD = "DenseNet+SK Conv(//{k}, Conv1->SK Conv->Conv2)"


@register_model(
    "densenet121",
    summary="pre-activation DenseNet-BC, growth 20, blocks 6/12/24/16 (the study's 'DenseNet121')",
    study=(StudyResult("2.8M", 74.36, 94.3, method="DenseNet121", source="Table 2"),),
    tiny=_TINY,
)
def densenet121(
    num_classes: int = 100,
    *,
    growth_rate: int = 20,
    block_config: Sequence[int] = _DEFAULT_BLOCKS,
    compression: float = 0.5,
) -> nn.Module:
    return PreActDenseNet(num_classes, growth_rate=growth_rate, block_config=block_config, compression=compression)


@register_model(
    "densenet_ca",
    summary="densenet121 + Coordinate Attention after every bottleneck 1x1 conv",
    study=(StudyResult("2.92M", 75.54, 94.11, method="DenseNet+CA Conv(Conv1->CA Conv->Conv2)", source="Table 2"),),
    tiny=_TINY,
)
def densenet_ca(
    num_classes: int = 100,
    *,
    growth_rate: int = 20,
    block_config: Sequence[int] = _DEFAULT_BLOCKS,
    compression: float = 0.5,
) -> nn.Module:
    return PreActDenseNet(
        num_classes,
        growth_rate=growth_rate,
        block_config=block_config,
        compression=compression,
        attention=CoordinateAttention,
    )


@register_model(
    "densenet_triplet",
    summary="densenet121 + Triplet Attention after every bottleneck 1x1 conv",
    study=(
        StudyResult(
            "2.81M", 74.87, 94.04, method="DenseNet+Triple attention(Conv1->Triple attention->Conv2)", source="Table 2"
        ),
    ),
    tiny=_TINY,
)
def densenet_triplet(
    num_classes: int = 100,
    *,
    growth_rate: int = 20,
    block_config: Sequence[int] = _DEFAULT_BLOCKS,
    compression: float = 0.5,
    no_spatial: bool = False,
    impl: str | None = None,
) -> nn.Module:
    return PreActDenseNet(
        num_classes,
        growth_rate=growth_rate,
        block_config=block_config,
        compression=compression,
        attention=lambda _channels: TripletAttention(no_spatial=no_spatial, impl=impl),
    )


def _sk_dense_post(num_classes: int, *, k: int, sk_kwargs: dict, **common) -> nn.Module:
    """sk_densenet's network: post-activation, stem SK, SK inside every n//k-th bottleneck."""
    return PostActDenseNet(num_classes, k=k, sk_kwargs=sk_kwargs, **common)


def _sk_dense_catsk(num_classes: int, *, k: int, sk_kwargs: dict, **common) -> nn.Module:
    """sk_densenet_catsk's network: pre-activation, stem SK, SK after every n//k-th concat."""
    return PreActDenseNet(num_classes, stem_sk=True, concat_sk_k=k, sk_kwargs=sk_kwargs, **common)


def _register_sk_densenet(
    name: str,
    network: Callable[..., nn.Module],
    *,
    summary: str,
    study: tuple[StudyResult, ...],
    tiny: dict,
    k: int,
    sk_groups: int,
    sk_reduction: int,
) -> None:
    """Register one SK DenseNet reading; ``k``, ``sk_groups`` and ``sk_reduction`` are its defaults."""

    @register_model(name, summary=summary, study=study, tiny=tiny)
    def build(
        num_classes: int = 100,
        *,
        growth_rate: int = 20,
        block_config: Sequence[int] = _DEFAULT_BLOCKS,
        compression: float = 0.5,
        k: int = k,
        sk_groups: int = sk_groups,
        sk_reduction: int = sk_reduction,
        sk_min_dim: int = 32,
        sk_branches: int = 2,
        impl: str | None = None,
    ) -> nn.Module:
        sk_kwargs = dict(groups=sk_groups, reduction=sk_reduction, min_dim=sk_min_dim, branches=sk_branches, impl=impl)
        common = dict(growth_rate=growth_rate, block_config=block_config, compression=compression)
        return network(num_classes, k=k, sk_kwargs=sk_kwargs, **common)


_register_sk_densenet(
    "sk_densenet",
    _sk_dense_post,
    summary="post-activation DenseNet-BC + stem SK + SK (G=2, r=8) in every n//k-th layer",
    study=(
        StudyResult(
            "4.13M", 75.41, 94.25, {"k": 2}, _DEAD_CA_NOTE, method=_SK_DENSENET_METHOD.format(k=2), source="Table 2"
        ),
        StudyResult(
            "4.78M", 76.94, 94.72, {"k": 4}, _DEAD_CA_NOTE, method=_SK_DENSENET_METHOD.format(k=4), source="Table 2"
        ),
        # The report's best model; its final losses are given under Figure 6.
        StudyResult(
            "5.18M",
            77.27,
            94.76,
            {},
            "k=5; " + _DEAD_CA_NOTE,
            method=_SK_DENSENET_METHOD.format(k=5),
            source="Table 2, Figure 6",
            train_loss=0.207,
            test_loss=0.96,
        ),
        StudyResult(
            "5.31M", 76.74, 94.68, {"k": 6}, _DEAD_CA_NOTE, method=_SK_DENSENET_METHOD.format(k=6), source="Table 2"
        ),
    ),
    tiny={**_TINY, "k": 2},
    k=5,
    sk_groups=2,
    sk_reduction=8,
)
_register_sk_densenet(
    "sk_densenet_catsk",
    _sk_dense_catsk,
    summary="pre-activation DenseNet-BC + stem SK + SK (G=4, r=16) after the concat, n//2 rule",
    study=(StudyResult("5.9M", 74.68, 94.15, method="DenseNet+SK Conv(//2, Conv2->Cat->SK Conv)", source="Table 2"),),
    tiny=_TINY,
    k=2,
    sk_groups=4,
    sk_reduction=16,
)
