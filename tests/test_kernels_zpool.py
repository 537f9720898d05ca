"""kernels.zpool: Triton (interpreter on CPU, compiled on CUDA) vs a float64 reference, incl. the tie rule."""

import zlib

import pytest
import torch
from kernel_checks import CUDA_OK, DEVICES, DTYPES, LAYOUTS, assert_close, poisoned_outputs  # noqa: F401 (autouse fixture)

import fastcifar.kernels as kernels
from fastcifar.kernels import _dispatch, _runtime

# C off every power of two, H != W, a 1x1 plane with N = 1 (pooling a size-1 dim).
SHAPES = [(2, 37, 5, 7), (1, 5, 1, 1), (3, 19, 9, 9)]


def float64_zpool(x: torch.Tensor, dim: int, grad: torch.Tensor):
    xd = x.detach().double().requires_grad_()
    out = kernels.zpool_reference(xd, dim)
    out.backward(grad.double())
    return out.detach(), xd.grad


def check_zpool(x: torch.Tensor, dim: int, gen: torch.Generator) -> torch.Tensor:
    x = x.detach().requires_grad_()
    out = kernels.zpool(x, dim)
    grad = torch.randn(out.shape, generator=gen).to(device=x.device, dtype=x.dtype)
    out.backward(grad)
    ref, ref_dx = float64_zpool(x, dim, grad)
    assert_close(out, ref, x.dtype, f"zpool dim={dim}")
    assert_close(x.grad, ref_dx, x.dtype, f"zpool grad dim={dim}")
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zpool_values_and_gradients(device, dim, shape, layout, dtype):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{shape}{layout}{dtype}{dim}".encode()))
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype, memory_format=fmt)
    out = check_zpool(x, dim, gen)
    expected_shape = list(shape)
    expected_shape[dim] = 2
    assert list(out.shape) == expected_shape
    if layout == "channels_last" and x.shape[1] > 1 and x.shape[2] * x.shape[3] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
def test_zpool_negative_dims_views_and_long_pools(device):
    """Negative dims, non-dense views (a permuted and a sliced tensor) and a pooled size above int8's range."""
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(2, 6, 7, 12, generator=gen).to(device)
    permuted = base.permute(0, 3, 1, 2)  # (2, 12, 6, 7) with W-major strides
    sliced = base[:, 1:, ::2, 3:]  # gaps in every dim
    for x, dim in [(permuted, -3), (permuted, -1), (sliced, 2), (sliced, -2)]:
        check_zpool(x, dim, gen)
    long_pool = torch.randn(1, 300, 2, 3, generator=gen).to(device)  # argmax stored as int16
    check_zpool(long_pool, 1, gen)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_zpool_ties_go_to_the_first_index(device, dtype):
    """Documented rule: the max's gradient goes to the first index of the maximum along dim."""
    gen = torch.Generator().manual_seed(13)
    # Values from {0, 1, 2}: nearly every max is tied; 150 > BLOCK_R so ties also span kernel chunks.
    x = torch.randint(0, 3, (2, 150, 3, 5), generator=gen).to(device=device, dtype=dtype)
    for dim in (1, 2, 3):
        xg = x.clone().requires_grad_()
        out = kernels.zpool(xg, dim)
        d_max = torch.randn(out.narrow(dim, 0, 1).shape, generator=gen).to(device=device, dtype=dtype)
        grad = torch.cat([d_max, torch.zeros_like(d_max)], dim)  # max part only
        out.backward(grad)
        is_max = x == x.amax(dim, keepdim=True)
        first = is_max & (is_max.cumsum(dim) == 1)  # the earliest maximum along dim, alone
        expected = torch.where(first, d_max, torch.zeros_like(x))
        assert torch.equal(xg.grad, expected), f"dim={dim}: max gradient not at the first maximum"
        if device == "cpu":  # the rule agrees with torch.max on CPU
            positions = torch.arange(x.shape[dim], device=device).view([-1 if d == dim else 1 for d in range(4)])
            first_index = (first * positions).sum(dim, keepdim=True)
            assert torch.equal(torch.max(x, dim, keepdim=True).indices, first_index)


def test_cpu_without_interpreter_uses_the_reference(monkeypatch):
    calls = []

    def recording_reference(x, dim):
        calls.append(dim)
        return kernels.zpool_reference(x, dim)

    monkeypatch.setattr(_runtime, "INTERPRET", False)
    monkeypatch.setattr(_dispatch, "zpool_reference", recording_reference)
    x = torch.randn(1, 3, 2, 2)
    out = kernels.zpool(x, -1)
    assert calls == [3]
    torch.testing.assert_close(out, kernels.zpool_reference(x, 3))


@pytest.mark.parametrize("shape, dim", [((1, 3, 2, 2), 0), ((1, 3, 2, 2), 4), ((3, 2, 2), 1)])
def test_zpool_rejects_bad_arguments(shape, dim):
    with pytest.raises(ValueError, match="zpool"):
        kernels.zpool(torch.randn(shape), dim)
