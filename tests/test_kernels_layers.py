"""The model layers' kernel modules: SKSelect and ZPool (parameter-free, hookable by type) and SKConv's
fused GAP of the branch sum under impl="triton" (interpreted Triton on CPU)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastcifar.kernels as kernels
from fastcifar.models.layers import SKConv, SKSelect, TripletAttention, ZPool, sk_select_torch, zpool_torch


class FullSizeAdds(TorchDispatchMode):
    """Counts aten.add calls whose result has a given shape (the branch sum (N, C, H, W) in SKConv)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape, self.count = shape, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor) and tuple(out.shape) == self.shape:
            self.count += 1
        return out


def test_kernel_modules_have_no_state_and_reject_unknown_impls():
    assert list(SKSelect("triton").state_dict()) == [] and list(ZPool(2, "triton").state_dict()) == []
    for make in (lambda: SKSelect("cuda"), lambda: ZPool(1, "cuda")):
        with pytest.raises(Exception, match="unknown impl"):
            make()


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_modules_compute_the_references(impl):
    gen = torch.Generator().manual_seed(0)
    branches = [torch.randn(2, 8, 3, 5, generator=gen) for _ in range(3)]
    logits = torch.randn(2, 3, 8, generator=gen)
    torch.testing.assert_close(SKSelect(impl)(branches, logits), sk_select_torch(branches, logits))
    x = torch.randn(2, 6, 5, 7, generator=gen)
    for dim in (1, 2, 3):
        torch.testing.assert_close(ZPool(dim, impl)(x), zpool_torch(x, dim))


def test_forward_hooks_find_the_kernel_steps_by_type():
    """What the profiler relies on: one SKSelect call per SKConv, one ZPool call per Triplet branch."""
    calls: list[tuple[str, object]] = []
    model = torch.nn.Sequential(SKConv(8, groups=4, impl="torch"), TripletAttention(impl="torch"))
    for m in model.modules():
        if isinstance(m, (SKSelect, ZPool)):
            m.register_forward_hook(
                lambda mod, args, out: calls.append((type(mod).__name__, getattr(mod, "dim", None)))
            )
    model(torch.randn(2, 8, 6, 5))
    assert sorted(calls, key=str) == sorted([("SKSelect", None), ("ZPool", 2), ("ZPool", 3), ("ZPool", 1)], key=str)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_skconv_triton_matches_torch_in_values_and_gradients(layout):
    """Training mode (batch statistics), so the fused GAP's gradient flows through BN into the branches."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    torch.manual_seed(0)
    ref = SKConv(16, groups=4, reduction=4, min_dim=8, impl="torch")
    fused = SKConv(16, groups=4, reduction=4, min_dim=8, impl="triton")
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(3, 16, 6, 5).contiguous(memory_format=fmt)
    grad = torch.randn(3, 16, 6, 5)
    out_ref, out_fused = ref(x), fused(x)
    torch.testing.assert_close(out_fused, out_ref, rtol=1e-4, atol=1e-5)
    out_ref.backward(grad)
    out_fused.backward(grad)
    for (name, p_ref), p_fused in zip(ref.named_parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(p_fused.grad, p_ref.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_skconv_triton_never_materialises_the_branch_sum(monkeypatch):
    calls = []
    original = kernels.sk_fuse_mean

    def recording_fuse_mean(branches):
        calls.append(len(branches))
        return original(branches)

    monkeypatch.setattr(kernels, "sk_fuse_mean", recording_fuse_mean)
    x = torch.randn(2, 8, 5, 5)
    # Full-size adds: torch builds the branch sum (1) and sums the weighted branches (1, M = 2);
    # triton does both inside its kernels.
    for impl, expected_adds in (("torch", 2), ("triton", 0)):
        layer = SKConv(8, groups=4, impl=impl)
        with torch.no_grad(), FullSizeAdds((2, 8, 5, 5)) as adds:
            layer(x)
        assert adds.count == expected_adds, impl
    assert calls == [2]
