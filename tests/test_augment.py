"""fastcifar.augment against torchvision (v2 functional ops, the semantic reference).

Tolerances: on CPU every op agrees with torchvision bit for bit (the same float32 arithmetic in
the same order, fused multiply-adds where torchvision's kernels fuse them, and the geometric ops'
pixel maps come from the same CPU ``grid_sample`` grid), and the CPU tests assert equality. On
another device the bounds are looser on purpose, since its kernels may flip the rare value that
sits exactly on a rounding boundary: colour ops within 1 intensity level (torchvision truncates a
float32 result, so a 1-ulp difference can move it by one level), geometric nearest-neighbour ops
equal on >= 99% of pixels (a 1-ulp difference in a grid coordinate on an exact half-pixel tie
picks the neighbour; ours uses the CPU grid on every device).
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from fastcifar.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RAND_AUGMENT_OPS,
    TestTransform,
    TrainTransform,
    color,
    normalize,
    rand_augment,
    random_crop_reflect,
    random_hflip,
)
from fastcifar.augment.randaugment import StepDraw, _apply_step, _magnitudes, magnitude_table, step_tables

NEAREST = TF.InterpolationMode.NEAREST
SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}
GEOMETRIC = {"Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}


def random_images(n: int, seed: int = 0, h: int = 32, w: int = 32) -> torch.Tensor:
    """uint8 (n, 3, h, w) noise with a per-image random value range inside [5, 250] that reaches
    above 175, so that every RandAugment op changes every image: full-range noise would make
    AutoContrast an identity, and images darker than the Solarize threshold would be left alone."""
    g = torch.Generator().manual_seed(seed)
    lo = torch.randint(5, 60, (n, 1, 1, 1), generator=g)
    span = torch.randint(170, 191, (n, 1, 1, 1), generator=g)
    u = torch.rand(n, 3, h, w, generator=g)
    return (lo + u * span).to(torch.uint8)


def tv_op(img: torch.Tensor, name: str, m: float) -> torch.Tensor:
    """torchvision's RandAugment op ``name`` at signed magnitude ``m`` (its call conventions)."""
    if name == "Identity":
        return img.clone()
    if name == "ShearX":
        return TF.affine(img, 0.0, [0, 0], 1.0, [math.degrees(math.atan(m)), 0.0], NEAREST, center=[0, 0])
    if name == "ShearY":
        return TF.affine(img, 0.0, [0, 0], 1.0, [0.0, math.degrees(math.atan(m))], NEAREST, center=[0, 0])
    if name == "TranslateX":
        return TF.affine(img, 0.0, [int(m), 0], 1.0, [0.0, 0.0], NEAREST)
    if name == "TranslateY":
        return TF.affine(img, 0.0, [0, int(m)], 1.0, [0.0, 0.0], NEAREST)
    if name == "Rotate":
        return TF.rotate(img, m, NEAREST)
    if name == "Brightness":
        return TF.adjust_brightness(img, 1.0 + m)
    if name == "Color":
        return TF.adjust_saturation(img, 1.0 + m)
    if name == "Contrast":
        return TF.adjust_contrast(img, 1.0 + m)
    if name == "Sharpness":
        return TF.adjust_sharpness(img, 1.0 + m)
    if name == "Posterize":
        return TF.posterize(img, int(m))
    if name == "Solarize":
        return TF.solarize(img, 255.0 * m)
    if name == "AutoContrast":
        return TF.autocontrast(img)
    if name == "Equalize":
        return TF.equalize(img)
    raise AssertionError(name)


def apply_op(x: torch.Tensor, name: str, sign: float, magnitude: int = 10) -> torch.Tensor:
    """Our RandAugment step with every sample drawing op ``name`` and sign ``sign`` (fixed-shape route)."""
    n = x.shape[0]
    step = StepDraw(
        torch.full((n,), RAND_AUGMENT_OPS.index(name), device=x.device),
        torch.full((n,), 0.25 if sign < 0 else 0.75, device=x.device),
    )  # negated where <= 0.5
    return _apply_step(x, step, step_tables(magnitude, 31, x.shape[-2], x.shape[-1], x.device), subsets=False)


def assert_close_uint8(ours: torch.Tensor, ref: torch.Tensor, geometric: bool) -> None:
    assert ours.dtype == torch.uint8 and ours.shape == ref.shape
    if ours.device.type == "cpu":
        assert torch.equal(ours, ref), f"{(ours != ref).sum().item()} values differ"
    elif geometric:
        assert (ours == ref).float().mean().item() >= 0.99
    else:
        assert (ours.int() - ref.int()).abs().max().item() <= 1


