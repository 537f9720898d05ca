"""kernels.sk_select / kernels.sk_fuse_mean: Triton (interpreter on CPU, compiled on CUDA) vs a float64 reference."""

import zlib

import pytest
import torch
from kernel_checks import CUDA_OK, DEVICES, DTYPES, LAYOUTS, assert_close, poisoned_outputs  # noqa: F401 (autouse fixture)

import fastcifar.kernels as kernels
from fastcifar.kernels import _dispatch, _runtime

# (N, M, C, H, W): C off every power of two, a 1x1 plane, N = 1, odd H != W, M from 1 to 4; and C % 8 == 0
# (the aligned, unmasked-channel specialisations the models use: 40 -> 8-channel blocks) with M = 3
# (a padded branch slot) and a plane that is no multiple of the spatial block.
SHAPES = [(2, 2, 37, 5, 7), (1, 3, 5, 1, 1), (3, 4, 19, 9, 9), (2, 1, 8, 3, 2), (2, 3, 40, 5, 5), (2, 2, 16, 8, 8)]


def make_branches(shape, dtype, layout, device, generator):
    N, M, C, H, W = shape
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    branches = [
        torch.randn(N, C, H, W, generator=generator).to(device=device, dtype=dtype, memory_format=fmt) for _ in range(M)
    ]
    logits = (2 * torch.randn(N, M, C, generator=generator)).to(device=device, dtype=dtype)
    return branches, logits


def float64_select(branches, logits, grad):
    """Reference output and gradients in float64, from the same (rounded) inputs."""
    feats = [f.detach().double().requires_grad_() for f in branches]
    lg = logits.detach().double().requires_grad_()
    out = kernels.sk_select_reference(feats, lg)
    out.backward(grad.double())
    return out.detach(), [f.grad for f in feats], lg.grad


