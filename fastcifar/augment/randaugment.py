"""RandAugment with an independent draw per sample, batched, without host synchronisation.

Follows ``torchvision.transforms.v2.RandAugment`` (14 ops, its magnitude tables, a random sign
with p=0.5 for signed ops, nearest interpolation and fill 0 for geometric ops, ops drawn uniformly
with replacement) but every sample draws its own op and sign at every step, where torchvision
applies one draw to the whole tensor it is given.

Every per-sample parameter depends only on the sample's (op, sign) draw, a "key" ``2 * op +
negate`` in ``[0, 28)``, once the magnitude and image size are fixed. :func:`step_tables` turns
that into two small tables built once per (magnitude, bins, H, W, device) and cached: the source
pixel of every output pixel for each key (the geometric ops as a pure integer gather, computed
once with torchvision's sampling grid) and the colour parameters for each key. A step then reads
its parameters with one indexing op per table: no host reads, no per-batch trigonometry.

How the batch is processed: with fixed shapes (CUDA, and the compiled route everywhere) every op
group is computed for the whole batch and each sample's own result is picked with ``torch.where``,
so the work never depends on the draws and never synchronises. Eagerly on the CPU, where a host
"sync" is free, each op group runs only on the samples that drew it; both give the same bytes.
The six geometric ops (Identity included) share one gather; Brightness, Color and Contrast share
one blend with a per-sample degenerate image; Posterize and Solarize share one pass (neutral
parameters for samples that drew neither).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from fastcifar.augment import color
from fastcifar.augment.geometric import affine_source_index, gather_pixels, inverse_affine_theta

__all__ = [
    "NUM_MAGNITUDE_BINS",
    "RAND_AUGMENT_OPS",
    "StepDraw",
    "StepTables",
    "apply_rand_augment",
    "draw_rand_augment",
    "magnitude_table",
    "rand_augment",
    "step_tables",
]

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


@functools.lru_cache(maxsize=64)
def _magnitude_bins(num_bins: int, height: int, width: int) -> dict[str, tuple[float, ...]]:
    """:func:`magnitude_table` as Python floats (0.0 for unused ops), read from the tensors once per key."""
    table = magnitude_table(num_bins, height, width)
    return {
        name: (0.0,) * num_bins if bins is None else tuple(float(v) for v in bins.tolist())
        for name, bins in table.items()
    }


def _magnitudes(magnitude: int, num_bins: int, height: int, width: int) -> dict[str, float]:
    """The unsigned magnitude of every op at bin ``magnitude``, as Python floats (host constants)."""
    if not 0 <= magnitude < num_bins:
        raise ValueError(f"magnitude must be in [0, {num_bins}), got {magnitude}")
    return {name: bins[magnitude] for name, bins in _magnitude_bins(num_bins, height, width).items()}


def _is_op(op: torch.Tensor, *names: str) -> torch.Tensor:
    """``(N,)`` bool: the sample drew one of ``names``."""
    hit = op == _OP[names[0]]
    for name in names[1:]:
        hit = hit | (op == _OP[name])
    return hit


def _pick(
    op: torch.Tensor, names: tuple[str, ...], values: tuple[float | torch.Tensor, ...], default: float
) -> torch.Tensor:
    """Per-sample float64 parameter: ``values[i]`` where the sample drew ``names[i]``, else ``default``."""
    out = torch.full(op.shape, default, dtype=torch.float64, device=op.device)
    for name, value in zip(names, values, strict=True):
        out = torch.where(op == _OP[name], value, out)
    return out


def _geometric_theta(
    op: torch.Tensor, sign: torch.Tensor, mags: dict[str, float], height: int, width: int
) -> torch.Tensor:
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


NUM_MAGNITUDE_BINS = 31  # torchvision's default


class StepTables(NamedTuple):
    """Per-key lookup tables of one (magnitude, bins, H, W) on one device.

    ``source``: ``(28, H * W)`` int64, the input pixel each output pixel copies (``H * W``: fill 0);
    the identity for non-geometric ops. ``params``: ``(28, 4)`` float64 columns ``(blend ratio,
    sharpness factor, posterize bits, solarize threshold)``, neutral (1, -, 8, 256) where unused.
    """

    source: torch.Tensor
    params: torch.Tensor


@functools.lru_cache(maxsize=64)
def step_tables(magnitude: int, num_bins: int, height: int, width: int, device: torch.device) -> StepTables:
    """The cached :class:`StepTables`; built on the CPU (as torchvision would compute each op) and
    copied to ``device`` once, so a step's parameters cost one lookup and no host round trip."""
    mags = _magnitudes(magnitude, num_bins, height, width)
    op = torch.arange(len(RAND_AUGMENT_OPS)).repeat_interleave(2)  # (28,)
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(len(RAND_AUGMENT_OPS))  # odd keys negate
    source = affine_source_index(_geometric_theta(op, sign, mags, height, width), height, width)
    # Brightness/Color/Contrast: blend(x, degenerate, 1 + m); for Brightness the degenerate is 0 and
    # x * r + 0 * (1 - r) is bit-identical to torchvision's plain x * r.
    blend_names = ("Brightness", "Color", "Contrast")
    ratio = _pick(op, blend_names, tuple(1.0 + sign * mags[name] for name in blend_names), 1.0)
    sharpness = 1.0 + sign * mags["Sharpness"]
    # Posterize with 8 bits and Solarize above 255 are identities, so one pass serves both.
    bits = _pick(op, ("Posterize",), (float(int(mags["Posterize"])),), 8.0)
    # torchvision's threshold is 255 * m rounded to float32 (solarize compares in float32).
    threshold = _pick(op, ("Solarize",), (float(torch.tensor(255.0 * mags["Solarize"], dtype=torch.float32)),), 256.0)
    params = torch.stack([ratio, sharpness, bits, threshold], dim=1)
    if torch.device(device).type == "cuda":
        # pin so the one-time copy is truly asynchronous (no host synchronisation even on first use)
        source, params = source.pin_memory(), params.pin_memory()
    return StepTables(source.to(device, non_blocking=True), params.to(device, non_blocking=True))


