"""Kernel / operator name -> category, for GPU kernels and (on CPU traces) aten ops alike.

HolisticTraceAnalysis only splits kernels into computation / communication / memory, so the
finer categories the report needs are decided here from names, by ordered regular expressions
(first match wins). Inductor kernels carry the fused ops in their names
(``triton_poi_fused_add_relu_0``), so they are classified by their kind (pointwise, reduction,
template) after a check for normalisation.
"""

from __future__ import annotations

import re

CONV_GEMM = "conv/GEMM"
NORM = "normalisation"
ELEMENTWISE = "elementwise"
REDUCTION = "reduction"
COPY = "copy/layout"
CUSTOM = "Triton custom"
OTHER = "other"

CATEGORIES = (CONV_GEMM, NORM, ELEMENTWISE, REDUCTION, COPY, CUSTOM, OTHER)

# The project's own fused kernels and their torch.library ops (namespace ``fastcifar::``).
CUSTOM_PATTERN = re.compile(r"^(?:fastcifar|kernels)::|sk_select|sk_fuse|zpool", re.IGNORECASE)

# Autograd engine nodes and compiled-graph wrappers: their own time is framework overhead,
# even when the node is named after a convolution (``ConvolutionBackward0``).
_FRAMEWORK = re.compile(
    r"^autograd::|^torch::autograd::|[a-z0-9]Backward\d*$|^CompiledFunction|^Torch-Compiled Region|^## |^Optimizer\."
)
_INDUCTOR = re.compile(r"^(?:graph_\d+_)?(?:triton|cpp)_(poi|red|per|tem|fused)", re.IGNORECASE)
_NORM = re.compile(r"batch_?norm|layer_?norm|group_?norm|_norm_|bn_fw|bn_bw|welford", re.IGNORECASE)
_COPY = re.compile(
    r"copy|memcpy|memset|transpose|nchwtonhwc|nhwctonchw|catarray|fill|contiguous|index_?select|"
    r"aten::(?:to|cat|clone|zero_|index|gather|scatter|scatter_add_|permute|stack)$",
    re.IGNORECASE,
)
_CONV = re.compile(
    r"conv|gemm|gemv|cutlass|xmma|cudnn|cublas|nvjet|winograd|wgrad|dgrad|sm\d\d_|"
    r"aten::(?:mm|bmm|addmm|addbmm|baddbmm|matmul|linear)$",
    re.IGNORECASE,
)
_REDUCTION = re.compile(
    r"reduce|softmax|aten::sum|aten::mean|amax|amin|aten::(?:max|min)$|pool|nll_loss|cross_entropy|"
    r"norm\b|aten::std|aten::var|argmax|topk|sort|cumsum|aten::all|aten::any",
    re.IGNORECASE,
)
_FUSED_REDUCTION = re.compile(r"sum|mean|amax|amin|max|min|softmax|pool|var|std|prod|argm", re.IGNORECASE)
_ELEMENTWISE = re.compile(
    r"elementwise|vectorized|multi_tensor|foreach|aten::(?:add|sub|mul|div|relu|sigmoid|tanh|threshold|"
    r"hardswish|hardsigmoid|clamp|addcmul|addcdiv|sqrt|rsqrt|pow|neg|exp|log|where|lerp|abs|sign|"
    r"maximum|minimum|gelu|silu|reciprocal|masked_fill|bernoulli|rand|uniform|normal|floor|round|"
    r"remainder|fmod|eq|ne|lt|le|gt|ge|bitwise|logical)",
    re.IGNORECASE,
)


def categorise(name: str) -> str:
    """Return the report category of a kernel or operator ``name``."""
    if CUSTOM_PATTERN.search(name):
        return CUSTOM
    if _FRAMEWORK.search(name):
        return OTHER
    inductor = _INDUCTOR.match(name)
    if inductor:
        kind = inductor.group(1).lower()
        if kind == "tem":
            return CONV_GEMM
        if _NORM.search(name):
            return NORM
        if kind in ("red", "per"):
            return REDUCTION
        if kind == "poi":
            return ELEMENTWISE
        # cpp_fused_* (Inductor CPU) names only the fused ops: reduce if any of them reduces.
        return REDUCTION if _FUSED_REDUCTION.search(name) else ELEMENTWISE
    for category, pattern in (
        (COPY, _COPY),
        (NORM, _NORM),
        (CONV_GEMM, _CONV),
        (REDUCTION, _REDUCTION),
        (ELEMENTWISE, _ELEMENTWISE),
    ):
        if pattern.search(name):
            return category
    return OTHER


def is_inductor_kernel_range(name: str) -> bool:
    """True for the ``record_function`` ranges Inductor's CPU kernels get under kernel profiling."""
    return bool(re.match(r"^(?:graph_\d+_)?cpp_fused", name))
