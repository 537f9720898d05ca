"""Triplet-attention Z-pool as Triton kernels behind torch.library ops.

    out.select(d, 0) = max_d x,  out.select(d, 1) = mean_d x         (x (N, C, H, W), d in {1, 2, 3})
    dx = dOut_max at the first index of the maximum along d  +  dOut_mean / size_d everywhere

The pooled dim is walked along its own stride and the three kept dims are flattened into one index
ordered by decreasing stride, so any layout (NCHW, channels_last, views) is read in place: no
permute().contiguous() copy. The forward also writes the argmax (int8/16/32, 1/size_d of x), which the
backward uses instead of re-reading x.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ._runtime import Launch, keep_opaque_when_interpreted, memory_format_of, new_output
from ._tiles import tile_mask

# ----------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _kept_offsets(q, K1, K2, s0, s1, s2):
    """Offsets of flattened kept positions q over kept dims sized (K0, K1, K2) with strides (s0, s1, s2)."""
    k2 = q % K2
    rest = q // K2
    return (rest // K1) * s0 + (rest % K1) * s1 + k2 * s2


@triton.jit
def _tile(q, r, base, s_r, ALIGNED: tl.constexpr, VEC_R: tl.constexpr):
    """(BLOCK_R, BLOCK_Q) offsets base[q] + r * s_r, with the alignment hint along the contiguous axis.

    ALIGNED (checked on the host): runs along the contiguous axis start at multiples of 8 elements
    and, when that axis is the kept one, are at least 8 long; this lets the compiler emit 128-bit accesses.
    """
    off = base[None, :] + r[:, None] * s_r
    if ALIGNED:
        if VEC_R:
            off = tl.multiple_of(off, [8, 1])
        else:
            off = tl.max_contiguous(tl.multiple_of(off, [1, 8]), [1, 8])
    return off


@triton.jit
def _zpool_fwd_kernel(
    x_ptr, out_ptr, idx_ptr,
    Q, R, K1, K2, inv_r,
    sx0, sx1, sx2, sx_r,
    so0, so1, so2, so_r,
    BLOCK_R: tl.constexpr, BLOCK_Q: tl.constexpr,
    ALIGNED: tl.constexpr, VEC_R: tl.constexpr, EVEN_Q: tl.constexpr, EVEN_R: tl.constexpr,
):  # fmt: skip
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = q < Q
    x_base = _kept_offsets(q, K1, K2, sx0, sx1, sx2)

    best = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    best_at = tl.zeros([BLOCK_Q], dtype=tl.int32)
    total = tl.zeros([BLOCK_Q], dtype=tl.float32)
    # A while loop, not range(): see "Loops over a runtime bound" in docs/kernels.md.
    r0 = 0
    while r0 < R:
        r = r0 + tl.arange(0, BLOCK_R)
        mask = tile_mask(r, q, R, Q, EVEN_R, EVEN_Q)
        v = tl.load(x_ptr + _tile(q, r, x_base, sx_r, ALIGNED, VEC_R), mask=mask, other=float("-inf"))
        v = v.to(tl.float32)
        total += tl.sum(tl.where(mask, v, 0.0), axis=0)
        chunk_max, chunk_at = tl.max(v, axis=0, return_indices=True, return_indices_tie_break_left=True)
        # Strictly greater: on a tie the earlier chunk keeps it, so the first index wins overall.
        better = chunk_max > best
        best_at = tl.where(better, r0 + chunk_at, best_at)
        best = tl.where(better, chunk_max, best)
        r0 += BLOCK_R

    o_base = _kept_offsets(q, K1, K2, so0, so1, so2)
    out_ty = out_ptr.dtype.element_ty
    tl.store(out_ptr + o_base, best.to(out_ty), mask=mask_q)
    tl.store(out_ptr + o_base + so_r, (total * inv_r).to(out_ty), mask=mask_q)
    tl.store(idx_ptr + q, best_at.to(idx_ptr.dtype.element_ty), mask=mask_q)


@triton.jit
def _zpool_bwd_kernel(
    dout_ptr, idx_ptr, dx_ptr,
    Q, R, K1, K2, inv_r,
    sg0, sg1, sg2, sg_r,
    sd0, sd1, sd2, sd_r,
    BLOCK_R: tl.constexpr, BLOCK_Q: tl.constexpr,
    ALIGNED: tl.constexpr, VEC_R: tl.constexpr, EVEN_Q: tl.constexpr, EVEN_R: tl.constexpr,
):  # fmt: skip
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = q < Q
    g_base = _kept_offsets(q, K1, K2, sg0, sg1, sg2)
    d_max = tl.load(dout_ptr + g_base, mask=mask_q, other=0.0).to(tl.float32)
    d_mean = tl.load(dout_ptr + g_base + sg_r, mask=mask_q, other=0.0).to(tl.float32) * inv_r
    at = tl.load(idx_ptr + q, mask=mask_q, other=0).to(tl.int32)

    dx_base = _kept_offsets(q, K1, K2, sd0, sd1, sd2)
    # A while loop, not range(): see "Loops over a runtime bound" in docs/kernels.md.
    r0 = 0
    while r0 < R:
        r = r0 + tl.arange(0, BLOCK_R)
        mask = tile_mask(r, q, R, Q, EVEN_R, EVEN_Q)
        dx = tl.where(r[:, None] == at[None, :], d_max[None, :], 0.0) + d_mean[None, :]
        off = _tile(q, r, dx_base, sd_r, ALIGNED, VEC_R)
        tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        r0 += BLOCK_R


# ----------------------------------------------------------------------------------------------------
# Launch helpers (host side)
# ----------------------------------------------------------------------------------------------------


def _kept_dims(x: torch.Tensor, dim: int) -> list[int]:
    """The three non-pooled dims, outermost first by x's strides, so the flat index walks memory forward."""
    kept = [d for d in range(4) if d != dim]
    return sorted(kept, key=lambda d: (x.stride(d), d), reverse=True)