def _use_subsets(device: torch.device) -> bool:
    """Whether op groups run on their samples only (see :class:`_Selector`)."""
    return device.type == "cpu"


class _Selector:
    """Writes one op group's result into the samples that drew it.

    With ``subsets=False`` (CUDA, compiled graphs) every group is computed for the whole batch and
    picked with ``torch.where``: fixed shapes, no host synchronisation. With ``subsets=True`` (eager
    CPU, where a host "sync" costs nothing) each group runs only on the samples that drew it
    (``nonzero`` + indexing), about 1/14 of the work per op; every op is per-sample, so both give
    bit-identical results.
    """

    def __init__(self, op: torch.Tensor, subsets: bool):
        self.op = op
        self.subset = subsets

    def apply(self, out: torch.Tensor, names: tuple[str, ...], compute) -> torch.Tensor:
        """``compute(sel)`` returns the group's result for ``x[sel]``; ``sel`` indexes per-sample params."""
        hit = _is_op(self.op, *names)
        if not self.subset:
            return torch.where(hit.view(-1, 1, 1, 1), compute(slice(None)), out)
        index = hit.nonzero().squeeze(1)
        if index.numel():
            out[index] = compute(index)
        return out


class StepDraw(NamedTuple):
    """One RandAugment step's draws: ``op`` ``(N,)`` int64 in ``[0, 14)`` and ``sign_u`` ``(N,)``
    float32 uniforms in ``[0, 1)``; as in torchvision the magnitude is negated where ``sign_u <= 0.5``
    (compared inside the step, so a compiled graph does it)."""

    op: torch.Tensor
    sign_u: torch.Tensor


