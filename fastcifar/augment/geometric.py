"""Batched geometric augmentation on uint8 ``(N, C, H, W)`` images, one random draw per sample.

Everything here keeps fixed shapes and never reads tensor values on the host, so it runs on a
CUDA stream without synchronising (``torch.cuda.set_sync_debug_mode("error")`` stays quiet).
Each random transform is split into a draw (``draw_*``: the generator calls) and a deterministic
apply (``crop_reflect``, ``hflip_where``), so a compiled graph can apply draws made outside it.
Semantics follow torchvision: ``RandomCrop(padding, padding_mode="reflect")``,
``RandomHorizontalFlip`` and ``affine``/``rotate`` with nearest interpolation and fill 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "random_crop_reflect",
    "crop_applies",
    "crop_reflect",
    "draw_crop_offsets",
    "draw_flips",
    "random_hflip",
    "hflip_where",
    "inverse_affine_theta",
    "affine_source_index",
    "gather_pixels",
    "affine_nearest",
]


def _check_image(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 (N, C, H, W) tensor, got {x.dtype} of shape {tuple(x.shape)}")


def _reflect_index(k: torch.Tensor, size: int) -> torch.Tensor:
    """Map padded coordinates ``k`` (any int tensor, ``-size < k < 2 * size - 1``) into ``[0, size)``
    by reflection without repeating the edge (``numpy.pad``/``F.pad`` "reflect")."""
    k = k.abs()
    return torch.where(k >= size, 2 * (size - 1) - k, k)


def draw_crop_offsets(
    n: int, padding: int, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``(n, 2)`` int64 crop offsets (row, column), uniform in ``[0, 2 * padding]``."""
    return torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=device)


def crop_reflect(x: torch.Tensor, offsets: torch.Tensor, padding: int) -> torch.Tensor:
    """Crop ``(H, W)`` at ``offsets`` out of every image reflect-padded by ``padding``.

    Two gathers of reflected indices instead of materialising the padded batch.

    Args:
        x: uint8 ``(N, C, H, W)``.
        offsets: ``(N, 2)`` integer (row, column) offsets in ``[0, 2 * padding]``.
        padding: pixels of reflection on each side, ``0 < padding < min(H, W)``.
    Returns:
        uint8 ``(N, C, H, W)``, contiguous.
    """
    n, c, h, w = x.shape
    rows = _reflect_index(torch.arange(h, device=x.device) + (offsets[:, :1] - padding), h)  # (N, H)
    cols = _reflect_index(torch.arange(w, device=x.device) + (offsets[:, 1:] - padding), w)  # (N, W)
    out = x.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def crop_applies(shape: torch.Size | tuple[int, ...], padding: int) -> bool:
    """Whether a crop of an ``(N, C, H, W)`` batch draws and moves anything (``padding > 0``, ``N > 0``).

    Raises ``ValueError`` for a padding outside ``[0, min(H, W))``.
    """
    n, _, h, w = shape
    if padding == 0 or n == 0:
        return False
    if not 0 < padding < min(h, w):
        raise ValueError(f"padding must be in [0, {min(h, w)}), got {padding}")
    return True


