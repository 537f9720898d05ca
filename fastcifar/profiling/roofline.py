"""The roofline floor of a training step, computed from a meta-device trace (no GPU needed).

From the aten ops of one step (:mod:`fastcifar.profiling.optrace`) this module derives:

- **FLOPs**: convolutions and matrix products (:mod:`fastcifar.models.flops`);
- **bytes, unfused**: what every aten op reads plus what it writes, as eager mode runs them;
- **bytes, fused bound**: a lower bound under ideal fusion (:func:`fused_bytes`, rules below);
- **kernel launches** of the eager step (one per aten op that launches work; a convolution's
  backward one per gradient it computes; ``_foreach_*`` / ``_fused_*`` ops as
  ``multi_tensor_apply`` splits them);
- **floors**, given the peaks (:class:`Peaks`): compute (FLOPs / tensor-core peak), memory
  (bytes / bandwidth, unfused and fused), per-op ``max(compute, memory)`` summed over the unfused
  ops, launches x launch cost. The step's floor (:attr:`Roofline.floor_ms`) is
  ``max(compute, fused memory)``: what no implementation can beat on that device.

The ideal-fusion rules (:func:`fused_bytes`):

1. *Anchors* read and write memory: convolutions and matrix products (forward and backward)
   and the optimizer step. Each reads the tensors it needs once and writes its outputs once.
2. Every other op is fused into its neighbours: element-wise ops, activations, BN's normalise,
   casts, the gradient sums of tensors used several times, and concatenation (its consumer reads
   the pieces where they are: concatenation is free). An anchor reading such an op's result
   reads the tensors that result was computed from instead (its *sources*, followed back through
   the fused ops to anchor outputs and leaf tensors: parameters, images, optimizer state); a
   view or slice reads its share of its base.
3. Reductions (BN statistics and BN-backward sums, pooling, softmax's denominators: an op whose
   output is smaller than its largest input) are computed in the epilogue of whatever produced
   their input, for free; their small results are written once and read by their consumers.

Rule 2 allows recomputation (a fused backward recomputes BN + ReLU from the saved convolution
output), and rule 3 ignores that a reduction must finish before its consumers start: the bound
is below anything achievable, which is what a floor is for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fastcifar.profiling.optrace import Op, Trace, trace_eval_step, trace_train_step

# H200 SXM datasheet figures (dense, no sparsity).
H200_BF16_TFLOP_S = 989.0
H200_TF32_TFLOP_S = 494.0  # fp32 convolutions run on TF32 tensor cores (cuDNN's default in PyTorch)
H200_HBM_TB_S = 4.8
LAUNCH_US = 3.0

# The study's run: 30 epochs of 195 steps of 256 (drop_last) and the 10,000 test images per epoch.
EPOCHS = 30
TRAIN_IMAGES = 50_000
TEST_IMAGES = 10_000
TRAIN_BATCH = 256
EVAL_BATCH = 512


@dataclass(frozen=True)
class Peaks:
    """The device figures floors are computed against; ``source`` says where they come from."""

    tflop_per_s: float = H200_BF16_TFLOP_S
    tb_per_s: float = H200_HBM_TB_S
    launch_us: float = LAUNCH_US
    source: str = "H200 datasheet (989 TFLOP/s dense bf16, 4.8 TB/s HBM3e), 3 us per launch"

    @classmethod
    def measured(cls, matmul_tflop_per_s: float, copy_gb_per_s: float, launch_us: float = LAUNCH_US) -> Peaks:
        """Peaks from the GPU suite's measured bf16 matmul rate and copy bandwidth (read + write)."""
        return cls(
            matmul_tflop_per_s,
            copy_gb_per_s / 1000,
            launch_us,
            f"measured: {matmul_tflop_per_s:.1f} TFLOP/s matmul, {copy_gb_per_s:.0f} GB/s copy; "
            f"{launch_us:g} us per launch",
        )

    def for_precision(self, amp: bool) -> float:
        """Tensor-core TFLOP/s for a bf16 (``amp``) or fp32 (TF32) step: TF32 runs at half the bf16 rate."""
        return self.tflop_per_s if amp else self.tflop_per_s * H200_TF32_TFLOP_S / H200_BF16_TFLOP_S


