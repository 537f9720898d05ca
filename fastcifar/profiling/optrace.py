"""Every aten op of one training step, traced on the meta device: no memory, no arithmetic, any size.

:func:`trace_train_step` runs what :func:`fastcifar.training.engine.train_step` runs on a GPU
(forward and cross-entropy under bf16 autocast or in fp32, backward, the fused Adam step) on meta
tensors, under a ``TorchDispatchMode`` that records each aten call as an :class:`Op`: its FLOPs
(:mod:`fastcifar.models.flops`), the tensors it reads and writes, and how many kernels it would
launch in eager mode. :func:`trace_eval_step` does the same for one evaluation batch.

Two things a meta trace cannot do by itself are reproduced:

- **CUDA autocast.** ``torch.autocast`` does nothing to meta tensors, so :class:`CudaAutocast`
  applies CUDA's bf16 policy at the level of torch functions (above autograd, as autocast does,
  so the casts appear in backward too): the ops CUDA autocasts to bf16 (convolutions, linear,
  matrix products) get bf16 inputs, the ops it runs in fp32 (softmax, sum, exp, losses, ...)
  fp32 inputs, everything else runs in the dtypes it is given.
- **The fused Adam step.** ``fused=True`` refuses meta tensors, so :func:`fused_adam_step` makes
  the two aten calls ``torch.optim.Adam(fused=True)`` makes on a GPU (``_foreach_add_`` of the
  step counters and one ``_fused_adam_``).

A tensor is known by a *version* id: an in-place write gives the written tensor a new version, so
a reader is always linked to the op that wrote what it read.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fastcifar.models.flops import op_flops

aten = torch.ops.aten

# Calls that allocate, alias or inspect without launching a kernel or moving data.
NO_KERNEL = frozenset(
    {
        "empty",
        "empty_like",
        "empty_strided",
        "new_empty",
        "new_empty_strided",
        "detach",
        "lift_fresh",
        "lift_fresh_copy",
        "_local_scalar_dense",
        "resize_",
        "set_",
        "is_same_size",
        "_has_compatible_shallow_copy_type",
        "sym_size",
        "sym_stride",
        "sym_numel",
        "sym_storage_offset",
        "record_stream",
    }
)
# In-place ops that overwrite their first argument without reading it.
WRITE_ONLY_SELF = frozenset({"copy_", "fill_", "zero_", "normal_", "uniform_", "bernoulli_", "random_"})
# multi_tensor_apply's limits (ATen/native/cuda/MultiTensorApply.cuh): tensors per launch by the
# number of tensor lists (1..5), blocks per launch and elements per block.
MTA_MAX_TENSORS = (110, 64, 48, 36, 30)
MTA_MAX_BLOCKS = 320
MTA_CHUNK = 65536


@dataclass
class Op:
    """One aten call: what it computed, read and wrote.

    ``reads`` / ``writes`` are tensor version ids (:attr:`Trace.nbytes` gives their sizes);
    ``conv`` describes a convolution (forward or backward): ``kernel``, ``groups``, ``dilation``,
    ``out_hw`` (the forward output's spatial size), ``depthwise``.
    """

    index: int
    name: str
    phase: str
    flops: int
    reads: tuple[int, ...]
    writes: tuple[int, ...]
    launches: int
    view: bool = False
    conv: dict[str, Any] | None = None

    @property
    def packet(self) -> str:
        """The op's name without overload (``convolution_backward``, ``add_``)."""
        return self.name.split(".")[0]


@dataclass
class Trace:
    """The ops of one traced step and the size of every tensor version they touched."""

    ops: list[Op] = field(default_factory=list)
    nbytes: dict[int, int] = field(default_factory=dict)

    def op_bytes(self, op: Op) -> int:
        """Bytes ``op`` reads plus bytes it writes, unfused (views move nothing)."""
        if op.view:
            return 0
        return sum(self.nbytes[t] for t in set(op.reads)) + sum(self.nbytes[t] for t in set(op.writes))

    @property
    def flops(self) -> int:
        return sum(op.flops for op in self.ops)

    @property
    def launches(self) -> int:
        return sum(op.launches for op in self.ops)

    @property
    def bytes_unfused(self) -> int:
        return sum(self.op_bytes(op) for op in self.ops)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a kernel touches reading all of ``t``: its elements, or its storage when expanded."""
    size = t.numel() * t.element_size()
    try:
        return min(size, t.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. subclasses)
        return size


def multi_tensor_launches(numels: list[int], lists: int) -> int:
    """Kernels ``multi_tensor_apply`` launches for tensors of ``numels`` elements over ``lists`` lists."""
    max_tensors = MTA_MAX_TENSORS[min(max(lists, 1), len(MTA_MAX_TENSORS)) - 1]
    launches = tensors = blocks = 0
    for numel in numels:
        tensors += 1
        chunks = max(1, math.ceil(numel / MTA_CHUNK))
        for chunk in range(chunks):
            blocks += 1
            last = chunk == chunks - 1
            if blocks == MTA_MAX_BLOCKS or (last and tensors == max_tensors):
                launches += 1
                blocks = 0
                tensors = 0 if last else 1
    return launches + (1 if blocks else 0)


@functools.cache
def _is_view(func: Any) -> bool:
    """Whether ``func`` returns an alias of an input without writing it (a view)."""
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


@functools.cache
def _write_positions(func: Any) -> tuple[tuple[int, str], ...]:
    """(position, name) of the arguments ``func`` mutates in place, from its schema (``Tensor(a!)``)."""
    return tuple(
        (i, arg.name)
        for i, arg in enumerate(func._schema.arguments)
        if arg.alias_info is not None and arg.alias_info.is_write
    )


def _written_args(func: Any, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors ``func`` mutates in place."""
    written: list[torch.Tensor] = []
    for i, name in _write_positions(func):
        value = args[i] if i < len(args) else kwargs.get(name)
        written += [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]
    return written


def _conv_detail(func: Any, args: tuple, out: Any) -> dict[str, Any] | None:
    """Kernel size, groups, dilation and output size of a convolution call (forward or backward)."""
    packet = func.overloadpacket
    if packet is aten.convolution:
        x, w, out_t = args[0], args[1], out
        dilation, groups = args[5], args[8]
    elif packet is aten.convolution_backward:
        x, w, out_t = args[1], args[2], args[0]  # grad_output has the forward output's shape
        dilation, groups = args[6], args[9]
    else:
        return None
    kernel = tuple(w.shape[2:])
    return {
        "kernel": kernel,
        "groups": int(groups),
        "dilation": tuple(int(d) for d in dilation),
        "out_hw": tuple(out_t.shape[2:]),
        "depthwise": int(groups) > 1 and int(groups) == x.shape[1],
    }


class OpRecorder(TorchDispatchMode):
    """Records every aten call into :attr:`trace`; :attr:`phase` labels what runs (forward, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.trace = Trace()
        self.phase = "forward"
        # id(tensor object) -> its current version id. Only weak references are kept: a strong one
        # would change what autograd does (AccumulateGrad copies a gradient someone else holds).
        self._version: dict[int, int] = {}
        self._watch: dict[int, weakref.ref] = {}
        self._next = 0

    def _forget(self, key: int) -> None:
        self._version.pop(key, None)
        self._watch.pop(key, None)

    def _new_version(self, t: torch.Tensor) -> int:
        self._next += 1
        key = id(t)
        self._version[key] = self._next
        if key not in self._watch:  # when t dies its id may be reused: forget it then
            self._watch[key] = weakref.ref(t, lambda _ref, key=key: self._forget(key))
        self.trace.nbytes[self._next] = tensor_bytes(t)
        return self._next

    def _current(self, t: torch.Tensor) -> int:
        version = self._version.get(id(t))
        return version if version is not None else self._new_version(t)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in NO_KERNEL:
            return out
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        written = _written_args(func, args, kwargs)
        written_ids = {id(t) for t in written}
        skip_read = written_ids if name in WRITE_ONLY_SELF else set()
        reads = tuple(self._current(t) for t in inputs if id(t) not in skip_read)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and id(t) not in written_ids]
        writes = tuple(self._new_version(t) for t in [*written, *outputs])
        view = _is_view(func)
        if view:
            launches = 0
        elif func.overloadpacket is aten.convolution_backward:
            launches = sum(bool(m) for m in args[10])
        elif name.startswith(("_foreach_", "_fused_")):
            lists = [a for a in args if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)]
            launches = multi_tensor_launches([t.numel() for t in lists[0]], len(lists)) if lists else 1
        else:
            launches = 1
        self.trace.ops.append(
            Op(
                index=len(self.trace.ops),
                name=str(func).removeprefix("aten."),
                phase=self.phase,
                flops=op_flops(func, args, kwargs, out),
                reads=reads,
                writes=writes,
                launches=launches,
                view=view,
                conv=_conv_detail(func, args, out),
            )
        )
        return out


# --- CUDA's autocast policy for bf16, applied to meta tensors ---------------------------------

# Ops CUDA autocast runs in bf16 (torch.amp "CUDA Ops that can autocast to float16"), by the
# torch function's name.
AUTOCAST_LOWER = frozenset(
    {
        "conv1d",
        "conv2d",
        "conv3d",
        "conv_transpose1d",
        "conv_transpose2d",
        "conv_transpose3d",
        "linear",
        "matmul",
        "__matmul__",
        "mm",
        "mv",
        "bmm",
        "addmm",
        "addmv",
        "addr",
        "baddbmm",
        "addbmm",
        "prelu",
        "chain_matmul",
    }
)
# Ops CUDA autocast runs in fp32 ("CUDA Ops that can autocast to float32").
AUTOCAST_FP32 = frozenset(
    {
        "__pow__",
        "__rdiv__",
        "__rpow__",
        "__rtruediv__",
        "acos",
        "asin",
        "binary_cross_entropy_with_logits",
        "cosh",
        "cosine_embedding_loss",
        "cdist",
        "cosine_similarity",
        "cross_entropy",
        "cumprod",
        "cumsum",
        "dist",
        "erfinv",
        "exp",
        "expm1",
        "group_norm",
        "hinge_embedding_loss",
        "kl_div",
        "l1_loss",
        "layer_norm",
        "log",
        "log_softmax",
        "log10",
        "log1p",
        "log2",
        "margin_ranking_loss",
        "mse_loss",
        "multilabel_margin_loss",
        "multi_margin_loss",
        "nll_loss",
        "norm",
        "normalize",
        "pdist",
        "poisson_nll_loss",
        "pow",
        "prod",
        "reciprocal",
        "rsqrt",
        "sinh",
        "smooth_l1_loss",
        "soft_margin_loss",
        "softmax",
        "softmin",
        "softplus",
        "sum",
        "renorm",
        "tan",
        "triplet_margin_loss",
    }
)


class CudaAutocast(TorchFunctionMode):
    """CUDA autocast's bf16 policy for tensors on any device (here: meta).

    Floating-point tensor arguments of :data:`AUTOCAST_LOWER` functions are cast to ``dtype``,
    those of :data:`AUTOCAST_FP32` functions to fp32; other functions run as called. As CUDA
    autocast does, a parameter's cast is made once per region and reused.
    """

    def __init__(self, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.dtype = dtype
        self._weight_casts: dict[int, torch.Tensor] = {}

    def _cast(self, value: Any, dtype: torch.dtype) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
            if dtype == self.dtype and value.is_leaf and value.requires_grad:
                cached = self._weight_casts.get(id(value))
                if cached is None:
                    cached = self._weight_casts[id(value)] = value.to(dtype)
                return cached
            return value.to(dtype)
        if isinstance(value, (list, tuple)):
            return type(value)(self._cast(v, dtype) for v in value)
        return value

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in AUTOCAST_LOWER:
            dtype: torch.dtype | None = self.dtype
        elif name in AUTOCAST_FP32:
            dtype = torch.float32
        else:
            dtype = None
        if dtype is not None:
            args = self._cast(args, dtype)
            kwargs = {k: self._cast(v, dtype) for k, v in kwargs.items()}
        return func(*args, **kwargs)


# --- the steps ------------------------------------------------------------------------------------


@contextmanager
def _phase(recorder: OpRecorder, name: str) -> Iterator[None]:
    previous, recorder.phase = recorder.phase, name
    try:
        yield
    finally:
        recorder.phase = previous


@dataclass
class AdamState:
    """What ``torch.optim.Adam(fused=True)`` keeps per parameter after its first step."""

    params: list[torch.Tensor]
    exp_avgs: list[torch.Tensor]
    exp_avg_sqs: list[torch.Tensor]
    steps: list[torch.Tensor]

    @classmethod
    def for_params(cls, params: list[torch.Tensor]) -> AdamState:
        zeros = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
        return cls(
            params, zeros, [torch.zeros_like(z) for z in zeros], [torch.zeros((), device=p.device) for p in params]
        )


def fused_adam_step(state: AdamState, lr: float = 1e-3) -> None:
    """The aten calls of one ``Adam(fused=True)`` step on a GPU: step counters, then one fused update."""
    params = [p for p in state.params if p.grad is not None]
    keep = [i for i, p in enumerate(state.params) if p.grad is not None]
    steps = [state.steps[i] for i in keep]
    with torch.no_grad():
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            params,
            [p.grad for p in params],
            [state.exp_avgs[i] for i in keep],
            [state.exp_avg_sqs[i] for i in keep],
            [],
            steps,
            lr=lr,
            beta1=0.9,
            beta2=0.999,
            weight_decay=0.0,
            eps=1e-8,
            amsgrad=False,
            maximize=False,
        )


def _inputs(batch_size: int, channels_last: bool, image_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Meta images ``(N, 3, H, W)`` (channels_last when asked, as the engine's prepare_input) and labels ``(N,)``."""
    images = torch.empty(batch_size, 3, *image_hw, device="meta")
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, torch.zeros(batch_size, dtype=torch.long, device="meta")


def _forward_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, amp: bool) -> torch.Tensor:
    if not amp:
        return torch.nn.functional.cross_entropy(model(images), labels)
    with CudaAutocast():
        return torch.nn.functional.cross_entropy(model(images), labels)