# ---------------------------------------------------------------------------------- op semantics


def test_op_list_and_magnitude_tables_match_torchvision() -> None:
    space = T.RandAugment._AUGMENTATION_SPACE
    assert tuple(space) == RAND_AUGMENT_OPS
    ours = magnitude_table(31, 32, 32)
    for name, (bins_fn, signed) in space.items():
        ref = bins_fn(31, 32, 32)
        assert (name in SIGNED) == signed
        if ref is None:
            assert ours[name] is None
        else:
            assert torch.equal(ours[name], ref), name


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("name", RAND_AUGMENT_OPS)
@pytest.mark.parametrize("magnitude", [10, 27])
def test_each_op_matches_torchvision(name: str, sign: float, magnitude: int) -> None:
    x = random_images(16, seed=magnitude)
    mags = _magnitudes(magnitude, 31, 32, 32)
    m = mags[name] * (sign if name in SIGNED else 1.0)
    assert_close_uint8(apply_op(x, name, sign, magnitude), tv_op(x, name, m), geometric=name in GEOMETRIC)


@pytest.mark.parametrize(
    ("ours_fn", "tv_fn", "values"),
    [
        (color.adjust_brightness, TF.adjust_brightness, (0.1, 0.6, 1.0, 1.45, 1.9)),
        (color.adjust_saturation, TF.adjust_saturation, (0.1, 0.6, 1.0, 1.45, 1.9)),
        (color.adjust_contrast, TF.adjust_contrast, (0.1, 0.6, 1.0, 1.45, 1.9)),
        (color.adjust_sharpness, TF.adjust_sharpness, (0.1, 0.6, 1.0, 1.45, 1.9)),
        (color.posterize, TF.posterize, (0, 1, 4, 7, 8)),
        (color.solarize, TF.solarize, (0.0, 17.0, 100.5, 170.00000886011122, 255.0)),
    ],
)
def test_colour_ops_take_per_sample_parameters(ours_fn, tv_fn, values) -> None:
    x = random_images(20, seed=3)
    per_sample = torch.tensor(values).repeat(4)
    ref = torch.cat([tv_fn(x[i : i + 1], per_sample[i].item()) for i in range(20)])
    assert_close_uint8(ours_fn(x, per_sample), ref, geometric=False)


def test_autocontrast_and_equalize_per_channel_including_flat_channels() -> None:
    x = random_images(8, seed=4)
    x[1, 0] = 77  # a constant channel: both ops leave it alone
    x[2, :, :, :16] = 200  # two-valued image: equalize's step is 0 for PIL's rule
    x[2, :, :, 16:] = 10
    assert_close_uint8(color.autocontrast(x), TF.autocontrast(x), geometric=False)
    assert_close_uint8(color.equalize(x), TF.equalize(x), geometric=False)


# ------------------------------------------------------------------------------- rand_augment


def _identify_ops(x: torch.Tensor, out: torch.Tensor, magnitude: int) -> torch.Tensor:
    """(N, 14, 2) bool: sample i's output equals torchvision's op k with sign s applied to x[i]."""
    mags = _magnitudes(magnitude, 31, x.shape[-2], x.shape[-1])
    hits = torch.zeros(x.shape[0], len(RAND_AUGMENT_OPS), 2, dtype=torch.bool)
    for k, name in enumerate(RAND_AUGMENT_OPS):
        for s, sign in enumerate((1.0, -1.0)):
            ref = tv_op(x, name, mags[name] * (sign if name in SIGNED else 1.0))
            hits[:, k, s] = (ref == out).flatten(1).all(dim=1)
    return hits


def test_rand_augment_single_op_per_sample_is_a_torchvision_op_with_uniform_frequencies() -> None:
    n = 2048
    x = random_images(n, seed=5)
    out = rand_augment(x, num_ops=1, magnitude=10, generator=torch.Generator().manual_seed(0))
    hits = _identify_ops(x, out, magnitude=10)
    op_hits = hits.any(dim=2)  # (N, 14)
    assert op_hits.any(dim=1).all(), "every output is one of torchvision's ops"
    unique = op_hits.sum(dim=1) == 1
    assert unique.float().mean() > 0.99
    counts = op_hits[unique].sum(dim=0).double()
    # Binomial(n, 1/14): sd ~ 11.7 at n=2048; 5 sd keeps false failures below 1e-5 per op.
    expected = unique.sum().item() / 14
    sd = math.sqrt(expected * 13 / 14)
    assert ((counts - expected).abs() < 5 * sd).all(), counts
    # Signed ops: both signs occur about equally (each sign ~ Binomial(count, 1/2)).
    for k, name in enumerate(RAND_AUGMENT_OPS):
        if name in SIGNED:
            only = unique & op_hits[:, k] & (hits[:, k].sum(dim=1) == 1)
            pos = hits[only, k, 0].sum().item()
            total = only.sum().item()
            assert abs(pos - total / 2) < 5 * math.sqrt(total / 4), (name, pos, total)