# --- categories ------------------------------------------------------------------------------

BN = "batch norm"
ACTIVATION = "activation"
ELEMENTWISE_FORWARD = "elementwise, forward (SK select / fuse, gates)"
GRADIENT_SUMS = "gradient sums (adds in backward)"
ELEMENTWISE_BACKWARD = "elementwise, backward"
CONCAT = "concatenation copies"
CONV_1X1 = "1x1 conv"
CONV_3X3 = "3x3 conv"
CONV_GROUPED = "grouped / dilated conv (SK branches)"
CONV_DEPTHWISE = "depthwise conv"
CONV_OTHER = "other conv (stem, 5x5, 7x7)"
ATTENTION_FC = "attention fc (conv on pooled 1x1)"
LINEAR = "linear / matmul"
POOL = "pooling / means"
SOFTMAX = "softmax (SK attention)"
CAST = "casts / layout copies"
LOSS = "loss"
OPTIMIZER = "optimizer"

_BN = ("native_batch_norm", "_native_batch_norm_legit", "batch_norm", "cudnn_batch_norm", "miopen_batch_norm")
_ACTIVATION = (
    "relu",
    "threshold_backward",
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "sigmoid",
    "gelu",
    "silu",
    "tanh",
    "leaky_relu",
    "elu",
    "clamp",
)
_POOL = ("avg_pool", "max_pool", "adaptive_avg_pool", "adaptive_max_pool", "mean", "amax", "max", "amin")
_CAST = ("_to_copy", "clone", "copy_", "contiguous")
_LOSS = ("_log_softmax", "nll_loss", "log_softmax")
_CONCAT = ("cat", "stack", "slice_backward", "select_backward", "index_select", "narrow_copy")


def category(op: Op) -> str:
    """The roofline category of one op (by aten name; convolutions by their kernel shape)."""
    name = op.packet
    if op.phase == "optimizer":
        return OPTIMIZER
    if op.conv is not None:
        conv = op.conv
        if all(s == 1 for s in conv["out_hw"]):
            return ATTENTION_FC
        if conv["depthwise"]:
            return CONV_DEPTHWISE
        if conv["groups"] > 1 or any(d > 1 for d in conv["dilation"]):
            return CONV_GROUPED
        if all(k == 1 for k in conv["kernel"]):
            return CONV_1X1
        if all(k == 3 for k in conv["kernel"]):
            return CONV_3X3
        return CONV_OTHER
    if op.flops:
        return LINEAR
    if name.startswith(_BN):
        return BN
    if name.startswith(_LOSS):
        return LOSS
    if name.startswith(("_softmax", "softmax")):
        return SOFTMAX
    if name.startswith(_ACTIVATION):
        return ACTIVATION
    if name.startswith(_POOL):
        return POOL
    if name.startswith(_CONCAT):
        return CONCAT
    if name.startswith(_CAST):
        return CAST
    if op.phase == "forward":
        return ELEMENTWISE_FORWARD
    return GRADIENT_SUMS if name in ("add", "add_") else ELEMENTWISE_BACKWARD


# --- the fused bound -------------------------------------------------------------------------


def _is_anchor(op: Op) -> bool:
    return op.flops > 0 or op.phase == "optimizer"


def fused_bytes(trace: Trace) -> int:
    """Bytes of ``trace``'s step under ideal fusion (the module docstring's rules)."""
    producer: dict[int, Op] = {w: op for op in trace.ops for w in op.writes}
    sources: dict[int, dict[int, float]] = {}  # version -> {source version: bytes read of it}

    def sources_of(version: int) -> dict[int, float]:
        """What reading ``version`` costs under fusion: the materialised tensors it is computed from."""
        known = sources.get(version)
        if known is not None:
            return known
        op = producer.get(version)
        size = trace.nbytes[version]
        if op is None or _is_anchor(op) or _is_reduction(trace, op, size):
            result = {version: float(size)}
        else:
            result = {}
            for read in op.reads:
                share = min(1.0, size / max(trace.nbytes[read], 1)) if op.view else 1.0
                for source, nbytes in sources_of(read).items():
                    result[source] = max(result.get(source, 0.0), nbytes * share)
        sources[version] = result
        return result

    # Sources are resolved in trace order, so the recursion depth stays at one op's fan-in.
    total = 0.0
    for op in trace.ops:
        for version in op.writes:
            sources_of(version)
        if _is_anchor(op):
            reads: dict[int, float] = {}
            for version in op.reads:
                for source, nbytes in sources_of(version).items():
                    reads[source] = max(reads.get(source, 0.0), nbytes)
            total += sum(reads.values()) + sum(trace.nbytes[w] for w in set(op.writes))
        else:  # a reduction's result is written once
            total += sum(trace.nbytes[w] for w in set(op.writes) if _is_reduction(trace, op, trace.nbytes[w]))
    return int(total)


