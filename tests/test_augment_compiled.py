"""The compiled route of TrainTransform against the eager reference: same draws, same bytes.

On the CPU both routes must agree bit for bit (Inductor's C++ code and ``aot_eager``); the fused
multiply-adds the eager kernels run are emulated exactly inside the graph (``color.fma_f32``).
Float32 outputs are compared because normalisation to float32 is injective on uint8 values, so
equal outputs mean equal augmented bytes.
"""

from __future__ import annotations

import pytest
import torch

from fastcifar.augment import TrainDraws, TrainTransform, affine_nearest, inverse_affine_theta
from fastcifar.augment import randaugment as ra
from fastcifar.augment import transforms as tr


def images(n: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """uint8 noise with some low-contrast samples, so AutoContrast and Equalize do real work."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, channels, 32, 32), dtype=torch.uint8, generator=g)
    x[: n // 4] = x[: n // 4] // 4 + 100
    return x


def run_both(
    x: torch.Tensor, backend: str, seed: int = 0, fresh: bool = True, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager and compiled outputs for the same seed; also checks both consumed the generator alike.

    ``fresh``: reset dynamo first and check that exactly one graph was compiled (past dynamo's
    recompile limit a compiled function silently runs eagerly, which would make the test vacuous).
    """
    from torch._dynamo.utils import counters

    if fresh:
        torch._dynamo.reset()
    graphs_before = counters["stats"]["unique_graphs"]
    g_eager, g_compiled = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    eager = TrainTransform(compiled=False, **kwargs)(x, generator=g_eager)
    compiled = TrainTransform(compiled=True, compile_backend=backend, **kwargs)(x, generator=g_compiled)
    if fresh:
        assert counters["stats"]["unique_graphs"] == graphs_before + 1, "the compiled route must be one graph"
    assert torch.equal(g_eager.get_state(), g_compiled.get_state()), "the routes drew differently"
    return eager, compiled


def ops_drawn(x: torch.Tensor, seed: int) -> set[int]:
    draws = TrainTransform().draw(x, torch.Generator().manual_seed(seed))
    return {int(op) for step in draws.steps for op in step.op}


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(dtype=torch.float32, channels_last=False),
        dict(dtype=torch.float32, channels_last=True, num_ops=1, magnitude=27),
        dict(dtype=torch.bfloat16, channels_last=True),
        dict(dtype=torch.float32, randaugment=False),
        dict(dtype=torch.float32, padding=0, num_ops=3),
    ],
    ids=["fp32-nchw", "fp32-cl-1op-m27", "bf16-cl", "no-randaugment", "no-crop-3ops"],
)
def test_compiled_route_gives_the_eager_bytes_aot_eager(kwargs: dict) -> None:
    x = images(64)
    assert len(ops_drawn(x, seed=0)) == len(ra.RAND_AUGMENT_OPS)  # every op occurs in the batch
    eager, compiled = run_both(x, "aot_eager", **kwargs)
    assert compiled.dtype == eager.dtype and compiled.stride() == eager.stride()
    assert torch.equal(eager, compiled)


def test_compiled_route_single_channel_aot_eager() -> None:
    x = images(32, channels=1, seed=1)
    eager, compiled = run_both(x, "aot_eager", seed=3, mean=(0.5,), std=(0.25,))
    assert torch.equal(eager, compiled)


@pytest.mark.slow
def test_compiled_route_gives_the_eager_bytes_inductor() -> None:
    """Inductor's generated C++ (no FMA contraction) against the eager kernels (fused adds)."""
    x = images(48, seed=2)
    assert len(ops_drawn(x, seed=5)) == len(ra.RAND_AUGMENT_OPS)
    eager, compiled = run_both(x, "inductor", seed=5, dtype=torch.float32, channels_last=True)
    assert torch.equal(eager, compiled)
    # A second batch reuses the graph (static shapes) and still agrees.
    eager, compiled = run_both(
        images(48, seed=3), "inductor", seed=6, fresh=False, dtype=torch.float32, channels_last=True
    )
    assert torch.equal(eager, compiled)