def random_crop_reflect(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Reflect-pad every image by ``padding`` and crop it back to ``(H, W)`` at a random offset.

    Equivalent to torchvision ``RandomCrop((H, W), padding, padding_mode="reflect")`` applied per
    image: offsets are uniform in ``[0, 2 * padding]`` on each axis, drawn independently per sample.

    Args:
        x: uint8 ``(N, C, H, W)``.
        padding: pixels of reflection on each side; must be smaller than H and W.
        generator: optional generator on ``x.device``.
    Returns:
        uint8 ``(N, C, H, W)``, contiguous.
    """
    _check_image(x)
    if not crop_applies(x.shape, padding):
        return x.clone()
    return crop_reflect(x, draw_crop_offsets(x.shape[0], padding, x.device, generator), padding)


def draw_flips(n: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n,)`` float32 uniforms in ``[0, 1)``; a sample is mirrored when its value is below ``p``.

    The comparison is left to :func:`hflip_where` so that it runs inside a compiled graph.
    """
    return torch.rand(n, generator=generator, device=device)


def hflip_where(x: torch.Tensor, flip_u: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Mirror left-right the images whose ``flip_u`` ``(N,)`` value is below ``p``; ``(N, C, H, W)`` in and out."""
    return torch.where((flip_u < p).view(-1, 1, 1, 1), x.flip(-1), x)


def random_hflip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``, independently per sample.

    Args:
        x: uint8 ``(N, C, H, W)`` (any dtype works; uint8 is the contract).
        p: flip probability.
        generator: optional generator on ``x.device``.
    Returns:
        ``(N, C, H, W)`` tensor of ``x.dtype``.
    """
    return hflip_where(x, draw_flips(x.shape[0], x.device, generator), p)


def inverse_affine_theta(
    angle: torch.Tensor,
    translate_x: torch.Tensor,
    translate_y: torch.Tensor,
    shear_x: torch.Tensor,
    shear_y: torch.Tensor,
    center_x: torch.Tensor | float = 0.0,
    center_y: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Per-sample inverse affine matrices, as torchvision builds them for ``affine``.

    The forward map is ``T * C * R(angle) * ShY(shear_y) * ShX(shear_x) * C^-1`` (scale 1); the
    returned matrix maps output pixel coordinates (origin at the image centre) to input ones.
    Angles are in degrees; centres are relative to the image centre (``(-W/2, -H/2)`` is the
    top-left corner). Computed in the dtype of ``angle`` (use float64 to match torchvision, which
    does this in Python floats, then cast to float32 like it does).

    Args:
        angle, translate_x, translate_y, shear_x, shear_y: ``(N,)`` tensors.
        center_x, center_y: ``(N,)`` tensors or floats.
    Returns:
        ``(N, 2, 3)`` tensor in the dtype of ``angle``.
    """
    rot = torch.deg2rad(angle)
    sx = torch.deg2rad(shear_x)
    sy = torch.deg2rad(shear_y)
    cos_sy = torch.cos(sy)
    tan_sx = torch.tan(sx)
    # Rotation-shear block (determinant 1); its inverse is [[d, -b], [-c, a]].
    a = torch.cos(rot - sy) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot - sy) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    m00, m01, m10, m11 = d, -b, -c, a
    cxt = center_x + translate_x
    cyt = center_y + translate_y
    m02 = center_x - m00 * cxt - m01 * cyt
    m12 = center_y - m10 * cxt - m11 * cyt
    return torch.stack([m00, m01, m02, m10, m11, m12], dim=-1).view(-1, 2, 3)


def _base_grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    """``(H * W, 3)`` float32 rows ``(x, y, 1)`` of pixel centres with the origin at the image centre."""
    xs = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=device)
    ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=device)
    grid = torch.empty(h, w, 3, device=device)
    grid[..., 0].copy_(xs)
    grid[..., 1].copy_(ys.unsqueeze(-1))
    grid[..., 2].fill_(1.0)
    return grid.view(h * w, 3)


def affine_source_index(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Which input pixel nearest-neighbour sampling picks for every output pixel, per matrix.

    The sampling grid is built as torchvision's tensor ``affine``/``rotate`` build it (float32,
    normalised to ``grid_sample``'s ``[-1, 1]`` after applying theta) and sampled with
    ``grid_sample(mode="nearest", padding_mode="zeros", align_corners=False)`` on an image whose
    pixels hold their own flat index + 1 (exact in float32 below 2**24 pixels): the sample is the
    picked pixel's index, 0 outside the image.

    Args:
        theta: ``(N, 2, 3)`` inverse matrices from :func:`inverse_affine_theta` (any float dtype;
            cast to float32 like torchvision).
        height, width: image size.
    Returns:
        ``(N, H * W)`` int64 flat source indices; ``H * W`` marks pixels filled with 0.
    """
    n = theta.shape[0]
    pixels = height * width
    if pixels >= 2**24:
        raise ValueError(f"images of {pixels} pixels are too large for float32 pixel indices")
    theta = theta.to(torch.float32)
    # Normalise to grid_sample's [-1, 1] coordinates after applying theta, as torchvision does.
    rescaled = theta.transpose(1, 2)  # (N, 3, 2)
    rescaled = torch.stack([rescaled[..., 0] / (0.5 * width), rescaled[..., 1] / (0.5 * height)], dim=-1)
    grid = _base_grid(height, width, theta.device).expand(n, pixels, 3).bmm(rescaled).view(n, height, width, 2)
    index_image = torch.arange(1, pixels + 1, dtype=torch.float32, device=theta.device).view(1, 1, height, width)
    picked = F.grid_sample(
        index_image.expand(n, 1, height, width), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    source = picked.view(n, pixels).round_().to(torch.int64) - 1
    return torch.where(source < 0, pixels, source)


def gather_pixels(x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``out[n, c, p] = x[n, c, source[n, p]]`` over flattened pixels; 0 where ``source == H * W``.

    Pure integer indexing: the same bytes on every device and backend.

    Args:
        x: ``(N, C, H, W)``.
        source: ``(N, H * W)`` int64 from :func:`affine_source_index`.
    Returns:
        ``(N, C, H, W)`` of ``x.dtype``.
    """
    n, c, h, w = x.shape
    pixels = h * w
    # Gather in bounds, then zero the fill pixels: no concatenated copy of the batch, so a compiled
    # graph fuses the gather into whatever consumes it.
    index = source.clamp(max=pixels - 1).view(n, 1, pixels).expand(n, c, pixels)
    picked = x.reshape(n, c, pixels).gather(2, index)
    return (picked * (source < pixels).view(n, 1, pixels)).view(n, c, h, w)


def affine_nearest(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp every image with its own inverse affine matrix, nearest interpolation, fill 0.

    Matches torchvision's tensor ``affine``/``rotate`` (nearest, ``fill=None``): the same float32
    sampling grid picks the same pixels, up to float rounding on exact half-pixel ties (see
    :func:`affine_source_index`); the pixels are then copied with :func:`gather_pixels`.

    Args:
        x: uint8 ``(N, C, H, W)``.
        theta: ``(N, 2, 3)`` inverse matrices from :func:`inverse_affine_theta`.
    Returns:
        uint8 ``(N, C, H, W)``.
    """
    _check_image(x)
    h, w = x.shape[-2:]
    return gather_pixels(x, affine_source_index(theta.to(x.device), h, w))