def test_rand_augment_samples_are_independent() -> None:
    x = random_images(64, seed=6)
    same = x[:1].expand(64, -1, -1, -1).contiguous()
    out = rand_augment(same, generator=torch.Generator().manual_seed(1))
    distinct = {bytes(o.flatten().numpy()) for o in out}
    assert len(distinct) > 40  # one draw per batch would give a single distinct output
    # A sample's result does not depend on the other samples in the batch.
    other = x.clone()
    other[1:] = random_images(63, seed=7)
    a = rand_augment(x, generator=torch.Generator().manual_seed(2))
    b = rand_augment(other, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0])


def test_rand_augment_is_deterministic_given_a_generator() -> None:
    x = random_images(32, seed=8)
    a = rand_augment(x, generator=torch.Generator().manual_seed(3))
    b = rand_augment(x, generator=torch.Generator().manual_seed(3))
    c = rand_augment(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.dtype == torch.uint8 and a.shape == x.shape


def test_rand_augment_two_ops_compose_two_single_steps() -> None:
    # num_ops=2 applies a fresh per-sample draw to the previous result: composing two 1-op calls
    # from a generator in the same state draws the same numbers in the same order.
    x = random_images(32, seed=9)
    two = rand_augment(x, num_ops=2, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    composed = rand_augment(rand_augment(x, num_ops=1, generator=g), num_ops=1, generator=g)
    assert torch.equal(two, composed)
    assert torch.equal(rand_augment(x, num_ops=0), x)


def test_rand_augment_rejects_bad_arguments() -> None:
    x = random_images(2)
    with pytest.raises(ValueError):
        rand_augment(x, magnitude=31)
    with pytest.raises(ValueError):
        rand_augment(x.float())


# --------------------------------------------------------------------------------- crop / flip


def test_random_crop_reflect_is_a_reflect_padded_crop_with_uniform_offsets() -> None:
    n = 2048
    x = random_images(n, seed=10)
    out = random_crop_reflect(x, padding=4, generator=torch.Generator().manual_seed(0))
    padded = TF.pad(x, [4], padding_mode="reflect")  # (N, 3, 40, 40), torchvision's reference pad
    found = torch.full((n, 2), -1)
    for dy in range(9):
        for dx in range(9):
            match = (padded[:, :, dy : dy + 32, dx : dx + 32] == out).flatten(1).all(dim=1)
            found[match] = torch.tensor([dy, dx])
    assert (found >= 0).all(), "every output is one of the 81 crops of the padded image"
    for axis in range(2):
        counts = torch.bincount(found[:, axis], minlength=9).double()
        expected, sd = n / 9, math.sqrt(n / 9 * 8 / 9)
        assert ((counts - expected).abs() < 5 * sd).all(), counts


def test_random_hflip_flips_about_half_per_sample() -> None:
    n = 2048
    x = random_images(n, seed=11)
    out = random_hflip(x, generator=torch.Generator().manual_seed(0))
    kept = (out == x).flatten(1).all(dim=1)
    flipped = (out == TF.horizontal_flip(x)).flatten(1).all(dim=1)
    assert (kept ^ flipped).all()
    assert abs(flipped.sum().item() - n / 2) < 5 * math.sqrt(n / 4)
    assert torch.equal(random_hflip(x, p=0.0), x)
    assert torch.equal(random_hflip(x, p=1.0), TF.horizontal_flip(x))


def test_crop_and_flip_are_deterministic_given_a_generator() -> None:
    x = random_images(16, seed=12)
    for fn in (random_crop_reflect, random_hflip):
        a = fn(x, generator=torch.Generator().manual_seed(7))
        b = fn(x, generator=torch.Generator().manual_seed(7))
        assert torch.equal(a, b)


# ------------------------------------------------------------------------- normalize / modules


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [True, False])
def test_normalize_matches_totensor_normalize(dtype: torch.dtype, channels_last: bool) -> None:
    x = random_images(8, seed=13)
    ref = TF.normalize(TF.to_dtype(x, torch.float32, scale=True), list(IMAGENET_MEAN), list(IMAGENET_STD))
    out = normalize(x, IMAGENET_MEAN, IMAGENET_STD, dtype=dtype, channels_last=channels_last)
    assert out.dtype == dtype and out.shape == x.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16 keeps 8 significant bits
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


def test_test_transform_is_normalisation_only() -> None:
    x = random_images(8, seed=14)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    t = TestTransform(mean, std, dtype=torch.bfloat16, channels_last=True)
    out = t(x)
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, normalize(x, mean, std, torch.bfloat16, True))


