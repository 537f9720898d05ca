"""RandAugment with an independent draw per sample, batched, without host synchronisation.

Follows ``torchvision.transforms.v2.RandAugment`` (14 ops, its magnitude tables, a random sign
with p=0.5 for signed ops, nearest interpolation and fill 0 for geometric ops, ops drawn uniformly
with replacement) but every sample draws its own op and sign at every step, where torchvision
applies one draw to the whole tensor it is given.

How the batch is processed: on CUDA, for each of the ``num_ops`` steps every candidate result is
computed for the whole batch with per-sample parameters and the sample's own op is picked with
``torch.where``: shapes never depend on the draws, so the work is a fixed set of batched kernels
with no host synchronisation. On the CPU, where a host "sync" is free, each op group runs only on
the samples that drew it; both routes give the same bytes (tested).
The six geometric ops (Identity included) share one ``grid_sample`` with per-sample matrices;
Brightness, Color and Contrast share one blend with a per-sample degenerate image; Posterize and
Solarize share one pass (neutral parameters for samples that drew neither).
"""

from __future__ import annotations

import torch

from fastcifar.augment import color
from fastcifar.augment.geometric import affine_nearest, inverse_affine_theta

__all__ = ["RAND_AUGMENT_OPS", "rand_augment", "magnitude_table"]

RAND_AUGMENT_OPS: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
_OP = {name: i for i, name in enumerate(RAND_AUGMENT_OPS)}
_GEOMETRIC_MOVES = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def magnitude_table(num_bins: int, height: int, width: int) -> dict[str, torch.Tensor | None]:
    """torchvision's RandAugment magnitude bins per op (float32 CPU tensors, ``None`` if unused)."""
    linear = {
        "ShearX": 0.3,
        "ShearY": 0.3,
        "TranslateX": 150.0 / 331.0 * width,
        "TranslateY": 150.0 / 331.0 * height,
        "Rotate": 30.0,
        "Brightness": 0.9,
        "Color": 0.9,
        "Contrast": 0.9,
        "Sharpness": 0.9,
    }
    table: dict[str, torch.Tensor | None] = {name: None for name in RAND_AUGMENT_OPS}
    for name, top in linear.items():
        table[name] = torch.linspace(0.0, top, num_bins)
    table["Posterize"] = (8 - (torch.arange(num_bins) / ((num_bins - 1) / 4))).round().int()
    table["Solarize"] = torch.linspace(1.0, 0.0, num_bins)
    return table


def _magnitudes(magnitude: int, num_bins: int, height: int, width: int) -> dict[str, float]:
    """The unsigned magnitude of every op at bin ``magnitude``, as Python floats (host constants)."""
    if not 0 <= magnitude < num_bins:
        raise ValueError(f"magnitude must be in [0, {num_bins}), got {magnitude}")
    table = magnitude_table(num_bins, height, width)
    return {name: 0.0 if bins is None else float(bins[magnitude]) for name, bins in table.items()}


def _is_op(op: torch.Tensor, *names: str) -> torch.Tensor:
    """``(N,)`` bool: the sample drew one of ``names``."""
    hit = op == _OP[names[0]]
    for name in names[1:]:
        hit = hit | (op == _OP[name])
    return hit


def _pick(op: torch.Tensor, names: tuple[str, ...], values: tuple[float | torch.Tensor, ...], default: float) -> torch.Tensor:
    """Per-sample float64 parameter: ``values[i]`` where the sample drew ``names[i]``, else ``default``."""
    out = torch.full(op.shape, default, dtype=torch.float64, device=op.device)
    for name, value in zip(names, values):
        out = torch.where(op == _OP[name], value, out)
    return out


