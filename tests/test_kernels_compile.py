"""torch.compile(fullgraph=True) traces through kernels.sk_fuse_mean / sk_select / zpool with no graph break."""

import pytest
import torch
from torch import nn

import fastcifar.kernels as kernels
from fastcifar.kernels import _runtime


class TinySKTriplet(nn.Module):
    """SK fuse + select over two conv branches, then Z-pools along C and W: every op, forward and backward."""

    def __init__(self, channels: int = 6, use_kernels: bool = True):
        super().__init__()
        self.branch0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.branch1 = nn.Conv2d(channels, channels, 3, padding=2, dilation=2)
        self.attn = nn.Linear(channels, 2 * channels)
        if use_kernels:
            self.fuse, self.select, self.zpool = kernels.sk_fuse_mean, kernels.sk_select, kernels.zpool
        else:
            self.fuse = kernels.sk_fuse_mean_reference
            self.select = kernels.sk_select_reference
            self.zpool = kernels.zpool_reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch0(x), self.branch1(x)]
        logits = self.attn(self.fuse(branches)).view(x.shape[0], 2, -1)  # (N, M, C)
        v = self.select(branches, logits)
        return self.zpool(v, 1) * self.zpool(v, -1).mean()


def run_and_grads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    out = model(x)
    out.square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def custom_ops_in(gm: torch.fx.GraphModule) -> list[str]:
    return sorted(str(n.target) for n in gm.graph.nodes if n.op == "call_function" and "fastcifar" in str(n.target))


