"""Batched colour operations on uint8 ``(N, C, H, W)`` images with per-sample parameters.

Each function mirrors the uint8 semantics of ``torchvision.transforms.v2.functional``: arithmetic
in float32, clamp to ``[0, 255]``, then a truncating cast back to uint8 (torchvision truncates in
its blends and rounds only where noted). Parameters are a Python number (same for every sample)
or an ``(N,)`` tensor on the images' device (one value per sample). No function reads tensor
values on the host, so they run on CUDA without synchronising.

torchvision's ``a.mul(r).add_(b, alpha=s)`` runs as a fused multiply-add in eager PyTorch (AVX2
``fmadd`` on the CPU, ``fma`` on CUDA), which Inductor's CPU code does not contract; a truncating
cast makes that one rounding visible. :func:`fma_f32` gives the fused result on both routes.
"""

from __future__ import annotations

import torch

__all__ = [
    "fma_f32",
    "grayscale_floor",
    "blend",
    "adjust_brightness",
    "adjust_saturation",
    "adjust_contrast",
    "adjust_sharpness",
    "posterize",
    "solarize",
    "autocontrast",
    "equalize",
]

Param = float | int | torch.Tensor


def _check_image(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 (N, C, H, W) tensor, got {x.dtype} of shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {x.shape[1]}")


def _per_sample(value: Param, x: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``value`` as an ``(N, 1, 1, 1)`` tensor of ``dtype`` on ``x.device`` (no host round trip)."""
    if isinstance(value, torch.Tensor):
        return value.to(device=x.device, dtype=dtype).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
    return torch.full((x.shape[0], 1, 1, 1), value, dtype=dtype, device=x.device)


def _f32(value: float) -> float:
    """``value`` rounded to float32, as a Python float (how a kernel sees a scalar argument)."""
    return float(torch.tensor(value, dtype=torch.float32))


def fma_f32(a: torch.Tensor, b: torch.Tensor | float, c: torch.Tensor) -> torch.Tensor:
    """float32 ``a * b + c`` rounded once, as a fused multiply-add, on both augmentation routes.

    Eagerly this is ``torch.addcmul`` / ``torch.add(alpha=)``, which PyTorch's kernels run fused
    (AVX2/AVX-512 ``fmadd`` on x86 CPUs, ``fma`` on CUDA), exactly as torchvision's calls run. While
    ``torch.compile`` traces it, Inductor's CPU code would round the product separately, so the
    graph gets an explicit emulation instead: in float64 the product of two float32 values is exact
    (24 + 24 bits) and so is the sum whenever it spans at most 53 bits, true for the operands used
    here (integers up to 255, per-image means that are multiples of ``2**-10`` on 32x32 images,
    float32 factors); one rounding to float32 is then the correctly rounded FMA, whether or not a
    compiler contracts the float64 expression.

    Args:
        a, c: tensors holding float32 values (any dtype that represents them exactly).
        b: tensor of float32 values, or a float already rounded to float32.
    Returns:
        float32 tensor of the broadcast shape.
    """
    if torch.compiler.is_compiling():
        wide_b = b.to(torch.float64) if isinstance(b, torch.Tensor) else b
        return (a.to(torch.float64) * wide_b + c.to(torch.float64)).to(torch.float32)
    a, c = a.to(torch.float32), c.to(torch.float32)
    if isinstance(b, torch.Tensor):
        return torch.addcmul(c, a, b.to(torch.float32))
    return torch.add(c, a, alpha=b)


_LUMA = (_f32(0.2989), _f32(0.587), _f32(0.114))


def grayscale_floor(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma of uint8 RGB images, floored, as float32 ``(N, 1, H, W)``.

    torchvision's ``rgb_to_grayscale`` order, ``r.mul(0.2989).add_(g, alpha=0.587).add_(b,
    alpha=0.114)`` with both adds fused as eager PyTorch runs them, then floor (no rounding, as
    its saturation/contrast kernels do); a 1-channel input is returned as float.
    """
    if x.shape[1] == 1:
        return x.to(torch.float32)
    r, g, b = x.to(torch.float32).unbind(dim=1)
    luma = fma_f32(b, _LUMA[2], fma_f32(g, _LUMA[1], r * _LUMA[0]))
    return luma.floor_().unsqueeze(1)


def blend(x: torch.Tensor, degenerate: torch.Tensor, ratio: Param) -> torch.Tensor:
    """``clamp(x * ratio + degenerate * (1 - ratio), 0, 255)`` truncated to uint8, per sample.

    ``ratio`` and ``1 - ratio`` are formed in float64 and rounded to float32 once, as torchvision
    does with its Python-float factor; ``x * ratio`` is rounded, then the degenerate term is added
    with a fused multiply-add (:func:`fma_f32`), torchvision's ``mul(r).add_(d, alpha=1 - r)``.

    Args:
        x: uint8 ``(N, C, H, W)``.
        degenerate: float32 tensor broadcastable to ``x`` (e.g. ``(N, 1, H, W)`` or ``(N, 1, 1, 1)``).
        ratio: float or ``(N,)`` tensor.
    Returns:
        uint8 ``(N, C, H, W)``.
    """
    r64 = _per_sample(ratio, x)
    r, one_minus_r = r64.to(torch.float32), (1.0 - r64).to(torch.float32)
    return fma_f32(degenerate, one_minus_r, x.to(torch.float32) * r).clamp_(0, 255).to(torch.uint8)


def adjust_brightness(x: torch.Tensor, factor: Param) -> torch.Tensor:
    """Scale intensities by ``factor`` (blend with black). uint8 ``(N, C, H, W)`` in and out."""
    _check_image(x)
    return (x.to(torch.float32) * _per_sample(factor, x).to(torch.float32)).clamp_(0, 255).to(torch.uint8)


def adjust_saturation(x: torch.Tensor, factor: Param) -> torch.Tensor:
    """Blend with the floored grayscale image (RandAugment's "Color"). 1-channel input is returned unchanged."""
    _check_image(x)
    if x.shape[1] == 1:
        return x.clone()
    return blend(x, grayscale_floor(x), factor)


def adjust_contrast(x: torch.Tensor, factor: Param) -> torch.Tensor:
    """Blend with the per-image mean of the floored grayscale image."""
    _check_image(x)
    mean = grayscale_floor(x).mean(dim=(1, 2, 3), keepdim=True)
    return blend(x, mean, factor)


def adjust_sharpness(x: torch.Tensor, factor: Param) -> torch.Tensor:
    """Blend the interior with a 3x3 smoothed image (1s around a 5, over 13, rounded); border kept.

    Follows torchvision's order of operations ``x + (1 - factor) * (blurred - x)`` (one fused
    multiply-add, as eager PyTorch runs its ``add_(..., alpha=1 - factor)``). The smoothed
    value is computed exactly in integers, ``round(S / 13)`` with ``S`` the weighted 3x3 sum:
    ``S / 13`` is never within 1/26 of a rounding tie, far beyond float32 convolution error, so
    this equals torchvision's rounded float convolution while avoiding a slow depthwise conv.
    """
    _check_image(x)
    h, w = x.shape[-2:]
    if h <= 2 or w <= 2:
        return x.clone()
    xi = x.to(torch.int16)  # 13 * 255 fits
    rows = xi[..., :-2, :] + xi[..., 1:-1, :] + xi[..., 2:, :]
    weighted = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:] + 4 * xi[..., 1:-1, 1:-1]
    # round(S / 13) == floor((S + 6.5) / 13) for integer S; the half-unit margin (1/26 after the
    # division) dwarfs any float32 error, so multiplying by a rounded 1/13 (what Inductor turns a
    # division by a constant into on GPUs) gives the same integers (checked for every S <= 13 * 255).
    # Float arithmetic vectorises, unlike int16 floor division.
    blurred = weighted.to(torch.float32).add_(6.5).mul_(1.0 / 13.0).floor_()
    out = x.to(torch.float32)
    interior = out[..., 1:-1, 1:-1]
    one_minus_f = (1.0 - _per_sample(factor, x)).to(torch.float32)
    interior.copy_(fma_f32(blurred.sub_(interior), one_minus_f, interior))
    return out.clamp_(0, 255).to(torch.uint8)


def posterize(x: torch.Tensor, bits: Param) -> torch.Tensor:
    """Keep the ``bits`` (0..8) most significant bits of every value."""
    _check_image(x)
    b = _per_sample(bits, x, torch.int32).clamp(0, 8)
    mask = torch.bitwise_left_shift(torch.full_like(b, 0xFF), 8 - b).bitwise_and_(0xFF).to(torch.uint8)
    return x & mask


def solarize(x: torch.Tensor, threshold: Param) -> torch.Tensor:
    """Invert values ``>= threshold`` (0..255 scale).

    torchvision compares uint8 pixels with the threshold in float32, so the threshold is rounded
    to float32 first; comparing with its ceiling then is exact in integers.
    """
    _check_image(x)
    t = _per_sample(threshold, x, torch.float64).to(torch.float32).ceil()
    # Thresholds above 255 invert nothing. Inverting is XOR with 255; building the XOR mask with
    # uint8 arithmetic avoids an element-wise torch.where, which is slow for uint8 on CPU.
    active = (t <= 255).to(torch.uint8) * 255
    t8 = t.clamp(0, 255).to(torch.uint8)
    return x ^ (x >= t8).to(torch.uint8).mul_(active)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch each image channel to the full ``[0, 255]`` range (constant channels unchanged)."""
    _check_image(x)
    xf = x.to(torch.float32)
    lo = xf.amin(dim=(-2, -1), keepdim=True)
    hi = xf.amax(dim=(-2, -1), keepdim=True)
    flat = hi == lo
    inv_scale = torch.where(flat, 1.0, (hi - lo) * (1.0 / 255.0))
    lo = torch.where(flat, 0.0, lo)
    return xf.sub_(lo).div_(inv_scale).clamp_(0, 255).to(torch.uint8)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram-equalise each image channel with PIL's lookup-table rule.

    One batched histogram of shape ``(N * C, 256)`` via ``scatter_add_`` (fixed shape, no host
    sync); the table is ``lut[0] = 0``, ``lut[k] = clamp((cdf[k-1] + step // 2) // step, 0, 255)``
    with ``step = (pixels not at the channel's maximum value) // 255``; channels with ``step == 0``
    are returned unchanged.
    """
    _check_image(x)
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).to(torch.int64)
    hist = torch.zeros(n * c, 256, dtype=torch.int32, device=x.device)
    hist.scatter_add_(1, flat, torch.ones(1, 1, dtype=torch.int32, device=x.device).expand_as(flat))
    top = flat.amax(dim=1, keepdim=True)
    step = (h * w - hist.gather(1, top)).div(255, rounding_mode="floor")  # (N*C, 1)
    cdf = hist.cumsum(dim=1, dtype=torch.int32)[:, :-1]
    lut_tail = (cdf + step // 2).div(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    lut = torch.cat([torch.zeros_like(lut_tail[:, :1]), lut_tail], dim=1).to(torch.uint8)
    equalized = lut.gather(1, flat).view(n, c, h, w)
    return torch.where((step != 0).view(n, c, 1, 1), equalized, x)