def _geometric_theta(op: torch.Tensor, sign: torch.Tensor, mags: dict[str, float], height: int, width: int) -> torch.Tensor:
    """``(N, 2, 3)`` float64 inverse affine matrices; identity for non-geometric ops.

    Mirrors torchvision's calls: shears use ``atan`` of the magnitude in degrees around the
    top-left corner, translations truncate to whole pixels, rotation uses ``-(angle % 360)``.
    """
    signed = {name: sign * mags[name] for name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")}
    angle = _pick(op, ("Rotate",), (-torch.remainder(signed["Rotate"], 360.0),), 0.0)
    tx = _pick(op, ("TranslateX",), (torch.trunc(signed["TranslateX"]),), 0.0)
    ty = _pick(op, ("TranslateY",), (torch.trunc(signed["TranslateY"]),), 0.0)
    shx = _pick(op, ("ShearX",), (torch.rad2deg(torch.atan(signed["ShearX"])),), 0.0)
    shy = _pick(op, ("ShearY",), (torch.rad2deg(torch.atan(signed["ShearY"])),), 0.0)
    shear = _is_op(op, "ShearX", "ShearY")
    cx = torch.where(shear, -0.5 * width, 0.0).to(torch.float64)
    cy = torch.where(shear, -0.5 * height, 0.0).to(torch.float64)
    return inverse_affine_theta(angle, tx, ty, shx, shy, cx, cy)


def _use_subsets(device: torch.device) -> bool:
    """Whether op groups run on their samples only (see :class:`_Selector`)."""
    return device.type == "cpu"


class _Selector:
    """Writes one op group's result into the samples that drew it.

    On CUDA (and any accelerator) every group is computed for the whole batch and picked with
    ``torch.where``: fixed shapes, no host synchronisation. On the CPU a host "sync" costs nothing,
    so each group runs only on the samples that drew it (``nonzero`` + ``index_select``), about 1/14
    of the work per op; every op is per-sample, so both routes give bit-identical results.
    """

    def __init__(self, x: torch.Tensor, op: torch.Tensor):
        self.op = op
        self.subset = _use_subsets(x.device)

    def apply(self, out: torch.Tensor, names: tuple[str, ...], compute) -> torch.Tensor:
        """``compute(sel)`` returns the group's result for ``x[sel]``; ``sel`` indexes per-sample params."""
        hit = _is_op(self.op, *names)
        if not self.subset:
            return torch.where(hit.view(-1, 1, 1, 1), compute(slice(None)), out)
        index = hit.nonzero().squeeze(1)
        if index.numel():
            out[index] = compute(index)
        return out


def _apply_step(x: torch.Tensor, op: torch.Tensor, sign: torch.Tensor, mags: dict[str, float]) -> torch.Tensor:
    """Apply each sample's op ``op[i]`` with signed magnitude to uint8 ``x (N, C, H, W)``."""
    c, h, w = x.shape[1:]
    select = _Selector(x, op)
    theta = _geometric_theta(op, sign, mags, h, w)
    if select.subset:  # Identity samples keep x; the affine pass runs on the geometric ones only
        out = select.apply(x.clone(), _GEOMETRIC_MOVES, lambda sel: affine_nearest(x[sel], theta[sel]))
    else:
        out = affine_nearest(x, theta)  # ops 0..5: Identity has the identity matrix

    # Brightness/Color/Contrast: blend(x, degenerate, 1 + m); for Brightness the degenerate is 0 and
    # x * r + 0 * (1 - r) is bit-identical to torchvision's plain x * r.
    ratio = _pick(
        op,
        ("Brightness", "Color", "Contrast"),
        tuple(1.0 + sign * mags[name] for name in ("Brightness", "Color", "Contrast")),
        1.0,
    )
    if c == 1:  # torchvision leaves 1-channel images unchanged under Color
        ratio = torch.where(op == _OP["Color"], 1.0, ratio)

    def blend(sel) -> torch.Tensor:
        xs, ops = x[sel], op[sel]
        per_image = (-1, 1, 1, 1)
        gray = color.grayscale_floor(xs)  # (n, 1, H, W)
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        degenerate = torch.where((ops == _OP["Color"]).view(per_image), gray, mean)
        degenerate = torch.where((ops == _OP["Brightness"]).view(per_image), 0.0, degenerate)
        return color.blend(xs, degenerate, ratio[sel])

    out = select.apply(out, ("Brightness", "Color", "Contrast"), blend)

    sharp_factor = 1.0 + sign * mags["Sharpness"]
    out = select.apply(out, ("Sharpness",), lambda sel: color.adjust_sharpness(x[sel], sharp_factor[sel]))

    # Posterize with 8 bits and Solarize above 255 are identities, so one pass serves both.
    bits = torch.where(op == _OP["Posterize"], int(mags["Posterize"]), 8)
    threshold = torch.where(op == _OP["Solarize"], 255.0 * mags["Solarize"], 256.0)
    out = select.apply(
        out, ("Posterize", "Solarize"), lambda sel: color.solarize(color.posterize(x[sel], bits[sel]), threshold[sel])
    )
    out = select.apply(out, ("AutoContrast",), lambda sel: color.autocontrast(x[sel]))
    out = select.apply(out, ("Equalize",), lambda sel: color.equalize(x[sel]))
    return out


def rand_augment(
    x: torch.Tensor,
    num_ops: int = 2,
    magnitude: int = 10,
    num_magnitude_bins: int = 31,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """RandAugment on a uint8 batch with an independent op, sign and result per sample.

    Args:
        x: uint8 ``(N, C, H, W)`` with C in {1, 3}, on any device.
        num_ops: ops applied in sequence to every sample.
        magnitude: bin index into the magnitude tables, ``0 <= magnitude < num_magnitude_bins``.
        num_magnitude_bins: number of bins of the tables.
        generator: optional generator on ``x.device``; the same seed gives the same output.
    Returns:
        uint8 ``(N, C, H, W)``.
    """
    if x.dim() != 4 or x.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 (N, C, H, W) tensor, got {x.dtype} of shape {tuple(x.shape)}")
    if not isinstance(num_ops, int) or num_ops < 0:
        raise ValueError(f"num_ops must be a non-negative integer, got {num_ops}")
    n, _, h, w = x.shape
    mags = _magnitudes(magnitude, num_magnitude_bins, h, w)
    if n == 0:
        return x.clone()
    for _ in range(num_ops):
        op = torch.randint(0, len(RAND_AUGMENT_OPS), (n,), generator=generator, device=x.device)
        # torchvision negates when rand() <= 0.5; unsigned ops ignore the sign.
        negate = torch.rand(n, generator=generator, device=x.device) <= 0.5
        sign = torch.where(negate, -1.0, 1.0).to(torch.float64)
        x = _apply_step(x, op, sign, mags)
    return x