def test_route_choice() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert not TrainTransform().uses_compiled(cpu) and TrainTransform().uses_compiled(cuda)
    assert TrainTransform(compiled=True).uses_compiled(cpu)
    assert not TrainTransform(compiled=False).uses_compiled(cuda)


def test_draws_are_made_in_the_eager_functions_order() -> None:
    x = images(16)
    draws = TrainTransform().draw(x, torch.Generator().manual_seed(4))
    assert isinstance(draws, TrainDraws) and len(draws.steps) == 2
    g = torch.Generator().manual_seed(4)
    flip_u = torch.rand(16, generator=g)
    offsets = torch.randint(0, 9, (16, 2), generator=g)
    assert torch.equal(draws.flip_u, flip_u) and torch.equal(draws.offsets, offsets)
    for step in draws.steps:
        assert torch.equal(step.op, torch.randint(0, 14, (16,), generator=g))
        assert torch.equal(step.sign_u, torch.rand(16, generator=g))


def test_fixed_shape_route_reads_nothing_on_the_host(monkeypatch) -> None:
    """The route CUDA runs (fixed shapes, no subsets) never reads a tensor value on the host once
    its tables are cached: no magnitude-table rebuild, no ``.item()``/``.tolist()``/``bool()``."""
    x = images(32)
    t = TrainTransform(compiled=False)
    monkeypatch.setattr(tr, "_use_subsets", lambda device: False)
    t(x, generator=torch.Generator().manual_seed(0))  # builds and caches the tables
    hits = ra.step_tables.cache_info().hits

    def host_read(*args, **kwargs):
        raise AssertionError("host read in the per-batch path")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    out = t(x, generator=torch.Generator().manual_seed(1))
    monkeypatch.undo()
    assert ra.step_tables.cache_info().hits == hits + 1
    assert torch.equal(out, t(x, generator=torch.Generator().manual_seed(1)))  # subsets route: same bytes


def test_affine_nearest_is_a_pixel_gather_matching_torchvision() -> None:
    import torchvision.transforms.v2.functional as TF

    x = images(4, seed=7)
    angle = torch.tensor([10.0, -20.0, 0.0, 33.0], dtype=torch.float64)
    zero = torch.zeros(4, dtype=torch.float64)
    # torchvision's rotate uses the matrix of -angle
    out = affine_nearest(x, inverse_affine_theta(-angle, zero, zero, zero, zero))
    ref = torch.cat([TF.rotate(x[i : i + 1], float(a), TF.InterpolationMode.NEAREST) for i, a in enumerate(angle)])
    assert torch.equal(out, ref)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_routes_agree_with_the_cpu_reference() -> None:
    """Draws made once on the CPU, applied by the CPU eager route and both CUDA routes.

    Geometric ops, crop, flip, posterize, solarize and equalize are integer work (exact on every
    device); the float colour ops may differ by one level where a CUDA kernel rounds differently,
    which after normalisation is at most 1 / (255 * std) apart.
    """
    x = images(256, seed=8)
    t = TrainTransform(dtype=torch.float32, channels_last=True)
    draws = t.draw(x, torch.Generator().manual_seed(9))
    ref = tr._train_pipeline(x, draws, t._tables(x), t.scale, t.shift, t.padding, t.dtype, True, True)
    xc = x.cuda()
    to_cuda = TrainDraws(
        draws.flip_u.cuda(), draws.offsets.cuda(), [ra.StepDraw(s.op.cuda(), s.sign_u.cuda()) for s in draws.steps]
    )
    tc = t.cuda()
    args = (xc, to_cuda, tc._tables(xc), tc.scale, tc.shift, t.padding, t.dtype, True, False)
    one_level = 1.0 / (255.0 * min(tr.IMAGENET_STD)) + 1e-5
    for out in (tr._train_pipeline(*args), tr._compiled_pipeline("inductor")(*args)):
        diff = (out.cpu() - ref).abs()
        assert diff.max().item() <= one_level
        assert (diff == 0).float().mean().item() >= 0.999
