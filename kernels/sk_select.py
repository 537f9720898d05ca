"""Selective-Kernel softmax-select (and the SK fuse mean) as Triton kernels behind torch.library ops.

    V[n,c,h,w] = sum_m a_m[n,c] * F_m[n,c,h,w],   a[n,:,c] = softmax_m(logits[n,:,c])
    dF_m = a_m * dV
    dlogits_m = a_m * (g_m - sum_k a_k g_k),      g_m[n,c] = sum_hw dV * F_m

Branches arrive as up to four separate pointer arguments that share one stride set (the host makes
them dense in one memory format only when their strides differ), so no stacked copy is made. Each
program gathers its tile of every branch into one (BLOCK_C, BLOCK_HW, M_PAD) tile through a pointer
tile (`_branch_pointers`), so every kernel issues all its loads before it computes and stores.
Arithmetic is float32 whatever the storage dtype; results are stored in the input dtype.
See docs/kernels.md for the tile and grid choices.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ._runtime import Launch, keep_opaque_when_interpreted, memory_format_of, new_output
from ._tiles import tile_mask

MAX_BRANCHES = 4
VECTOR = 8  # elements of a 16-byte access at 2-byte storage: the alignment the host checks and hints

# ----------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _tile_offsets(
    n, offs_c, offs_p, W, s_n, s_c, s_h, s_w, FLAT_HW: tl.constexpr, ALIGNED: tl.constexpr, VEC_C: tl.constexpr
):
    """Element offsets of a (BLOCK_C, BLOCK_HW) tile; offs_p indexes the flattened H*W plane.

    ALIGNED: every stride but the unit one is a multiple of 8 (checked on the host), so each
    contiguous run starts 16-byte aligned; the hint lets the compiler emit 128-bit accesses along
    the contiguous axis (channels when VEC_C, else the plane).
    """
    if FLAT_HW:  # s_h == W * s_w (NCHW and channels_last alike): no integer division needed
        spatial = offs_p * s_w
    else:
        spatial = (offs_p // W) * s_h + (offs_p % W) * s_w
    off = n * s_n + offs_c[:, None] * s_c + spatial[None, :]
    if ALIGNED:
        if VEC_C:
            off = tl.multiple_of(off, [8, 1])
        else:
            off = tl.multiple_of(off, [1, 8])
    return off


@triton.jit
def _branch_pointers(
    f0_ptr,
    f1_ptr,
    f2_ptr,
    f3_ptr,
    off,
    M: tl.constexpr,
    M_PAD: tl.constexpr,
    ALIGNED: tl.constexpr,
    VEC_C: tl.constexpr,
):
    """(BLOCK_C, BLOCK_HW, M_PAD) pointers: slot m of the last axis points into branch m at `off`.

    The alignment hint is restated on the pointer tile (in bytes: 8 elements of >= 2 bytes), because
    the compiler does not carry a hint on `off` through the broadcast to three dimensions.
    """
    m = tl.arange(0, M_PAD)[None, None, :]
    off3 = off[:, :, None] + m * 0
    ptrs = f0_ptr + off3
    if M > 1:
        ptrs = tl.where(m == 1, f1_ptr + off3, ptrs)
    if M > 2:
        ptrs = tl.where(m == 2, f2_ptr + off3, ptrs)
    if M > 3:
        ptrs = tl.where(m == 3, f3_ptr + off3, ptrs)
    if ALIGNED:
        if VEC_C:
            ptrs = tl.multiple_of(ptrs, [16, 1, 1])
        else:
            ptrs = tl.multiple_of(ptrs, [1, 16, 1])
    return ptrs


@triton.jit
def _branch_mask(mask, M: tl.constexpr, M_PAD: tl.constexpr):
    """(BLOCK_C, BLOCK_HW) mask extended over the branch axis; padding slots (m >= M) are off."""
    m = tl.arange(0, M_PAD)[None, None, :]
    return mask[:, :, None] & (m < M)


@triton.jit
def _softmax_tile(logits_ptr, n, offs_c, C, sl_n, sl_m, sl_c, M: tl.constexpr, M_PAD: tl.constexpr):
    """(BLOCK_C, M_PAD) softmax weights over the branch axis; padding slots get weight 0."""
    m = tl.arange(0, M_PAD)[None, :]
    ptrs = logits_ptr + n * sl_n + offs_c[:, None] * sl_c + m * sl_m
    real = m < M
    logit = tl.load(ptrs, mask=(offs_c[:, None] < C) & real, other=0.0).to(tl.float32)
    logit = tl.where(real, logit, float("-inf"))
    e = tl.exp(logit - tl.max(logit, axis=1)[:, None])
    return e / tl.sum(e, axis=1)[:, None]


@triton.jit
def _sk_select_fwd_kernel(
    f0_ptr, f1_ptr, f2_ptr, f3_ptr, logits_ptr, out_ptr,
    C, HW, W,
    s_n, s_c, s_h, s_w,
    so_n, so_c, so_h, so_w,
    sl_n, sl_m, sl_c,
    M: tl.constexpr, M_PAD: tl.constexpr, FLAT_HW: tl.constexpr, ALIGNED: tl.constexpr, VEC_C: tl.constexpr,
    EVEN_C: tl.constexpr, EVEN_HW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    # One program per (n, spatial block, channel block), channel block fastest: neighbouring programs
    # read neighbouring bytes of a channels_last row. Flattened into axis 0 (no 65535 grid cap).
    pid = tl.program_id(0)
    num_c = tl.cdiv(C, BLOCK_C)
    num_p = tl.cdiv(HW, BLOCK_HW)
    pid_c = pid % num_c
    pid_p = (pid // num_c) % num_p
    n = pid // (num_c * num_p)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_p = pid_p * BLOCK_HW + tl.arange(0, BLOCK_HW)
    mask = tile_mask(offs_c, offs_p, C, HW, EVEN_C, EVEN_HW)

    off = _tile_offsets(n, offs_c, offs_p, W, s_n, s_c, s_h, s_w, FLAT_HW, ALIGNED, VEC_C)
    f = tl.load(_branch_pointers(f0_ptr, f1_ptr, f2_ptr, f3_ptr, off, M, M_PAD, ALIGNED, VEC_C),
                mask=_branch_mask(mask, M, M_PAD), other=0.0).to(tl.float32)  # fmt: skip
    a = _softmax_tile(logits_ptr, n, offs_c, C, sl_n, sl_m, sl_c, M, M_PAD)
    v = tl.sum(f * a[:, None, :], axis=2)

    off = _tile_offsets(n, offs_c, offs_p, W, so_n, so_c, so_h, so_w, FLAT_HW, ALIGNED, VEC_C)
    tl.store(out_ptr + off, v.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sk_select_bwd_kernel(
    dv_ptr, f0_ptr, f1_ptr, f2_ptr, f3_ptr, logits_ptr,
    df0_ptr, df1_ptr, df2_ptr, df3_ptr, dlogits_ptr,
    C, HW, W,
    sg_n, sg_c, sg_h, sg_w,
    s_n, s_c, s_h, s_w,
    sd_n, sd_c, sd_h, sd_w,
    sl_n, sl_m, sl_c,
    sdl_n, sdl_m, sdl_c,
    M: tl.constexpr, M_PAD: tl.constexpr, FLAT_HW: tl.constexpr, ALIGNED: tl.constexpr, VEC_C: tl.constexpr,
    EVEN_C: tl.constexpr, EVEN_HW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    # One program per (n, channel block) walks the whole H*W plane: g_m is reduced in registers (no
    # atomics, no second pass). Each step loads dV and every branch tile, then computes, then stores.
    pid = tl.program_id(0)
    num_c = tl.cdiv(C, BLOCK_C)
    pid_c = pid % num_c
    n = pid // num_c
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    a = _softmax_tile(logits_ptr, n, offs_c, C, sl_n, sl_m, sl_c, M, M_PAD)

    g = tl.zeros([BLOCK_C, M_PAD], dtype=tl.float32)
    # A while loop, not range(): see "Loops over a runtime bound" in docs/kernels.md.
    p0 = 0
    while p0 < HW:
        offs_p = p0 + tl.arange(0, BLOCK_HW)
        mask = tile_mask(offs_c, offs_p, C, HW, EVEN_C, EVEN_HW)
        mask3 = _branch_mask(mask, M, M_PAD)
        off = _tile_offsets(n, offs_c, offs_p, W, sg_n, sg_c, sg_h, sg_w, FLAT_HW, ALIGNED, VEC_C)
        dv = tl.load(dv_ptr + off, mask=mask, other=0.0).to(tl.float32)
        off = _tile_offsets(n, offs_c, offs_p, W, s_n, s_c, s_h, s_w, FLAT_HW, ALIGNED, VEC_C)
        f = tl.load(
            _branch_pointers(f0_ptr, f1_ptr, f2_ptr, f3_ptr, off, M, M_PAD, ALIGNED, VEC_C), mask=mask3, other=0.0
        )

        g += tl.sum(dv[:, :, None] * f.to(tl.float32), axis=1)
        df = a[:, None, :] * dv[:, :, None]

        off = _tile_offsets(n, offs_c, offs_p, W, sd_n, sd_c, sd_h, sd_w, FLAT_HW, ALIGNED, VEC_C)
        tl.store(_branch_pointers(df0_ptr, df1_ptr, df2_ptr, df3_ptr, off, M, M_PAD, ALIGNED, VEC_C),
                 df.to(df0_ptr.dtype.element_ty), mask=mask3)  # fmt: skip
        p0 += BLOCK_HW

    g_bar = tl.sum(a * g, axis=1)
    m = tl.arange(0, M_PAD)[None, :]
    ptrs = dlogits_ptr + n * sdl_n + offs_c[:, None] * sdl_c + m * sdl_m
    dlogits = a * (g - g_bar[:, None])
    tl.store(ptrs, dlogits.to(dlogits_ptr.dtype.element_ty), mask=(offs_c[:, None] < C) & (m < M))


@triton.jit
def _sk_fuse_mean_kernel(
    f0_ptr, f1_ptr, f2_ptr, f3_ptr, out_ptr,
    C, HW, W, inv_hw,
    s_n, s_c, s_h, s_w,
    so_n, so_c,
    M: tl.constexpr, M_PAD: tl.constexpr, FLAT_HW: tl.constexpr, ALIGNED: tl.constexpr, VEC_C: tl.constexpr,
    EVEN_C: tl.constexpr, EVEN_HW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    # s[n,c] = mean_hw sum_m F_m: each branch is read once and the branch sum U is never written.
    pid = tl.program_id(0)
    num_c = tl.cdiv(C, BLOCK_C)
    pid_c = pid % num_c
    n = pid // num_c
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)

    acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    # A while loop, not range(): see "Loops over a runtime bound" in docs/kernels.md.
    p0 = 0
    while p0 < HW:
        offs_p = p0 + tl.arange(0, BLOCK_HW)
        mask = tile_mask(offs_c, offs_p, C, HW, EVEN_C, EVEN_HW)
        off = _tile_offsets(n, offs_c, offs_p, W, s_n, s_c, s_h, s_w, FLAT_HW, ALIGNED, VEC_C)
        f = tl.load(_branch_pointers(f0_ptr, f1_ptr, f2_ptr, f3_ptr, off, M, M_PAD, ALIGNED, VEC_C),
                    mask=_branch_mask(mask, M, M_PAD), other=0.0)  # fmt: skip
        acc += tl.sum(f.to(tl.float32), axis=2)
        p0 += BLOCK_HW
    mean = tl.sum(acc, axis=1) * inv_hw
    tl.store(out_ptr + n * so_n + offs_c * so_c, mean.to(out_ptr.dtype.element_ty), mask=offs_c < C)


# ----------------------------------------------------------------------------------------------------
# Launch configuration (host side)
# ----------------------------------------------------------------------------------------------------

# Elements per branch in one tile: 16 per thread at 4 warps, i.e. two 16-byte vectors of bf16.
TILE_ELEMENTS = 2048


def shared_strides(branches: list[torch.Tensor]) -> list[torch.Tensor]:
    """The branches with one common stride set: as given when their strides already agree (the usual
    case, also for slices or views of one stacked tensor), else all made dense in the first one's format."""
    first = branches[0].stride()
    if all(b.stride() == first for b in branches[1:]):
        return branches
    fmt = memory_format_of(branches[0])
    return [b.contiguous(memory_format=fmt) for b in branches]


