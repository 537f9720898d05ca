"""Reusable layers of the study: SK, Coordinate Attention, Triplet, LKA, GC block, and the small
building blocks (conv-BN-act, stem, init, config checks) the model families share.

Every layer keeps the study's parameterisation (see docs/models.md), so parameter counts match
exactly. SKConv and TripletAttention have two implementations of their memory-bound inner steps,
chosen by ``impl``:

- ``"torch"``: plain PyTorch ops (softmax + weighted sum; max/mean pooling; sum then mean).
- ``"triton"``: the fused ops ``kernels.sk_select``, ``kernels.zpool`` and ``kernels.sk_fuse_mean``.

The two memory-bound steps live in parameter-free modules, :class:`SKSelect` and :class:`ZPool`, so
forward hooks and profiler ranges attach to them by type. ``impl`` only selects code; it never
changes parameters or state-dict keys, so checkpoints move freely between the two.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

import torch
from torch import nn

from fastcifar.errors import UserError

IMPLS = ("torch", "triton")

# Loaded on first use; a module global keeps ``forward`` free of imports (friendly to torch.compile).
_KERNELS: ModuleType | None = None


def _kernel_module() -> ModuleType:
    """Return the ``kernels`` package with its fused ops; raise ImportError when they are missing."""
    global _KERNELS
    if _KERNELS is None:
        module = importlib.import_module("fastcifar.kernels")
        for op in ("sk_select", "zpool"):
            if not callable(getattr(module, op, None)):
                raise ImportError(f"kernels.{op} is not available")
        _KERNELS = module
    return _KERNELS


def triton_available() -> bool:
    """True when the fused kernels import (they also run on CPU tensors, via a reference path)."""
    try:
        _kernel_module()
    except Exception:  # noqa: BLE001 - any failure to import means "not available"
        return False
    return True


def resolve_impl(impl: str | None) -> str:
    """Map ``impl`` (``None`` = automatic) to ``"torch"`` or ``"triton"``.

    Automatic picks ``"triton"`` only on a CUDA machine whose kernels import, else ``"torch"``.
    An explicit ``"triton"`` without importable kernels is a :class:`UserError`.
    """
    if impl is None:
        return "triton" if torch.cuda.is_available() and triton_available() else "torch"
    if impl not in IMPLS:
        raise UserError(f"unknown impl {impl!r}; choose one of: {', '.join(IMPLS)}.")
    if impl == "triton" and not triton_available():
        raise UserError(
            "impl='triton' needs the fused kernels (kernels.sk_select, kernels.zpool), which do not "
            "import here; use impl='torch'."
        )
    return impl


# --------------------------------------------------------------------------------------------
# Small building blocks
# --------------------------------------------------------------------------------------------

# h-swish of the CA paper, x * ReLU6(x + 3) / 6, is exactly PyTorch's Hardswish.
HSwish = nn.Hardswish


def conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int | None = None,
    dilation: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    """Bias-free conv -> BatchNorm -> optional activation; ``(N, Cin, H, W) -> (N, Cout, H', W')``."""
    if padding is None:
        padding = dilation * (kernel_size - 1) // 2
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
    ]
    if act is not None:
        layers.append(act(inplace=True) if act in (nn.ReLU, nn.ReLU6) else act())
    return nn.Sequential(*layers)


def imagenet_stem(width: int, kernel_size: int = 7) -> nn.Sequential:
    """ImageNet-style stem: conv kxk/2-BN-ReLU -> 3x3/2 max-pool, ``(N, 3, 32, 32) -> (N, width, 8, 8)``."""
    return nn.Sequential(conv_bn_act(3, width, kernel_size, stride=2), nn.MaxPool2d(3, stride=2, padding=1))


def check_stage_lists(**lists: Sequence[int]) -> None:
    """Raise :class:`UserError` unless the per-stage lists are non-empty, equally long and positive.

    Example: ``check_stage_lists(widths=widths, depths=depths)``; the message names each list.
    """
    values = list(lists.values())
    if values[0] and all(len(v) == len(values[0]) for v in values) and all(min(v) >= 1 for v in values):
        return
    named = [f"{name} {tuple(v)!r}" for name, v in lists.items()]
    raise UserError(f"{', '.join(named[:-1])} and {named[-1]} must be equally long lists of positive integers.")


# --------------------------------------------------------------------------------------------
# Selective Kernel convolution
# --------------------------------------------------------------------------------------------


def sk_select_torch(branches: list[torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    """Reference SK selection: softmax over the M branches, per channel, then a weighted sum.

    Args:
        branches: M tensors ``(N, C, H, W)``.
        logits: ``(N, M, C)``.
    Returns:
        ``(N, C, H, W)`` = sum_i softmax(logits, dim=1)[:, i] * branches[i].
    """
    weights = logits.softmax(dim=1)
    out = branches[0] * weights[:, 0, :, None, None]
    for i in range(1, len(branches)):
        out = out + branches[i] * weights[:, i, :, None, None]
    return out


class SKSelect(nn.Module):
    """SK "select": softmax over the M branches per channel, then the weighted sum of the branches.

    Parameter-free; ``impl="triton"`` runs the fused ``kernels.sk_select`` (one read of each branch,
    one write of the result), ``"torch"`` runs :func:`sk_select_torch`.

    Shapes: branches M x ``(N, C, H, W)``, logits ``(N, M, C)`` -> ``(N, C, H, W)``.
    """

    def __init__(self, impl: str = "torch") -> None:
        super().__init__()
        if impl not in IMPLS:
            raise UserError(f"unknown impl {impl!r}; choose one of: {', '.join(IMPLS)}.")
        self.impl = impl

    def forward(self, branches: list[torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        if self.impl == "triton":
            return _kernel_module().sk_select(branches, logits)
        return sk_select_torch(branches, logits)

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}"


def branch_sum_mean(branches: list[torch.Tensor], impl: str) -> torch.Tensor:
    """SK "fuse" pooling: mean over H, W of the branch sum, ``M x (N, C, H, W) -> (N, C, 1, 1)``.

    ``impl="triton"`` reads each branch once and never writes the sum (``kernels.sk_fuse_mean``);
    ``"torch"`` adds the branches, then averages.
    """
    if impl == "triton":
        return _kernel_module().sk_fuse_mean(branches)[:, :, None, None]
    summed = branches[0]
    for f in branches[1:]:
        summed = summed + f
    return summed.mean(dim=(2, 3), keepdim=True)


class SKConv(nn.Module):
    """Selective Kernel convolution (split, fuse, select), see docs/models.md.

    Branch i is a 3x3 grouped conv with dilation 1+i (so branch 1 sees a 5x5 field), BN, ReLU.
    The fused descriptor z = ReLU(BN(conv1x1(GAP(sum branches)))) has width d = max(C // r, L);
    M bias-carrying 1x1 convs turn z into per-branch logits, stacked as ``(N, M, C)`` for
    :class:`SKSelect` (``self.combine``; ``self.select`` holds the logit convs, as in the study).

    Shapes: ``(N, C, H, W) -> (N, C, H / stride, W / stride)``.
    """

    def __init__(
        self,
        channels: int,
        *,
        branches: int = 2,
        groups: int = 32,
        reduction: int = 16,
        min_dim: int = 32,
        stride: int = 1,
        impl: str | None = None,
    ) -> None:
        super().__init__()
        if channels % groups:
            raise UserError(f"SKConv channels ({channels}) must be divisible by groups ({groups}).")
        self.impl = resolve_impl(impl)
        self.num_branches = branches
        self.branches = nn.ModuleList(
            conv_bn_act(channels, channels, 3, stride=stride, dilation=1 + i, groups=groups) for i in range(branches)
        )
        dim = max(channels // reduction, min_dim)
        self.fuse = conv_bn_act(channels, dim, 1)
        # Separate convs (not one d -> M*C conv) keep the study's per-branch init fan-out.
        self.select = nn.ModuleList(nn.Conv2d(dim, channels, 1) for _ in range(branches))
        self.combine = SKSelect(self.impl)  # parameter-free: adds no state-dict keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, H', W')``."""
        feats = [branch(x) for branch in self.branches]  # M x (N, C, H', W')
        z = self.fuse(branch_sum_mean(feats, self.impl))  # (N, d, 1, 1)
        logits = torch.stack([sel(z).flatten(1) for sel in self.select], dim=1)  # (N, M, C)
        return self.combine(feats, logits)

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}"