def test_cpu_tensors_take_the_triton_path_here():
    # The suite runs with TRITON_INTERPRET=1: a CPU tensor must reach the kernels, not the reference.
    assert kernels.INTERPRET and kernels.use_triton(torch.empty(1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sk_select_values_and_gradients(device, shape, layout, dtype):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{shape}{layout}{dtype}".encode()))
    branches, logits = make_branches(shape, dtype, layout, device, gen)
    for t in (*branches, logits):
        t.requires_grad_()

    out = kernels.sk_select(branches, logits)
    grad = torch.randn(out.shape, generator=gen).to(device=device, dtype=dtype)
    out.backward(grad)

    ref_out, ref_dfeats, ref_dlogits = float64_select(branches, logits, grad)
    assert_close(out, ref_out, dtype, "output")
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    for m, (f, ref) in enumerate(zip(branches, ref_dfeats, strict=True)):
        assert_close(f.grad, ref, dtype, f"dF_{m}")
    assert_close(logits.grad, ref_dlogits, dtype, "dlogits")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_sk_select_stacked_and_strided_inputs(device, dtype):
    """A (N, M, C, H, W) tensor, a non-dense channel slice and fp32 logits with bf16 branches."""
    gen = torch.Generator().manual_seed(7)
    N, M, C, H, W = 2, 2, 11, 4, 6
    stacked = torch.randn(N, M, C, H, W, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    wide = torch.randn(N, 2 * C, H, W, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    logits = torch.randn(N, M, C, generator=gen).to(device)
    logits_t = logits.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()  # non-default strides

    out_stacked = kernels.sk_select(stacked, logits_t)
    sliced = [wide[:, :C], wide[:, C:]]  # strided views, the channel stride skips half the storage
    out_sliced = kernels.sk_select(sliced, logits_t)
    grad = torch.randn(N, C, H, W, generator=gen).to(device=device, dtype=dtype)
    (out_stacked * grad).sum().backward()
    (out_sliced * grad).sum().backward()

    ref, ref_df, ref_dl = float64_select(list(stacked.unbind(1)), logits_t, grad)
    assert_close(out_stacked, ref, dtype, "stacked output")
    assert_close(stacked.grad, torch.stack(ref_df, 1), dtype, "stacked grad")
    ref2, ref_df2, ref_dl2 = float64_select(sliced, logits_t, grad)
    assert_close(out_sliced, ref2, dtype, "sliced output")
    assert_close(wide.grad, torch.cat(ref_df2, 1), dtype, "sliced grad")
    assert_close(logits_t.grad, ref_dl + ref_dl2, torch.float32, "logits grad")


@pytest.mark.parametrize("device", DEVICES)
def test_sk_select_branches_with_different_strides(device):
    """One NCHW and one channels_last branch: the kernels take one stride set, so the host copies once."""
    gen = torch.Generator().manual_seed(9)
    f0 = torch.randn(2, 16, 4, 6, generator=gen).to(device).requires_grad_()
    f1 = torch.randn(2, 16, 4, 6, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
    f1.requires_grad_()
    logits = torch.randn(2, 2, 16, generator=gen).to(device).requires_grad_()
    out = kernels.sk_select([f0, f1], logits)
    grad = torch.randn(out.shape, generator=gen).to(device)
    out.backward(grad)
    ref, ref_df, ref_dl = float64_select([f0, f1], logits, grad)
    assert_close(out, ref, torch.float32, "output")
    assert_close(f0.grad, ref_df[0], torch.float32, "dF_0")
    assert_close(f1.grad, ref_df[1], torch.float32, "dF_1")
    assert_close(logits.grad, ref_dl, torch.float32, "dlogits")
    s = kernels.sk_fuse_mean([f0, f1])
    assert_close(s, kernels.sk_fuse_mean_reference([f0.detach().double(), f1.detach().double()]), torch.float32, "s")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 2, 21, 7, 5), (2, 3, 16, 8, 8)], ids=lambda s: "x".join(map(str, s)))
def test_sk_fuse_mean(device, layout, dtype, shape):
    gen = torch.Generator().manual_seed(11)
    branches, _ = make_branches(shape, dtype, layout, device, gen)
    for f in branches:
        f.requires_grad_()
    s = kernels.sk_fuse_mean(branches)
    grad = torch.randn(s.shape, generator=gen).to(device=device, dtype=dtype)
    s.backward(grad)

    feats = [f.detach().double().requires_grad_() for f in branches]
    ref = kernels.sk_fuse_mean_reference(feats)
    ref.backward(grad.double())
    assert_close(s, ref.detach(), dtype, "fuse mean")
    for f, r in zip(branches, feats, strict=True):
        assert_close(f.grad, r.grad, dtype, "fuse mean grad")


def test_cpu_without_interpreter_uses_the_reference(monkeypatch):
    calls = []

    def recording_reference(branches, logits):
        calls.append(len(branches))
        return kernels.sk_select_reference(branches, logits)

    monkeypatch.setattr(_runtime, "INTERPRET", False)
    monkeypatch.setattr(_dispatch, "sk_select_reference", recording_reference)
    gen = torch.Generator().manual_seed(3)
    branches, logits = make_branches((1, 2, 3, 2, 2), torch.float32, "nchw", "cpu", gen)
    out = kernels.sk_select(branches, logits)
    assert calls == [2]
    torch.testing.assert_close(out, kernels.sk_select_reference(branches, logits))


@pytest.mark.parametrize(
    "num_branches, logits_shape",
    [(5, (1, 5, 3)), (2, (1, 3, 3)), (2, (1, 2, 4))],
    ids=["too-many-branches", "wrong-M", "wrong-C"],
)
def test_sk_select_rejects_bad_shapes(num_branches, logits_shape):
    branches = [torch.randn(1, 3, 2, 2) for _ in range(num_branches)]
    with pytest.raises(ValueError, match="sk_select"):
        kernels.sk_select(branches, torch.randn(logits_shape))