def _index_dtype(size: int) -> torch.dtype:
    """Smallest integer type that holds an index along the pooled dim (the backward reads 1 per output)."""
    if size <= torch.iinfo(torch.int8).max:
        return torch.int8
    if size <= torch.iinfo(torch.int16).max:
        return torch.int16
    return torch.int32


SMS = 132  # H200 streaming multiprocessors: the grid should cover them a few times over
VECTOR = 8  # elements of a 16-byte access at 2-byte storage


def _pow2_floor(x: int) -> int:
    return 1 << (max(x, 1).bit_length() - 1)


def _pool_config(x: torch.Tensor, dim: int, Q: int) -> dict[str, int | bool]:
    """(BLOCK_R, BLOCK_Q), compile-time flags and num_warps for pooling x along dim.

    A program owns BLOCK_Q kept positions and loops over the pooled axis in chunks of BLOCK_R. BLOCK_Q
    is at most Q / (8 * SMS), so the grid has ~8 programs per SM where Q allows it (a 1x1 plane with
    C = 512 at batch 256 gives 256 programs, not 16), and a chunk holds 256 (one 16-byte vector per
    thread of a warp) to 4096 elements (registers). The chunk is wide along whichever axis is
    contiguous in memory; along the pooled axis it is the largest power of two dividing R
    (80 -> 16: no masked lanes) when that is at least 8.
    Heuristic, not autotuned (autotuning under the CPU interpreter is prohibitively slow).
    """
    R = x.shape[dim]
    kept = _kept_dims(x, dim)
    live = [d for d in range(4) if x.shape[d] > 1 or d == dim]
    unit = min(x.stride(d) for d in live)
    vec_r = x.stride(dim) == unit and R > 1
    max_tile, min_tile = 4096, 32 * VECTOR  # min: one 16-byte vector per thread of one warp
    if vec_r:
        divisor = R & -R
        block_r = min(divisor if divisor >= VECTOR else triton.next_power_of_2(R), max_tile)
    else:
        block_r = min(triton.next_power_of_2(R), VECTOR)
    q_cap = _pow2_floor(Q // (8 * SMS))
    block_q = min(triton.next_power_of_2(Q), max(min_tile // block_r, min(q_cap, max_tile // block_r)))
    inner = kept[2]  # the kept dim with the smallest stride: q runs along it
    if vec_r:
        aligned = x.stride(dim) == 1 and all(x.stride(d) % VECTOR == 0 for d in kept)
    else:
        aligned = (
            x.stride(inner) == 1
            and x.shape[inner] % VECTOR == 0
            and block_q >= VECTOR
            and all(x.stride(d) % VECTOR == 0 for d in (*kept[:2], dim))
        )
    return {
        "BLOCK_R": block_r,
        "BLOCK_Q": block_q,
        "ALIGNED": aligned,
        "VEC_R": vec_r,
        "EVEN_Q": Q % block_q == 0,
        "EVEN_R": R % block_r == 0,
        "num_warps": max(1, min(4, block_r * block_q // 256)),
    }


def _out_shape(x: torch.Tensor, dim: int) -> list[int]:
    shape = list(x.shape)
    shape[dim] = 2
    return shape


def _alloc_zpool(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = new_output(_out_shape(x, dim), x.dtype, x.device, memory_format_of(x))
    idx = torch.empty(x.numel() // max(x.shape[dim], 1), dtype=_index_dtype(x.shape[dim]), device=x.device)
    return out, idx


def _alloc_zpool_grad(
    grad: torch.Tensor, idx: torch.Tensor, x_shape: list[int], dim: int, channels_last: bool
) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return new_output(x_shape, grad.dtype, grad.device, fmt)


# ----------------------------------------------------------------------------------------------------
# Ops
# ----------------------------------------------------------------------------------------------------


def forward_launch(x: torch.Tensor, dim: int, out: torch.Tensor, idx: torch.Tensor) -> Launch:
    """The forward kernel's launch: reads x, writes out (size 2 at dim) and idx (the flat argmax)."""
    R = x.shape[dim]
    Q = idx.numel()
    k0, k1, k2 = _kept_dims(x, dim)
    cfg = _pool_config(x, dim, Q)
    args = [
        x, out, idx,
        Q, R, x.shape[k1], x.shape[k2], 1.0 / R,
        x.stride(k0), x.stride(k1), x.stride(k2), x.stride(dim),
        out.stride(k0), out.stride(k1), out.stride(k2), out.stride(dim),
    ]  # fmt: skip
    return Launch(_zpool_fwd_kernel, (triton.cdiv(Q, cfg["BLOCK_Q"]),), args, cfg)


def backward_launch(grad: torch.Tensor, idx: torch.Tensor, dx: torch.Tensor, dim: int) -> Launch:
    """The backward kernel's launch: reads grad (size 2 at dim) and idx, writes dx."""
    R = dx.shape[dim]
    Q = idx.numel()
    k0, k1, k2 = _kept_dims(dx, dim)
    cfg = _pool_config(dx, dim, Q)
    args = [
        grad, idx, dx,
        Q, R, dx.shape[k1], dx.shape[k2], 1.0 / R,
        grad.stride(k0), grad.stride(k1), grad.stride(k2), grad.stride(dim),
        dx.stride(k0), dx.stride(k1), dx.stride(k2), dx.stride(dim),
    ]  # fmt: skip
    return Launch(_zpool_bwd_kernel, (triton.cdiv(Q, cfg["BLOCK_Q"]),), args, cfg)


@triton_op("fastcifar::zpool", mutates_args=())
def zpool_op(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton Z-pool of x (N, C, H, W) along dim in {1, 2, 3}: (out with size 2 at dim, argmax (flat))."""
    out, idx = _alloc_zpool(x, dim)
    forward_launch(x, dim, out, idx)()
    return out, idx


@triton_op("fastcifar::zpool_backward", mutates_args=())
def zpool_backward_op(
    grad: torch.Tensor, idx: torch.Tensor, x_shape: list[int], dim: int, channels_last: bool
) -> torch.Tensor:
    """Gradient of zpool w.r.t. x (shape x_shape, in x's memory format) from grad and the forward's argmax."""
    dx = _alloc_zpool_grad(grad, idx, x_shape, dim, channels_last)
    backward_launch(grad, idx, dx, dim)()
    return dx


keep_opaque_when_interpreted(zpool_op, _alloc_zpool)
keep_opaque_when_interpreted(zpool_backward_op, _alloc_zpool_grad)


# ----------------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------------


def _zpool_setup(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    x, dim = inputs
    _, idx = output
    ctx.save_for_backward(idx)
    ctx.dim = dim
    ctx.x_shape = list(x.shape)
    ctx.channels_last = memory_format_of(x) == torch.channels_last


def _zpool_backward(ctx, grad_out, grad_idx):  # type: ignore[no-untyped-def]
    (idx,) = ctx.saved_tensors
    dx = torch.ops.fastcifar.zpool_backward(grad_out, idx, ctx.x_shape, ctx.dim, ctx.channels_last)
    return dx, None


zpool_op.register_autograd(_zpool_backward, setup_context=_zpool_setup)