# --------------------------------------------------------------------------------------------
# Coordinate Attention
# --------------------------------------------------------------------------------------------


class CoordinateAttention(nn.Module):
    """Coordinate Attention (Hou et al. 2021) as the study's notebooks build it.

    Direction-aware pooling gives ``(N, C, H+W, 1)``; a shared 1x1 conv (+bias) -> BN -> h-swish
    with width m = max(8, C // 32) feeds two 1x1 convs (+bias) whose sigmoids gate rows and columns.

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``.
    """

    def __init__(self, channels: int, *, min_mid: int = 8, reduction: int = 32) -> None:
        super().__init__()
        mid = max(min_mid, channels // reduction)
        self.conv1 = nn.Conv2d(channels, mid, 1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act = HSwish()
        self.conv_h = nn.Conv2d(mid, channels, 1)
        self.conv_w = nn.Conv2d(mid, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, H, W)``."""
        h, w = x.shape[2], x.shape[3]
        pooled_h = x.mean(dim=3, keepdim=True)  # (N, C, H, 1)
        pooled_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # (N, C, W, 1)
        y = self.act(self.bn1(self.conv1(torch.cat([pooled_h, pooled_w], dim=2))))  # (N, m, H+W, 1)
        y_h, y_w = torch.split(y, [h, w], dim=2)
        gate_h = self.conv_h(y_h).sigmoid()  # (N, C, H, 1)
        gate_w = self.conv_w(y_w.transpose(2, 3)).sigmoid()  # (N, C, 1, W)
        return x * gate_w * gate_h


# --------------------------------------------------------------------------------------------
# Triplet Attention
# --------------------------------------------------------------------------------------------


def zpool_torch(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Z-pool: ``[max, mean]`` along ``dim``, concatenated there (size 2 at ``dim``)."""
    return torch.cat([x.amax(dim=dim, keepdim=True), x.mean(dim=dim, keepdim=True)], dim=dim)


class ZPool(nn.Module):
    """Z-pool along ``dim``: ``[max, mean]`` concatenated there, e.g. dim 1: ``(N, C, H, W) -> (N, 2, H, W)``.

    Parameter-free; ``impl="triton"`` runs ``kernels.zpool`` (reads x in place, any layout; the max's
    gradient goes to the first maximum), ``"torch"`` runs :func:`zpool_torch`.
    """

    def __init__(self, dim: int = 1, impl: str = "torch") -> None:
        super().__init__()
        if impl not in IMPLS:
            raise UserError(f"unknown impl {impl!r}; choose one of: {', '.join(IMPLS)}.")
        self.dim = dim
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "triton":
            return _kernel_module().zpool(x, self.dim)
        return zpool_torch(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, impl={self.impl!r}"


class AttentionGate(nn.Module):
    """Triplet gate body: 7x7 conv 2->1 (no bias) -> BN(eps 1e-5, momentum 0.01) -> sigmoid.

    Shapes: pooled ``(N, 2, A, B) -> (N, 1, A, B)`` gate in [0, 1].
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(pooled)).sigmoid()


class TripletAttention(nn.Module):
    """Triplet Attention (Misra et al. 2021): three (or two) rotated Z-pool gates, averaged.

    Branch "cw" gates the (C, W) plane (pooling over H), "hc" the (H, C) plane (pooling over W),
    "hw" the spatial plane (pooling over C). Each gate sees its plane in the permuted layout of the
    original code: ``x.permute(0, 2, 1, 3)`` for cw and ``x.permute(0, 3, 2, 1)`` for hc.

    The original permutes x, then pools dim 1. Here each :class:`ZPool` pools x along the original
    dim that the permutation moves to position 1 (no permuted copy of x), and only the small pooled
    map is permuted; the values are identical.

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``.
    """

    # Self-inverse permutations of the original code, and the dim of x each one brings to position 1.
    PERM_CW = (0, 2, 1, 3)  # (N, H, C, W): pools H
    PERM_HC = (0, 3, 2, 1)  # (N, W, H, C): pools W

    def __init__(self, *, no_spatial: bool = False, kernel_size: int = 7, impl: str | None = None):
        super().__init__()
        self.impl = resolve_impl(impl)
        self.no_spatial = no_spatial
        self.cw = AttentionGate(kernel_size)
        self.hc = AttentionGate(kernel_size)
        self.hw = None if no_spatial else AttentionGate(kernel_size)
        # Parameter-free: no state-dict keys.
        self.pool_cw = ZPool(self.PERM_CW[1], self.impl)
        self.pool_hc = ZPool(self.PERM_HC[1], self.impl)
        self.pool_hw = None if no_spatial else ZPool(1, self.impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, H, W)``."""
        perm_cw, perm_hc = self.PERM_CW, self.PERM_HC
        out = x * self.cw(self.pool_cw(x).permute(perm_cw)).permute(perm_cw)
        out = out + x * self.hc(self.pool_hc(x).permute(perm_hc)).permute(perm_hc)
        if self.hw is None or self.pool_hw is None:
            return out * 0.5
        out = out + x * self.hw(self.pool_hw(x))
        return out * (1.0 / 3.0)

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}, no_spatial={self.no_spatial}"


# --------------------------------------------------------------------------------------------
# Large Kernel Attention (VAN)
# --------------------------------------------------------------------------------------------


class LKA(nn.Module):
    """Large Kernel Attention (Guo et al. 2022): dw 5x5 -> dw 7x7 (dilation 3) -> 1x1, all +bias.

    The result multiplies the input. Shapes: ``(N, D, H, W) -> (N, D, H, W)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_local = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv_dilated = nn.Conv2d(dim, dim, 7, padding=9, dilation=3, groups=dim)
        self.conv_channel = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_channel(self.conv_dilated(self.conv_local(x)))


# --------------------------------------------------------------------------------------------
# Global Context block (GCNet)
# --------------------------------------------------------------------------------------------


class GCBlock(nn.Module):
    """Global Context block (Cao et al. 2019), attention pooling + "channel_add" fusion.

    context = sum_j softmax(conv1x1(x))_j * x_j; y = x + conv(ReLU(LN(conv(context)))).
    The last conv starts at zero, so a fresh block is the identity.

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``.
    """

    def __init__(self, channels: int, *, ratio: float = 1 / 8) -> None:
        super().__init__()
        hidden = int(channels * ratio)
        self.mask = nn.Conv2d(channels, 1, 1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
        )
        nn.init.kaiming_normal_(self.mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.mask.bias)
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, H, W)``."""
        n, c = x.shape[:2]
        attn = self.mask(x).flatten(2).softmax(dim=-1)  # (N, 1, HW)
        context = torch.bmm(x.flatten(2), attn.transpose(1, 2))  # (N, C, 1)
        return x + self.transform(context.view(n, c, 1, 1))


def init_kaiming_fan_out(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) for every conv weight; BatchNorm weight 1, bias 0.

    Conv biases and Linear layers keep PyTorch's defaults (as in the SKNet and Res2Net notebooks).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