def draw_rand_augment(
    n: int, num_ops: int, device: torch.device, generator: torch.Generator | None = None
) -> list[StepDraw]:
    """The random numbers of :func:`rand_augment`, in its order (op, then sign, per step)."""
    draws = []
    for _ in range(num_ops):
        op = torch.randint(0, len(RAND_AUGMENT_OPS), (n,), generator=generator, device=device)
        draws.append(StepDraw(op, torch.rand(n, generator=generator, device=device)))
    return draws


def _apply_step(x: torch.Tensor, step: StepDraw, tables: StepTables, subsets: bool) -> torch.Tensor:
    """Apply each sample's op ``step.op[i]`` with its sign to uint8 ``x (N, C, H, W)``.

    Per-batch path: no ``.item()``, ``.tolist()`` or ``bool(tensor)`` unless ``subsets`` (eager CPU).
    """
    c = x.shape[1]
    op = step.op
    negate = step.sign_u <= 0.5  # torchvision's rule; unsigned ops ignore the sign
    key = 2 * op + negate.to(op.dtype)
    ratio, sharpness, bits, threshold = tables.params[key].unbind(1)  # (N,) each
    if c == 1:  # torchvision leaves 1-channel images unchanged under Color
        ratio = torch.where(op == _OP["Color"], 1.0, ratio)
    select = _Selector(op, subsets)
    if subsets:  # Identity samples keep x; the gather runs on the geometric ones only
        out = select.apply(x.clone(), _GEOMETRIC_MOVES, lambda sel: gather_pixels(x[sel], tables.source[key[sel]]))
    else:
        out = gather_pixels(x, tables.source[key])  # ops 0..5; the identity map for the others

    def blend(sel) -> torch.Tensor:
        xs, ops = x[sel], op[sel]
        per_image = (-1, 1, 1, 1)
        gray = color.grayscale_floor(xs)  # (n, 1, H, W)
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        degenerate = torch.where((ops == _OP["Color"]).view(per_image), gray, mean)
        degenerate = torch.where((ops == _OP["Brightness"]).view(per_image), 0.0, degenerate)
        return color.blend(xs, degenerate, ratio[sel])

    out = select.apply(out, ("Brightness", "Color", "Contrast"), blend)
    out = select.apply(out, ("Sharpness",), lambda sel: color.adjust_sharpness(x[sel], sharpness[sel]))
    out = select.apply(
        out, ("Posterize", "Solarize"), lambda sel: color.solarize(color.posterize(x[sel], bits[sel]), threshold[sel])
    )
    out = select.apply(out, ("AutoContrast",), lambda sel: color.autocontrast(x[sel]))
    out = select.apply(out, ("Equalize",), lambda sel: color.equalize(x[sel]))
    return out


def _check_batch(x: torch.Tensor, num_ops: int) -> None:
    if x.dim() != 4 or x.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 (N, C, H, W) tensor, got {x.dtype} of shape {tuple(x.shape)}")
    if not isinstance(num_ops, int) or num_ops < 0:
        raise ValueError(f"num_ops must be a non-negative integer, got {num_ops}")


def apply_rand_augment(
    x: torch.Tensor, draws: list[StepDraw], tables: StepTables, subsets: bool | None = None
) -> torch.Tensor:
    """Apply drawn RandAugment steps (from :func:`draw_rand_augment`) with :func:`step_tables`' tables.

    Deterministic given its inputs; ``subsets=None`` picks the eager default for ``x.device``
    (pass ``False`` inside compiled graphs: fixed shapes). uint8 ``(N, C, H, W)`` in and out.
    """
    subsets = _use_subsets(x.device) if subsets is None else subsets
    for step in draws:
        x = _apply_step(x, step, tables, subsets)
    return x


def rand_augment(
    x: torch.Tensor,
    num_ops: int = 2,
    magnitude: int = 10,
    num_magnitude_bins: int = NUM_MAGNITUDE_BINS,
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
    _check_batch(x, num_ops)
    n, _, h, w = x.shape
    tables = step_tables(magnitude, num_magnitude_bins, h, w, x.device)
    if n == 0:
        return x.clone()
    return apply_rand_augment(x, draw_rand_augment(n, num_ops, x.device, generator), tables)
