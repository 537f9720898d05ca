"""Fused Triton kernels for the study's attention layers, visible to torch.compile.

- sk_select(branches, logits): Selective-Kernel softmax over branches and weighted sum.
- sk_fuse_mean(branches): the SK fuse step, mean over H, W of the branch sum.
- zpool(x, dim): Triplet-attention Z-pool ([max, mean] along one dim).

CUDA tensors run Triton kernels (torch.library ops with autograd); CPU tensors run the pure-PyTorch
references, or the Triton kernels through the interpreter when TRITON_INTERPRET=1.
"""

from ._dispatch import sk_fuse_mean, sk_select, zpool
from ._runtime import HAS_TRITON, INTERPRET, set_output_poison, use_triton
from .reference import sk_fuse_mean_reference, sk_select_reference, zpool_reference

__all__ = [
    "HAS_TRITON",
    "INTERPRET",
    "set_output_poison",
    "sk_fuse_mean",
    "sk_fuse_mean_reference",
    "sk_select",
    "sk_select_reference",
    "use_triton",
    "zpool",
    "zpool_reference",
]