@pytest.mark.slow
def test_fullgraph_compile_with_interpreted_kernels():
    """On CPU (interpreter) the ops stay opaque nodes through Dynamo and AOTAutograd (aot_eager)."""
    assert _runtime.INTERPRET, "the suite runs the kernels through TRITON_INTERPRET=1"
    torch.manual_seed(0)
    model = TinySKTriplet()
    reference = TinySKTriplet(use_kernels=False)
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 6, 5, 7)

    graphs: list[torch.fx.GraphModule] = []

    def recording_aot_eager(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=recording_aot_eager)
    out, grads = run_and_grads(compiled, x)
    ref_out, ref_grads = run_and_grads(reference, x)

    assert len(graphs) == 1  # fullgraph=True already raises on a break; one graph, one compile
    assert custom_ops_in(graphs[0]) == [
        "fastcifar.sk_fuse_mean",
        "fastcifar.sk_select",
        "fastcifar.zpool",
        "fastcifar.zpool",
    ]
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available() or _runtime.INTERPRET, reason="needs CUDA and TRITON_INTERPRET unset (=0)"
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fullgraph_inductor_sees_the_triton_kernels(dtype):
    """On CUDA Inductor decomposes the ops and schedules the Triton kernels themselves."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = TinySKTriplet(channels=24).cuda().to(dtype).to(memory_format=torch.channels_last)
    reference = TinySKTriplet(channels=24, use_kernels=False).cuda().to(dtype)
    reference.load_state_dict(model.state_dict())
    x = torch.randn(4, 24, 9, 11, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    (out, grads), code = run_and_get_code(run_and_grads, compiled, x)
    ref_out, ref_grads = run_and_grads(reference, x)

    source = "\n".join(code)
    for kernel in (
        "_sk_fuse_mean_kernel",
        "_sk_select_fwd_kernel",
        "_sk_select_bwd_kernel",
        "_zpool_fwd_kernel",
        "_zpool_bwd_kernel",
    ):
        assert kernel in source, f"{kernel} not in Inductor's generated code"
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out, ref_out, rtol=tol, atol=tol)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=tol, atol=tol * max(1.0, r.abs().max().item()))


def compile_all_kernels_for_sm90() -> int:
    """Lower every kernel to an sm_90 cubin with Triton's own pipeline (TTIR -> ... -> ptxas).

    The launches are the ops' own (kernels.static builds them on meta tensors): bf16, M = 2 and 3,
    channels_last and NCHW, flat and strided planes, int8/int16 argmax. An explicit target needs no
    driver or device. Must run with TRITON_INTERPRET unset. Returns the number of kernels compiled.
    """
    from fastcifar.kernels import static

    cl, nchw = torch.channels_last, torch.contiguous_format
    launches = [
        *static.sk_launches((4, 2, 40, 8, 8), torch.bfloat16, cl).values(),
        *static.sk_launches((4, 3, 37, 5, 7), torch.bfloat16, nchw).values(),
        *static.zpool_launches((4, 80, 6, 6), 1, torch.bfloat16, cl).values(),
        *static.zpool_launches((2, 300, 3, 5), 1, torch.float32, nchw).values(),  # int16 argmax
        *static.zpool_launches((4, 64, 8, 8), 2, torch.float16, cl).values(),
    ]
    for launch in launches:
        assert static.compile_launch(launch).asm["cubin"], launch.kernel.fn.__name__
    return len(launches)


def trace_cuda_decomposition() -> list[tuple[str, int, bool]]:
    """Trace every op on fake CUDA tensors through AOT functionalisation, as Inductor receives them.

    Returns (kernel name, number of distinct tensors it writes, whether any is an input) per kernel
    node. Triton's mutation analysis lowers each kernel to TTIR; a fixed sm_90 target stands in for
    the absent driver.
    Must run with TRITON_INTERPRET unset, in a process of its own (it replaces Triton's driver).
    """
    import triton
    from torch._functorch.aot_autograd import aot_export_module
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    from torch._subclasses.fake_tensor import FakeTensorMode
    from triton.backends.compiler import GPUTarget

    class Sm90Target:
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

    triton.runtime.driver.set_active(Sm90Target())

    class AllOps(nn.Module):
        def forward(self, grad, b0, b1, logits, x, grad_pool):
            v = torch.ops.fastcifar.sk_select([b0, b1], logits)
            s = torch.ops.fastcifar.sk_fuse_mean([b0, b1])
            (d0, d1), dlogits = torch.ops.fastcifar.sk_select_backward(grad, [b0, b1], logits)
            z, argmax = torch.ops.fastcifar.zpool(x, 2)
            dx = torch.ops.fastcifar.zpool_backward(grad_pool, argmax, list(x.shape), 2, True)
            return v, s, d0 + d1, dlogits, z, dx

    with FakeTensorMode():
        cl = torch.channels_last
        feats = [
            torch.empty(2, 37, 5, 7, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=cl) for _ in range(3)
        ]
        x = torch.empty(2, 8, 5, 7, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=cl)
        args = [
            *feats,
            torch.empty(2, 2, 37, device="cuda"),
            x,
            torch.empty(2, 8, 2, 7, device="cuda", dtype=torch.bfloat16),
        ]
        gm, _ = aot_export_module(AllOps(), args, trace_joint=False)
    written = []
    for node in gm.graph.nodes:
        if "triton_kernel_wrapper" not in str(node.target):
            continue
        kernel_args = node.kwargs["kwargs"]
        targets = {kernel_args[name] for name in node.kwargs["tensors_to_clone"]}  # distinct fx nodes
        writes_inputs = any(t.op == "placeholder" for t in targets)
        written.append(
            (kernel_side_table.get_kernel(node.kwargs["kernel_idx"]).fn.__name__, len(targets), writes_inputs)
        )
    return written


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the cuda tests trace the kernels for real")
def test_cuda_decomposition_traces_without_a_gpu(call_compiling_triton):
    """What Inductor sees on CUDA: each op becomes its Triton kernel, writing its outputs and no input
    (a kernel found to write an input would make Inductor copy that input before every launch)."""
    assert call_compiling_triton(__file__, "trace_cuda_decomposition") == [
        ["_sk_select_fwd_kernel", 1, False],  # out
        ["_sk_fuse_mean_kernel", 1, False],  # s
        ["_sk_select_bwd_kernel", 3, False],  # dF_0, dF_1, dlogits
        ["_zpool_fwd_kernel", 2, False],  # out, argmax
        ["_zpool_bwd_kernel", 1, False],  # dx
    ]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the cuda tests compile the kernels for real")
def test_kernels_compile_to_sm90_cubin_without_a_gpu(call_compiling_triton):
    """The interpreter accepts code the compiler rejects: compile every kernel for real (no device needed)."""
    assert call_compiling_triton(__file__, "compile_all_kernels_for_sm90") == 12
