"""Public entry points: validate arguments, then run the Triton op or the pure-PyTorch reference.

Dispatch happens here, in Python, before the custom op is called: CUDA tensors (and CPU tensors under
TRITON_INTERPRET=1) go to the Triton op, everything else to the reference. Choosing here rather than
registering a CPU kernel on the op keeps torch.compile clean: Dynamo resolves the branch statically
from the device, and a compiled CPU model contains plain aten ops that Inductor fuses, instead of a
triton_op whose kernels Inductor could not lower for CPU.
"""

from collections.abc import Sequence

import torch

from ._runtime import HAS_TRITON, use_triton
from .reference import (
    as_branch_list,
    normalize_pool_dim,
    sk_fuse_mean_reference,
    sk_select_reference,
    zpool_reference,
)

if HAS_TRITON:
    from . import sk_select as _sk  # noqa: F401  (registers fastcifar::sk_select*)
    from . import zpool as _zp  # noqa: F401  (registers fastcifar::zpool*)


_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _check_branches(feats: list[torch.Tensor], name: str) -> None:
    if not 1 <= len(feats) <= 4:
        raise ValueError(f"{name}: expected 1 to 4 branches, got {len(feats)}.")
    f0 = feats[0]
    if f0.dim() != 4:
        raise ValueError(f"{name}: each branch must be (N, C, H, W), got shape {tuple(f0.shape)}.")
    for f in feats[1:]:
        if f.shape != f0.shape or f.dtype != f0.dtype or f.device != f0.device:
            raise ValueError(
                f"{name}: all branches must share shape, dtype and device; got {tuple(f0.shape)} "
                f"{f0.dtype} {f0.device} and {tuple(f.shape)} {f.dtype} {f.device}."
            )


def sk_select(branches: Sequence[torch.Tensor] | torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Selective-Kernel select: V = sum_m softmax_m(logits)[:, m, :, None, None] * F_m.

    branches: M (<= 4) tensors (N, C, H, W), or one (N, M, C, H, W) tensor (split into views, no copy;
    its gradient is then assembled by autograd's stack). logits: (N, M, C), softmax over M inside.
    Returns (N, C, H, W) in the branches' dtype, channels_last if the first branch is.
    """
    feats = as_branch_list(branches)
    _check_branches(feats, "sk_select")
    N, C = feats[0].shape[:2]
    if tuple(logits.shape) != (N, len(feats), C):
        raise ValueError(f"sk_select: logits must be (N, M, C) = {(N, len(feats), C)}, got {tuple(logits.shape)}.")
    if use_triton(feats[0]) and feats[0].dtype in _FLOATS and logits.dtype in _FLOATS:
        return torch.ops.fastcifar.sk_select(feats, logits)
    return sk_select_reference(feats, logits)


def sk_fuse_mean(branches: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Selective-Kernel fuse: s[n, c] = mean_hw sum_m F_m[n, c, h, w], without materialising sum_m F_m.

    branches as in sk_select. Returns (N, C) in the branches' dtype.
    """
    feats = as_branch_list(branches)
    _check_branches(feats, "sk_fuse_mean")
    if use_triton(feats[0]) and feats[0].dtype in _FLOATS:
        return torch.ops.fastcifar.sk_fuse_mean(feats)
    return sk_fuse_mean_reference(feats)


def zpool(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Z-pool of x (N, C, H, W) along dim (1, 2, 3 or negative): [max, mean] stacked, size 2 at dim.

    Pools in place along the original strides (no permute().contiguous() copy). The max's gradient
    goes to the first index of the maximum along dim, the mean's to every element.
    """
    dim = normalize_pool_dim(x, dim)
    if use_triton(x) and x.dtype in _FLOATS:
        out, _argmax = torch.ops.fastcifar.zpool(x, dim)
        return out
    return zpool_reference(x, dim)