def _is_reduction(trace: Trace, op: Op, out_bytes: int) -> bool:
    """A non-view op whose output is smaller than its largest input (its result is materialised)."""
    if op.view or not op.reads:
        return False
    return out_bytes < max(trace.nbytes[r] for r in op.reads)


# --- figures -------------------------------------------------------------------------------------


@dataclass
class StepCost:
    """One traced step's totals (per step, for its batch)."""

    batch_size: int
    flops: int
    bytes_unfused: int
    bytes_fused: int
    launches: int
    per_op_ms: float  # sum over unfused ops of max(compute, memory), at the peaks it was made with
    categories: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def of(cls, trace: Trace, batch_size: int, tflop_per_s: float, tb_per_s: float) -> StepCost:
        per_op = 0.0
        categories: dict[str, dict[str, float]] = {}
        for op in trace.ops:
            nbytes = trace.op_bytes(op)
            per_op += max(op.flops / (tflop_per_s * 1e12), nbytes / (tb_per_s * 1e12))
            row = categories.setdefault(category(op), {"ops": 0, "launches": 0, "flops": 0, "bytes": 0})
            row["ops"] += 0 if op.view else 1
            row["launches"] += op.launches
            row["flops"] += op.flops
            row["bytes"] += nbytes
        return cls(
            batch_size,
            trace.flops,
            trace.bytes_unfused,
            fused_bytes(trace),
            trace.launches,
            1000 * per_op,
            dict(sorted(categories.items(), key=lambda kv: -kv[1]["bytes"])),
        )

    def floors_ms(self, tflop_per_s: float, tb_per_s: float, launch_us: float) -> dict[str, float]:
        """compute, memory (unfused and fused), per-op, launches, and the floor (max of compute and fused memory)."""
        compute = 1000 * self.flops / (tflop_per_s * 1e12)
        fused = 1000 * self.bytes_fused / (tb_per_s * 1e12)
        return {
            "compute_ms": compute,
            "memory_unfused_ms": 1000 * self.bytes_unfused / (tb_per_s * 1e12),
            "memory_fused_ms": fused,
            "per_op_ms": self.per_op_ms,
            "launch_ms": self.launches * launch_us / 1000,
            "floor_ms": max(compute, fused),
        }


