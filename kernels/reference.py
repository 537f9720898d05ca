"""Pure-PyTorch references for the fused ops: the CPU fallback and the ground truth in tests.

All math runs in float32 (float64 for float64 inputs) and the result is cast back to the input dtype,
the same contract as the Triton kernels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_branch_list(branches: Sequence[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    """Branches as a list of M (N, C, H, W) tensors; a (N, M, C, H, W) tensor is split into views (no copy)."""
    if isinstance(branches, torch.Tensor):
        if branches.dim() != 5:
            raise ValueError(
                f"sk_select: a stacked branches tensor must be (N, M, C, H, W), got shape {tuple(branches.shape)}."
            )
        return list(branches.unbind(1))
    return list(branches)


def sk_select_reference(branches: Sequence[torch.Tensor] | torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """V[n,c,h,w] = sum_m softmax_m(logits[n,:,c]) * F_m[n,c,h,w].

    branches: M tensors (N, C, H, W) or one (N, M, C, H, W) tensor; logits: (N, M, C).
    Returns (N, C, H, W) in the branches' dtype.
    """
    feats = as_branch_list(branches)
    acc = _acc_dtype(feats[0].dtype)
    attn = torch.softmax(logits.to(acc), dim=1)  # (N, M, C)
    out = attn[:, 0, :, None, None] * feats[0].to(acc)
    for m in range(1, len(feats)):
        out = out + attn[:, m, :, None, None] * feats[m].to(acc)
    return out.to(feats[0].dtype)


def sk_fuse_mean_reference(branches: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """SK "fuse" step s[n,c] = mean_hw sum_m F_m[n,c,h,w]: (N, C) in the branches' dtype."""
    feats = as_branch_list(branches)
    acc = _acc_dtype(feats[0].dtype)
    total = feats[0].to(acc)
    for f in feats[1:]:
        total = total + f.to(acc)
    return total.mean(dim=(2, 3)).to(feats[0].dtype)


def first_argmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Index of the maximum along `dim`, keepdim, ties broken towards the smallest index.

    This is what torch.max(dim) returns on CPU; on CUDA torch does not promise a tie rule, so the
    rule is spelled out here rather than borrowed.
    """
    size = x.shape[dim]
    shape = [1] * x.dim()
    shape[dim] = size
    positions = torch.arange(size, device=x.device).view(shape)
    is_max = x == x.amax(dim=dim, keepdim=True)
    return torch.where(is_max, positions, size).amin(dim=dim, keepdim=True)


def normalize_pool_dim(x: torch.Tensor, dim: int) -> int:
    """Map dim in {1, 2, 3} or {-3, -2, -1} of a 4-D tensor to {1, 2, 3}; reject anything else."""
    if x.dim() != 4:
        raise ValueError(f"zpool: x must be (N, C, H, W), got shape {tuple(x.shape)}.")
    if dim not in (1, 2, 3, -1, -2, -3):
        raise ValueError(f"zpool: dim must be one of 1, 2, 3 (or -3, -2, -1), got {dim}.")
    return dim % 4


def zpool_reference(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Z-pool: concat([max, mean]) along `dim` of x (N, C, H, W); the result has size 2 at `dim`.

    The max's gradient goes to the first index of the maximum (see first_argmax), matching the kernel.
    """
    dim = normalize_pool_dim(x, dim)
    acc = _acc_dtype(x.dtype)
    xa = x.to(acc)
    peak = xa.gather(dim, first_argmax(x, dim))
    mean = xa.mean(dim=dim, keepdim=True)
    return torch.cat([peak, mean], dim=dim).to(x.dtype)