def test_train_transform_is_flip_crop_randaugment_normalize() -> None:
    x = random_images(16, seed=15)
    t = TrainTransform(dtype=torch.float32, channels_last=False)
    out = t(x, generator=torch.Generator().manual_seed(9))
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32 and out.is_contiguous()
    g = torch.Generator().manual_seed(9)
    y = random_crop_reflect(random_hflip(x, generator=g), padding=4, generator=g)
    y = rand_augment(y, num_ops=2, magnitude=10, generator=g)
    assert torch.equal(out, normalize(y, IMAGENET_MEAN, IMAGENET_STD, torch.float32, channels_last=False))
    assert torch.equal(out, t(x, generator=torch.Generator().manual_seed(9)))

    plain = TrainTransform(randaugment=False, dtype=torch.bfloat16, channels_last=True)
    out = plain(x, generator=torch.Generator().manual_seed(9))
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(9)
    y = random_crop_reflect(random_hflip(x, generator=g), padding=4, generator=g)
    assert torch.equal(out, normalize(y, IMAGENET_MEAN, IMAGENET_STD, torch.bfloat16, channels_last=True))


# -------------------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_augmentation_never_synchronises_and_matches_cpu_semantics() -> None:
    x = random_images(256, seed=16).cuda()
    t = TrainTransform().cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    t(x, generator=g)  # warm-up: lazy CUDA/cuDNN initialisation may synchronise once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = t(x, generator=torch.Generator(device="cuda").manual_seed(1))
        aug = rand_augment(x, generator=torch.Generator(device="cuda").manual_seed(1))
        TestTransform().cuda()(x)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.shape == x.shape and out.device.type == "cuda"
    assert torch.equal(out, t(x, generator=torch.Generator(device="cuda").manual_seed(1)))
    # Per-op semantics on the device: each op vs torchvision on the same CUDA tensors.
    mags = _magnitudes(10, 31, 32, 32)
    for name in RAND_AUGMENT_OPS:
        for sign in (1.0, -1.0):
            ref = tv_op(x, name, mags[name] * (sign if name in SIGNED else 1.0))
            assert_close_uint8(apply_op(x, name, sign), ref, geometric=name in GEOMETRIC)
    assert aug.dtype == torch.uint8


def test_colour_ops_on_full_range_noise() -> None:
    # Saturating values exercise the clamps; sharpness's integer smoothing must equal torchvision's
    # rounded float convolution everywhere.
    x = torch.randint(0, 256, (16, 3, 32, 32), generator=torch.Generator().manual_seed(17), dtype=torch.uint8)
    for f in (0.1, 1.9):
        assert_close_uint8(color.adjust_sharpness(x, f), TF.adjust_sharpness(x, f), geometric=False)
        assert_close_uint8(color.adjust_contrast(x, f), TF.adjust_contrast(x, f), geometric=False)
        assert_close_uint8(color.adjust_brightness(x, f), TF.adjust_brightness(x, f), geometric=False)
    assert_close_uint8(color.equalize(x), TF.equalize(x), geometric=False)


def test_cpu_subset_route_equals_the_batched_where_route(monkeypatch) -> None:
    """On CPU each op group runs only on its samples; the fixed-shape GPU route must give the same bytes."""
    from fastcifar.augment import randaugment as ra

    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8, generator=g)
    x[:20] = x[:20] // 4 + 100  # low-contrast samples: autocontrast and equalize do real work
    subset = ra.rand_augment(x, num_ops=2, magnitude=10, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(ra, "_use_subsets", lambda device: False)
    batched = ra.rand_augment(x, num_ops=2, magnitude=10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(subset, batched)
    assert not torch.equal(subset, x)
