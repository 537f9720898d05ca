"""Selective-Kernel softmax-select (and the SK fuse mean) as Triton kernels behind torch.library ops.

    V[n,c,h,w] = sum_m a_m[n,c] * F_m[n,c,h,w],   a[n,:,c] = softmax_m(logits[n,:,c])
    dF_m = a_m * dV
    dlogits_m = a_m * (g_m - sum_k a_k g_k),      g_m[n,c] = sum_hw dV * F_m

Branches arrive as up to four separate tensors (four pointer arguments, each with its own strides), so
no stacked copy is ever made; any strides work (NCHW, channels_last, views of a stacked tensor).
Arithmetic is float32 whatever the storage dtype; results are stored in the input dtype.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ._runtime import keep_opaque_when_interpreted, memory_format_of, new_output, wrap_triton

MAX_BRANCHES = 4


# ----------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _tile_offsets(n, offs_c, offs_p, W, s_n, s_c, s_h, s_w, FLAT_HW: tl.constexpr):
    """Element offsets of a (BLOCK_C, BLOCK_HW) tile; offs_p indexes the flattened H*W plane."""
    if FLAT_HW:  # s_h == W * s_w (NCHW and channels_last alike): no integer division needed
        spatial = offs_p * s_w
    else:
        spatial = (offs_p // W) * s_h + (offs_p % W) * s_w
    return n * s_n + offs_c[:, None] * s_c + spatial[None, :]


@triton.jit
def _softmax_weights(logits_ptr, n, offs_c, mask_c, s_ln, s_lm, s_lc, M: tl.constexpr):
    """Softmax over the M branch logits of channels offs_c; unused branches get weight 0."""
    base = logits_ptr + n * s_ln + offs_c * s_lc
    l0 = tl.load(base, mask=mask_c, other=0.0).to(tl.float32)
    l1 = l0
    l2 = l0
    l3 = l0
    peak = l0
    if M > 1:
        l1 = tl.load(base + s_lm, mask=mask_c, other=0.0).to(tl.float32)
        peak = tl.maximum(peak, l1)
    if M > 2:
        l2 = tl.load(base + 2 * s_lm, mask=mask_c, other=0.0).to(tl.float32)
        peak = tl.maximum(peak, l2)
    if M > 3:
        l3 = tl.load(base + 3 * s_lm, mask=mask_c, other=0.0).to(tl.float32)
        peak = tl.maximum(peak, l3)
    e0 = tl.exp(l0 - peak)
    e1 = tl.zeros_like(e0)
    e2 = tl.zeros_like(e0)
    e3 = tl.zeros_like(e0)
    if M > 1:
        e1 = tl.exp(l1 - peak)
    if M > 2:
        e2 = tl.exp(l2 - peak)
    if M > 3:
        e3 = tl.exp(l3 - peak)
    inv = 1.0 / (e0 + e1 + e2 + e3)
    return e0 * inv, e1 * inv, e2 * inv, e3 * inv


@triton.jit
def _sk_select_fwd_kernel(
    f0_ptr, f1_ptr, f2_ptr, f3_ptr, logits_ptr, out_ptr,
    C, HW, W,
    s0_n, s0_c, s0_h, s0_w,
    s1_n, s1_c, s1_h, s1_w,
    s2_n, s2_c, s2_h, s2_w,
    s3_n, s3_c, s3_h, s3_w,
    so_n, so_c, so_h, so_w,
    s_ln, s_lm, s_lc,
    M: tl.constexpr, FLAT_HW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    # One program per (n, channel block, spatial block); flattened into axis 0 (no 65535 grid cap).
    pid = tl.program_id(0)
    num_p = tl.cdiv(HW, BLOCK_HW)
    num_c = tl.cdiv(C, BLOCK_C)
    pid_p = pid % num_p
    pid_c = (pid // num_p) % num_c
    n = pid // (num_p * num_c)

    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_p = pid_p * BLOCK_HW + tl.arange(0, BLOCK_HW)
    mask_c = offs_c < C
    mask = mask_c[:, None] & (offs_p < HW)[None, :]

    a0, a1, a2, a3 = _softmax_weights(logits_ptr, n, offs_c, mask_c, s_ln, s_lm, s_lc, M)

    off = _tile_offsets(n, offs_c, offs_p, W, s0_n, s0_c, s0_h, s0_w, FLAT_HW)
    acc = a0[:, None] * tl.load(f0_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if M > 1:
        off = _tile_offsets(n, offs_c, offs_p, W, s1_n, s1_c, s1_h, s1_w, FLAT_HW)
        acc += a1[:, None] * tl.load(f1_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if M > 2:
        off = _tile_offsets(n, offs_c, offs_p, W, s2_n, s2_c, s2_h, s2_w, FLAT_HW)
        acc += a2[:, None] * tl.load(f2_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if M > 3:
        off = _tile_offsets(n, offs_c, offs_p, W, s3_n, s3_c, s3_h, s3_w, FLAT_HW)
        acc += a3[:, None] * tl.load(f3_ptr + off, mask=mask, other=0.0).to(tl.float32)

    off = _tile_offsets(n, offs_c, offs_p, W, so_n, so_c, so_h, so_w, FLAT_HW)
    tl.store(out_ptr + off, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sk_select_bwd_kernel(
    dv_ptr, f0_ptr, f1_ptr, f2_ptr, f3_ptr, logits_ptr,
    df0_ptr, df1_ptr, df2_ptr, df3_ptr, dlogits_ptr,
    C, HW, W,
    sg_n, sg_c, sg_h, sg_w,
    s0_n, s0_c, s0_h, s0_w,
    s1_n, s1_c, s1_h, s1_w,
    s2_n, s2_c, s2_h, s2_w,
    s3_n, s3_c, s3_h, s3_w,
    sd0_n, sd0_c, sd0_h, sd0_w,
    sd1_n, sd1_c, sd1_h, sd1_w,
    sd2_n, sd2_c, sd2_h, sd2_w,
    sd3_n, sd3_c, sd3_h, sd3_w,
    s_ln, s_lm, s_lc,
    sdl_n, sdl_m, sdl_c,
    M: tl.constexpr, FLAT_HW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    # One program per (n, channel block) walks the whole H*W plane: the g_m reduction stays in
    # registers (no atomics, no second pass) while dF_m is written on the way.
    pid = tl.program_id(0)
    num_c = tl.cdiv(C, BLOCK_C)
    pid_c = pid % num_c
    n = pid // num_c

    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    a0, a1, a2, a3 = _softmax_weights(logits_ptr, n, offs_c, mask_c, s_ln, s_lm, s_lc, M)

    g0 = tl.zeros([BLOCK_C], dtype=tl.float32)
    g1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    g2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    g3 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for p0 in range(0, HW, BLOCK_HW):
        offs_p = p0 + tl.arange(0, BLOCK_HW)
        mask = mask_c[:, None] & (offs_p < HW)[None, :]
        off = _tile_offsets(n, offs_c, offs_p, W, sg_n, sg_c, sg_h, sg_w, FLAT_HW)
        dv = tl.load(dv_ptr + off, mask=mask, other=0.0).to(tl.float32)

        off = _tile_offsets(n, offs_c, offs_p, W, s0_n, s0_c, s0_h, s0_w, FLAT_HW)
        g0 += tl.sum(dv * tl.load(f0_ptr + off, mask=mask, other=0.0).to(tl.float32), axis=1)
        off = _tile_offsets(n, offs_c, offs_p, W, sd0_n, sd0_c, sd0_h, sd0_w, FLAT_HW)
        tl.store(df0_ptr + off, (a0[:, None] * dv).to(df0_ptr.dtype.element_ty), mask=mask)
        if M > 1:
            off = _tile_offsets(n, offs_c, offs_p, W, s1_n, s1_c, s1_h, s1_w, FLAT_HW)
            g1 += tl.sum(dv * tl.load(f1_ptr + off, mask=mask, other=0.0).to(tl.float32), axis=1)
            off = _tile_offsets(n, offs_c, offs_p, W, sd1_n, sd1_c, sd1_h, sd1_w, FLAT_HW)
            tl.store(df1_ptr + off, (a1[:, None] * dv).to(df1_ptr.dtype.element_ty), mask=mask)
        if M > 2:
            off = _tile_offsets(n, offs_c, offs_p, W, s2_n, s2_c, s2_h, s2_w, FLAT_HW)
            g2 += tl.sum(dv * tl.load(f2_ptr + off, mask=mask, other=0.0).to(tl.float32), axis=1)
            off = _tile_offsets(n, offs_c, offs_p, W, sd2_n, sd2_c, sd2_h, sd2_w, FLAT_HW)
            tl.store(df2_ptr + off, (a2[:, None] * dv).to(df2_ptr.dtype.element_ty), mask=mask)
        if M > 3:
            off = _tile_offsets(n, offs_c, offs_p, W, s3_n, s3_c, s3_h, s3_w, FLAT_HW)
            g3 += tl.sum(dv * tl.load(f3_ptr + off, mask=mask, other=0.0).to(tl.float32), axis=1)
            off = _tile_offsets(n, offs_c, offs_p, W, sd3_n, sd3_c, sd3_h, sd3_w, FLAT_HW)
            tl.store(df3_ptr + off, (a3[:, None] * dv).to(df3_ptr.dtype.element_ty), mask=mask)

    g_bar = a0 * g0 + a1 * g1 + a2 * g2 + a3 * g3
    base = dlogits_ptr + n * sdl_n + offs_c * sdl_c
    out_ty = dlogits_ptr.dtype.element_ty
    tl.store(base, (a0 * (g0 - g_bar)).to(out_ty), mask=mask_c)
    if M > 1:
        tl.store(base + sdl_m, (a1 * (g1 - g_bar)).to(out_ty), mask=mask_c)
    if M > 2:
        tl.store(base + 2 * sdl_m, (a2 * (g2 - g_bar)).to(out_ty), mask=mask_c)
    if M > 3:
        tl.store(base + 3 * sdl_m, (a3 * (g3 - g_bar)).to(out_ty), mask=mask_c)


@triton.jit
def _sk_fuse_mean_kernel(
    f0_ptr, f1_ptr, f2_ptr, f3_ptr, out_ptr,
    C, HW, W, inv_hw,
    s0_n, s0_c, s0_h, s0_w,
    s1_n, s1_c, s1_h, s1_w,
    s2_n, s2_c, s2_h, s2_w,
    s3_n, s3_c, s3_h, s3_w,
    so_n, so_c,
    M: tl.constexpr, FLAT_HW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    # s[n,c] = mean_hw sum_m F_m: the branch sum U is never written to memory.
    pid = tl.program_id(0)
    num_c = tl.cdiv(C, BLOCK_C)
    pid_c = pid % num_c
    n = pid // num_c
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C

    acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    for p0 in range(0, HW, BLOCK_HW):
        offs_p = p0 + tl.arange(0, BLOCK_HW)
        mask = mask_c[:, None] & (offs_p < HW)[None, :]
        off = _tile_offsets(n, offs_c, offs_p, W, s0_n, s0_c, s0_h, s0_w, FLAT_HW)
        acc += tl.load(f0_ptr + off, mask=mask, other=0.0).to(tl.float32)
        if M > 1:
            off = _tile_offsets(n, offs_c, offs_p, W, s1_n, s1_c, s1_h, s1_w, FLAT_HW)
            acc += tl.load(f1_ptr + off, mask=mask, other=0.0).to(tl.float32)
        if M > 2:
            off = _tile_offsets(n, offs_c, offs_p, W, s2_n, s2_c, s2_h, s2_w, FLAT_HW)
            acc += tl.load(f2_ptr + off, mask=mask, other=0.0).to(tl.float32)
        if M > 3:
            off = _tile_offsets(n, offs_c, offs_p, W, s3_n, s3_c, s3_h, s3_w, FLAT_HW)
            acc += tl.load(f3_ptr + off, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(acc, axis=1) * inv_hw
    tl.store(out_ptr + n * so_n + offs_c * so_c, mean.to(out_ptr.dtype.element_ty), mask=mask_c)


# ----------------------------------------------------------------------------------------------------
# Launch helpers (host side)
# ----------------------------------------------------------------------------------------------------


def _padded(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Four pointer arguments: unused slots alias the first tensor (never read: M is constexpr)."""
    return tensors + [tensors[0]] * (MAX_BRANCHES - len(tensors))