def trace_train_step(
    model: torch.nn.Module, batch_size: int, *, amp: bool, channels_last: bool, image_hw: tuple[int, int] = (32, 32)
) -> Trace:
    """The ops of one steady-state training step of ``model`` (on meta) at ``batch_size``.

    Forward and CE loss (bf16 autocast when ``amp``), backward, then the fused Adam step; the
    optimizer state exists already (as after the first step) and the gradients were set to None
    (``zero_grad(set_to_none=True)``), as in the engine's step.
    """
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    state = AdamState.for_params(params)
    images, labels = _inputs(batch_size, channels_last, image_hw)
    recorder = OpRecorder()
    with recorder:
        with _phase(recorder, "forward"):
            loss = _forward_loss(model, images, labels, amp)
        with _phase(recorder, "backward"):
            loss.backward()
        with _phase(recorder, "optimizer"):
            fused_adam_step(state)
    model.zero_grad(set_to_none=True)
    return recorder.trace


def trace_eval_step(
    model: torch.nn.Module, batch_size: int, *, amp: bool, channels_last: bool, image_hw: tuple[int, int] = (32, 32)
) -> Trace:
    """The ops of one evaluation batch: forward and CE loss in eval mode, without gradients."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    images, labels = _inputs(batch_size, channels_last, image_hw)
    recorder = OpRecorder()
    with recorder, torch.no_grad():
        _forward_loss(model, images, labels, amp)
    return recorder.trace