def _padded(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Four pointer arguments: unused slots alias the first tensor (never read: M is constexpr)."""
    return tensors + [tensors[0]] * (MAX_BRANCHES - len(tensors))


def _channel_block(C: int, cap: int) -> int:
    """The largest power of two dividing C (no masked lanes: 40 -> 8, 80 -> 16, 160 -> 32), capped;
    for C with fewer than 8 such lanes (odd sizes) the masked next power of two instead."""
    divisor = C & -C
    if divisor >= VECTOR:
        return min(divisor, cap)
    return min(triton.next_power_of_2(C), cap)


def launch_config(shape: tuple[int, ...], tensors: list[torch.Tensor], *, whole_plane: bool) -> dict[str, int | bool]:
    """Tile sizes and compile-time flags for a (N, C, H, W) problem over `tensors` (first = a branch).

    whole_plane: the program loops over H*W (the reductions), so channel blocks stay narrow (at most
    16) to keep N * C / BLOCK_C programs; else a ~TILE_ELEMENTS tile, longest along the contiguous axis.
    """
    _, C, H, W = shape
    HW = H * W
    lead = tensors[0]
    # The reductions keep a tile of every branch plus dV live at once: half the tile keeps them near
    # 64 registers per thread (8 blocks per SM) instead of above 100.
    tile = TILE_ELEMENTS // 2 if whole_plane else TILE_ELEMENTS
    vec_c = lead.stride(1) == 1 and C > 1  # channels_last-like: channels are the contiguous axis
    if vec_c:
        block_c = _channel_block(C, 16 if whole_plane else 64)
        block_hw = min(triton.next_power_of_2(HW), max(1, tile // block_c))
    else:
        block_hw = min(triton.next_power_of_2(HW), 256)
        block_c = _channel_block(C, min(16 if whole_plane else 64, max(1, tile // block_hw)))
    flat_hw = H == 1 or all(t.stride(2) == W * t.stride(3) for t in tensors)
    return {
        "FLAT_HW": flat_hw,
        "ALIGNED": _aligned(tensors, vec_c, flat_hw),
        "VEC_C": vec_c,
        "EVEN_C": C % block_c == 0,
        "EVEN_HW": HW % block_hw == 0,
        "BLOCK_C": block_c,
        "BLOCK_HW": block_hw,
        "num_warps": max(1, min(4, block_c * block_hw // 256)),
    }


def _aligned(tensors: list[torch.Tensor], vec_c: bool, flat_hw: bool) -> bool:
    """Whether every tensor has unit stride on the vector axis and strides in multiples of 8 elsewhere."""
    for t in tensors:
        s_n, s_c, s_h, s_w = t.stride()
        unit, others = (s_c, [s_n, s_w]) if vec_c else (s_w, [s_n, s_c])
        if not flat_hw:
            others.append(s_h)
        if unit != 1 or any(s % VECTOR for s in others):
            return False
    return True


def _m_pad(M: int) -> int:
    return triton.next_power_of_2(M)


def _alloc_select(branches: list[torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    f0 = branches[0]
    return new_output(f0.shape, f0.dtype, f0.device, memory_format_of(f0))


def _alloc_select_grads(
    grad: torch.Tensor, branches: list[torch.Tensor], logits: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    fmt = memory_format_of(branches[0])
    grads = [new_output(f.shape, f.dtype, f.device, fmt) for f in branches]  # one stride set for all
    return grads, new_output(logits.shape, logits.dtype, logits.device)


def _alloc_fuse_mean(branches: list[torch.Tensor]) -> torch.Tensor:
    f0 = branches[0]
    return new_output(f0.shape[:2], f0.dtype, f0.device)


# ----------------------------------------------------------------------------------------------------
# Ops
# ----------------------------------------------------------------------------------------------------


def select_forward_launch(branches: list[torch.Tensor], logits: torch.Tensor, out: torch.Tensor) -> Launch:
    """The forward kernel's launch for branches (one stride set) and logits, writing `out`."""
    N, C, H, W = out.shape
    cfg = launch_config(out.shape, [branches[0], out], whole_plane=False)
    grid = (N * triton.cdiv(C, cfg["BLOCK_C"]) * triton.cdiv(H * W, cfg["BLOCK_HW"]),)
    args = [*_padded(branches), logits, out, C, H * W, W, *branches[0].stride(), *out.stride(), *logits.stride()]
    return Launch(_sk_select_fwd_kernel, grid, args, dict(M=len(branches), M_PAD=_m_pad(len(branches)), **cfg))


def select_backward_launch(
    grad: torch.Tensor,
    branches: list[torch.Tensor],
    logits: torch.Tensor,
    grads: list[torch.Tensor],
    dlogits: torch.Tensor,
) -> Launch:
    """The backward kernel's launch: reads grad, branches, logits; writes grads (one stride set) and dlogits."""
    N, C, H, W = grad.shape
    cfg = launch_config(grad.shape, [branches[0], grad, grads[0]], whole_plane=True)
    grid = (N * triton.cdiv(C, cfg["BLOCK_C"]),)
    args = [
        grad, *_padded(branches), logits, *_padded(grads), dlogits,
        C, H * W, W,
        *grad.stride(), *branches[0].stride(), *grads[0].stride(), *logits.stride(), *dlogits.stride(),
    ]  # fmt: skip
    return Launch(_sk_select_bwd_kernel, grid, args, dict(M=len(branches), M_PAD=_m_pad(len(branches)), **cfg))


def fuse_mean_launch(branches: list[torch.Tensor], out: torch.Tensor) -> Launch:
    """The fuse-mean kernel's launch for branches (one stride set), writing `out` (N, C)."""
    N, C, H, W = branches[0].shape
    cfg = launch_config(branches[0].shape, [branches[0]], whole_plane=True)
    grid = (N * triton.cdiv(C, cfg["BLOCK_C"]),)
    args = [*_padded(branches), out, C, H * W, W, 1.0 / (H * W), *branches[0].stride(), *out.stride()]
    return Launch(_sk_fuse_mean_kernel, grid, args, dict(M=len(branches), M_PAD=_m_pad(len(branches)), **cfg))


@triton_op("fastcifar::sk_select", mutates_args=())
def sk_select_op(branches: list[torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    """Triton SK select: branches M x (N, C, H, W), logits (N, M, C) -> (N, C, H, W)."""
    out = _alloc_select(branches, logits)
    select_forward_launch(shared_strides(branches), logits, out)()
    return out


@triton_op("fastcifar::sk_select_backward", mutates_args=())
def sk_select_backward_op(
    grad: torch.Tensor, branches: list[torch.Tensor], logits: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Gradients of sk_select: (dF_m for each branch, dlogits (N, M, C))."""
    grads, dlogits = _alloc_select_grads(grad, branches, logits)
    select_backward_launch(grad, shared_strides(branches), logits, grads, dlogits)()
    return grads, dlogits


@triton_op("fastcifar::sk_fuse_mean", mutates_args=())
def sk_fuse_mean_op(branches: list[torch.Tensor]) -> torch.Tensor:
    """Triton SK fuse: branches M x (N, C, H, W) -> s (N, C) = mean_hw sum_m F_m."""
    out = _alloc_fuse_mean(branches)
    fuse_mean_launch(shared_strides(branches), out)()
    return out


keep_opaque_when_interpreted(sk_select_op, _alloc_select)
keep_opaque_when_interpreted(sk_select_backward_op, _alloc_select_grads)
keep_opaque_when_interpreted(sk_fuse_mean_op, _alloc_fuse_mean)


# ----------------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------------


def _select_setup(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    branches, logits = inputs
    ctx.save_for_backward(logits, *branches)


def _select_backward(ctx, grad):  # type: ignore[no-untyped-def]
    logits, *branches = ctx.saved_tensors
    grads, dlogits = torch.ops.fastcifar.sk_select_backward(grad, branches, logits)
    return list(grads), dlogits


sk_select_op.register_autograd(_select_backward, setup_context=_select_setup)


def _fuse_mean_setup(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    (branches,) = inputs
    f0 = branches[0]
    ctx.num_branches = len(branches)
    ctx.shape = tuple(f0.shape)
    ctx.dtype = f0.dtype


def _fuse_mean_backward(ctx, grad):  # type: ignore[no-untyped-def]
    # d s[n,c] / d F_m[n,c,h,w] = 1 / (H W) for every branch: a broadcast view, as torch's mean does.
    N, C, H, W = ctx.shape
    per_pixel = (grad.float() / (H * W)).to(ctx.dtype)
    dF = per_pixel[:, :, None, None].expand(N, C, H, W)
    return [dF] * ctx.num_branches


sk_fuse_mean_op.register_autograd(_fuse_mean_backward, setup_context=_fuse_mean_setup)