def _strides4(tensors: list[torch.Tensor]) -> list[int]:
    return [s for t in _padded(tensors) for s in t.stride()]


def _flat_hw(tensors: list[torch.Tensor]) -> bool:
    """True when every tensor's H*W plane is addressable as p * stride_w (h stride == W * w stride)."""
    H, W = tensors[0].shape[2], tensors[0].shape[3]
    return H == 1 or all(t.stride(2) == W * t.stride(3) for t in tensors)


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.stride(1) < t.stride(3) if t.shape[1] > 1 else False


def _tile(C: int, HW: int, channels_last: bool, *, whole_plane: bool) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_HW) for a ~2K-element tile, longest along the contiguous axis.

    Heuristic, not autotuned (autotuning every config is very slow under the CPU interpreter).
    whole_plane: the program loops over H*W (reduction kernels), so keep BLOCK_C small for parallelism.
    """
    if channels_last:
        block_c = min(triton.next_power_of_2(C), 16 if whole_plane else 64)
        block_hw = min(triton.next_power_of_2(HW), max(1, 2048 // block_c))
    else:
        block_hw = min(triton.next_power_of_2(HW), 256)
        block_c = min(triton.next_power_of_2(C), max(1, (1024 if whole_plane else 2048) // block_hw), 16 if whole_plane else 64)
    return block_c, block_hw


def _alloc_select(branches: list[torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    f0 = branches[0]
    return new_output(f0.shape, f0.dtype, f0.device, memory_format_of(f0))


def _alloc_select_grads(
    grad: torch.Tensor, branches: list[torch.Tensor], logits: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    grads = [new_output(f.shape, f.dtype, f.device, memory_format_of(f)) for f in branches]
    return grads, new_output(logits.shape, logits.dtype, logits.device)


def _alloc_fuse_mean(branches: list[torch.Tensor]) -> torch.Tensor:
    f0 = branches[0]
    return new_output(f0.shape[:2], f0.dtype, f0.device)


# ----------------------------------------------------------------------------------------------------
# Ops
# ----------------------------------------------------------------------------------------------------


@triton_op("fastcifar::sk_select", mutates_args=())
def sk_select_op(branches: list[torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    """Triton SK select: branches M x (N, C, H, W), logits (N, M, C) -> (N, C, H, W)."""
    out = _alloc_select(branches, logits)
    N, C, H, W = out.shape
    M = len(branches)
    block_c, block_hw = _tile(C, H * W, _is_channels_last(branches[0]), whole_plane=False)
    grid = (N * triton.cdiv(C, block_c) * triton.cdiv(H * W, block_hw),)
    wrap_triton(_sk_select_fwd_kernel)[grid](
        *_padded(branches), logits, out,
        C, H * W, W,
        *_strides4(branches),
        *out.stride(),
        *logits.stride(),
        M=M, FLAT_HW=_flat_hw([*branches, out]), BLOCK_C=block_c, BLOCK_HW=block_hw,
        num_warps=4,
    )  # fmt: skip
    return out


@triton_op("fastcifar::sk_select_backward", mutates_args=())
def sk_select_backward_op(
    grad: torch.Tensor, branches: list[torch.Tensor], logits: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Gradients of sk_select: (dF_m for each branch, dlogits (N, M, C))."""
    grads, dlogits = _alloc_select_grads(grad, branches, logits)
    N, C, H, W = grad.shape
    M = len(branches)
    block_c, block_hw = _tile(C, H * W, _is_channels_last(branches[0]), whole_plane=True)
    grid = (N * triton.cdiv(C, block_c),)
    wrap_triton(_sk_select_bwd_kernel)[grid](
        grad, *_padded(branches), logits,
        *_padded(grads), dlogits,
        C, H * W, W,
        *grad.stride(),
        *_strides4(branches),
        *_strides4(grads),
        *logits.stride(),
        *dlogits.stride(),
        M=M, FLAT_HW=_flat_hw([grad, *branches, *grads]), BLOCK_C=block_c, BLOCK_HW=block_hw,
        num_warps=4,
    )  # fmt: skip
    return grads, dlogits


@triton_op("fastcifar::sk_fuse_mean", mutates_args=())
def sk_fuse_mean_op(branches: list[torch.Tensor]) -> torch.Tensor:
    """Triton SK fuse: branches M x (N, C, H, W) -> s (N, C) = mean_hw sum_m F_m."""
    out = _alloc_fuse_mean(branches)
    N, C, H, W = branches[0].shape
    block_c, block_hw = _tile(C, H * W, _is_channels_last(branches[0]), whole_plane=True)
    grid = (N * triton.cdiv(C, block_c),)
    wrap_triton(_sk_fuse_mean_kernel)[grid](
        *_padded(branches), out,
        C, H * W, W, 1.0 / (H * W),
        *_strides4(branches),
        *out.stride(),
        M=len(branches), FLAT_HW=_flat_hw(branches), BLOCK_C=block_c, BLOCK_HW=block_hw,
        num_warps=4,
    )  # fmt: skip
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