@dataclass
class Roofline:
    """The floor of one model in one precision: a training step and an evaluation batch."""

    model: str
    amp: bool
    channels_last: bool
    peaks: Peaks
    train: StepCost
    eval: StepCost

    @property
    def tflop_per_s(self) -> float:
        return self.peaks.for_precision(self.amp)

    def train_floors(self) -> dict[str, float]:
        return self.train.floors_ms(self.tflop_per_s, self.peaks.tb_per_s, self.peaks.launch_us)

    @property
    def floor_ms(self) -> float:
        """The training step's floor: max(compute, memory under ideal fusion)."""
        return self.train_floors()["floor_ms"]

    def run_seconds(self, epochs: int = EPOCHS) -> dict[str, float]:
        """The floor of ``epochs`` epochs (``TRAIN_IMAGES // batch`` steps and the test set each).

        ``floor`` is max(compute, fused memory) per step; ``eager_launches`` the launch cost of
        the same epochs in eager mode (the eval batches rounded up).
        """
        steps = TRAIN_IMAGES // self.train.batch_size
        eval_batches = TEST_IMAGES / self.eval.batch_size  # the floor scales with images
        ev = self.eval.floors_ms(self.tflop_per_s, self.peaks.tb_per_s, self.peaks.launch_us)
        tr = self.train_floors()
        launches = steps * self.train.launches + math.ceil(eval_batches) * self.eval.launches
        return {
            "floor": epochs * (steps * tr["floor_ms"] + eval_batches * ev["floor_ms"]) / 1000,
            "eager_launches": epochs * launches * self.peaks.launch_us / 1e6,
        }

    def as_json(self) -> dict[str, Any]:
        """The figures ``bench.roofline`` records per model and precision."""
        floors = self.train_floors()
        eval_floors = self.eval.floors_ms(self.tflop_per_s, self.peaks.tb_per_s, self.peaks.launch_us)
        run = self.run_seconds()
        return {
            "amp": "bf16" if self.amp else "off",
            "channels_last": self.channels_last,
            "batch_size": self.train.batch_size,
            "peak_tflop_per_s": self.tflop_per_s,
            "train_tflop_per_step": self.train.flops / 1e12,
            "bytes_per_step_unfused": self.train.bytes_unfused,
            "bytes_per_step_fused_bound": self.train.bytes_fused,
            "eager_kernels_per_step": self.train.launches,
            **{f"{name}_per_step": value for name, value in floors.items()},
            "floor_ms_per_step": floors["floor_ms"],
            "bound_by": "compute" if floors["compute_ms"] >= floors["memory_fused_ms"] else "memory",
            "floor_seconds_30_epochs": run["floor"],
            "eager_launch_seconds_30_epochs": run["eager_launches"],
            "eval": {
                "batch_size": self.eval.batch_size,
                "tflop_per_batch": self.eval.flops / 1e12,
                "bytes_per_batch_unfused": self.eval.bytes_unfused,
                "bytes_per_batch_fused_bound": self.eval.bytes_fused,
                "eager_kernels_per_batch": self.eval.launches,
                "floor_ms_per_batch": eval_floors["floor_ms"],
                "launch_ms_per_batch": eval_floors["launch_ms"],
                "per_op_ms_per_batch": eval_floors["per_op_ms"],
            },
            "categories": self.train.categories,
        }


def roofline(
    model: str,
    *,
    amp: bool,
    channels_last: bool | None = None,
    batch_size: int = TRAIN_BATCH,
    eval_batch_size: int = EVAL_BATCH,
    peaks: Peaks | None = None,
    overrides: dict[str, Any] | None = None,
) -> Roofline:
    """Trace registered ``model`` (with ``overrides``) on meta and compute its roofline.

    ``amp``: bf16 autocast (the fast variant) or fp32 (the study's baseline); ``channels_last``
    defaults to ``amp`` (the fast variant uses both, the baseline neither).
    """
    from fastcifar.models.flops import meta_model

    peaks = peaks or Peaks()
    channels_last = amp if channels_last is None else channels_last
    tflop, tb = peaks.for_precision(amp), peaks.tb_per_s
    net = meta_model(model, **(overrides or {}))
    train = StepCost.of(trace_train_step(net, batch_size, amp=amp, channels_last=channels_last), batch_size, tflop, tb)
    evaluation = trace_eval_step(net, eval_batch_size, amp=amp, channels_last=channels_last)
    return Roofline(model, amp, channels_last, peaks, train, StepCost.of(evaluation, eval_batch_size, tflop, tb))


def categories_table(rows: Iterable[tuple[str, dict[str, float]]], tb_per_s: float) -> list[list[str]]:
    """Markdown rows (category, ops, launches, GB, share, memory ms) of a category breakdown."""
    rows = list(rows)
    total = sum(r["bytes"] for _, r in rows) or 1
    return [
        [
            name,
            f"{int(r['ops']):,}",
            f"{int(r['launches']):,}",
            f"{r['bytes'] / 1e9:.2f}",
            f"{100 * r['bytes'] / total:.1f}%",
            f"{r['flops'] / 1e12:.3f}",
            f"{1000 * r['bytes'] / (tb_per_s * 1e12):.2f}",
        ]
        for name, r in rows
    ]
