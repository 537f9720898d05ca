"""Trace analysis on small hand-made traces and one real CPU profile: figures checked by hand, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_checks import assert_user_error

from fastcifar.errors import UserError
from fastcifar.profiling import categories as C
from fastcifar.profiling.comparison import analyze
from fastcifar.profiling.trace import load_trace
from fastcifar.profiling.trace_metrics import variant_metrics

PROG = "fastcifar.analyze"
PID, TID, BWD_TID = 100, 100, 101


def x(name: str, ts: float, dur: float, cat: str = "cpu_op", tid: int = TID, **args) -> dict:
    return {"ph": "X", "cat": cat, "name": name, "pid": PID, "tid": tid, "ts": ts, "dur": dur, "args": args}


def mem(ts: float, allocated: int, device_type: int) -> dict:
    return {
        "ph": "i",
        "cat": "cpu_instant_event",
        "s": "t",
        "name": "[memory]",
        "pid": PID,
        "tid": TID,
        "ts": ts,
        "args": {
            "Total Allocated": allocated,
            "Total Reserved": 0,
            "Bytes": 1,
            "Device Type": device_type,
            "Device Id": 0,
        },
    }


def cpu_step(t0: float, scale: float = 1.0) -> list[dict]:
    """One 1000·scale µs training step of CPU ops (times relative to ``t0``).

    Self times per step: index_select 50 (copy), convolution 40 + mkldnn_convolution 260 (conv),
    softmax 20 (reduction), mul 40 (elementwise) inside sk_select, evaluate_function 20 (other) +
    backward mul 80 (elementwise), foreach_add 40 (elementwise). Total 550; leaf ops 6.
    """
    s = scale
    return [
        x(f"ProfilerStep#{int(t0)}", t0, 1000 * s, cat="user_annotation"),
        x("train_step", t0 + 1 * s, 998 * s, cat="user_annotation"),
        x("data", t0 + 2 * s, 98 * s, cat="user_annotation"),
        x("aten::index_select", t0 + 10 * s, 50 * s),
        x("aten::convolution", t0 + 100 * s, 300 * s),
        x("aten::mkldnn_convolution", t0 + 120 * s, 260 * s),
        x("sk_select", t0 + 400 * s, 100 * s, cat="user_annotation"),
        x("aten::softmax", t0 + 410 * s, 20 * s, **{"Sequence number": 7}),
        x("aten::mul", t0 + 430 * s, 40 * s, **{"Sequence number": 8}),
        x("autograd::engine::evaluate_function: MulBackward0", t0 + 600 * s, 100 * s, **{"Sequence number": 8}),
        x("aten::mul", t0 + 610 * s, 80 * s),
        x("optimizer", t0 + 800 * s, 100 * s, cat="user_annotation"),
        x("aten::_foreach_add_", t0 + 810 * s, 40 * s),
    ]


def write_trace(folder: Path, events: list[dict], name: str = "w.1.pt.trace.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps({"schemaVersion": 1, "deviceProperties": [], "traceEvents": events}))
    return path


def write_run(folder: Path, wall_ms: list[float]) -> None:
    (folder / "run.json").write_text(
        json.dumps(
            {"wall_step_ms": wall_ms, "wall_median_step_ms": sorted(wall_ms)[len(wall_ms) // 2], "impl": "torch"}
        )
    )


def test_categorise_names() -> None:
    cases = {
        "aten::mkldnn_convolution": C.CONV_GEMM,
        "aten::convolution_backward": C.CONV_GEMM,
        "sm90_xmma_fprop_implicit_gemm_bf16": C.CONV_GEMM,
        "triton_tem_fused_mm_3": C.CONV_GEMM,
        "aten::native_batch_norm_backward": C.NORM,
        "triton_poi_fused__native_batch_norm_legit_functional_relu_2": C.NORM,
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>": C.ELEMENTWISE,
        "triton_poi_fused_add_relu_0": C.ELEMENTWISE,
        "void at::native::reduce_kernel<512, 1, MeanOps>": C.REDUCTION,
        "triton_red_fused_sum_1": C.REDUCTION,
        "cpp_fused_mean_0": C.REDUCTION,
        "graph_0_cpp_fused_add_convolution_backward_native_batch_norm_backward_3": C.NORM,
        "Memcpy HtoD (Pageable -> Device)": C.COPY,
        "aten::copy_": C.COPY,
        "_sk_select_fwd_kernel": C.CUSTOM,
        "fastcifar::zpool": C.CUSTOM,
        "autograd::engine::evaluate_function: ConvolutionBackward0": C.OTHER,
        "ConvolutionBackward0": C.OTHER,
        "aten::empty": C.OTHER,
    }
    assert {name: C.categorise(name) for name in cases} == cases


def test_cpu_trace_figures(tmp_path: Path) -> None:
    events = cpu_step(0.0) + cpu_step(2000.0) + [mem(5, 100, 0), mem(6, 900, 0), mem(7, 50, 1)]
    trace = load_trace(write_trace(tmp_path / "v", events))
    m = variant_metrics(trace)
    assert m["device_kind"] == "cpu" and m["steps"] == 2
    assert m["step_ms"] == [1.0, 1.0]
    assert m["temporal"]["busy_ms_per_step"] == pytest.approx(0.55)
    assert m["temporal"]["idle_ms_per_step"] == pytest.approx(0.45)
    assert m["category_ms"][C.CONV_GEMM] == pytest.approx(2 * 0.300)
    assert m["category_ms"][C.COPY] == pytest.approx(2 * 0.050)
    assert m["category_ms"][C.REDUCTION] == pytest.approx(2 * 0.020)
    assert m["category_ms"][C.ELEMENTWISE] == pytest.approx(2 * (0.040 + 0.080 + 0.040))
    assert m["category_ms"][C.OTHER] == pytest.approx(2 * 0.020)
    assert sum(m["category_ms"].values()) == pytest.approx(m["kernel_total_ms"]) == pytest.approx(1.1)
    assert m["launches"] == [6, 6]  # convolution has an op inside it, so it is no launch
    assert m["data"]["wait_ms_per_step"] == pytest.approx(0.098)
    assert m["data"]["device_ms_per_step"] == pytest.approx(0.050)
    assert m["host"]["overhead_ms_per_step"] == pytest.approx(0.45)
    sk = m["regions"]["sk_select"]
    assert sk["calls_per_step"] == 1
    assert sk["forward_ms_per_step"] == pytest.approx(0.060)
    # Backward matched through the sequence number: node self time 20 + the mul inside it 80.
    assert sk["backward_ms_per_step"] == pytest.approx(0.100)
    assert m["regions"]["zpool"]["found"] is False and m["regions"]["zpool"]["total_ms_per_step"] is None
    assert m["memory"]["peak_allocated_bytes"] == 900  # CPU allocator events only
    top = m["top_kernels"][0]
    assert top["name"] == "aten::mkldnn_convolution" and top["share_pct"] == pytest.approx(100 * 260 / 550)


def gpu_events() -> list[dict]:
    """Two GPU steps of 1000 µs with launches (correlated) and kernels on a stream.

    Step 0: gemm 100-400 (launched in the step), elementwise 350-450 (overlap 50), sk_select
    kernel 500-600 launched inside the sk_select range, memcpy 700-720 launched in `data`.
    Step 1 (t0=2000): gemm 2100-2300, custom zpool kernel 2400-2450 launched from no range.
    """
    ev = [
        x("ProfilerStep#1", 0, 1000, cat="user_annotation"),
        x("data", 690, 40, cat="user_annotation"),
        x("sk_select", 480, 30, cat="user_annotation"),
        x("ProfilerStep#2", 2000, 1000, cat="user_annotation"),
    ]
    kernels = [
        ("sm90_xmma_fprop_implicit_gemm", 90, 100, 300, "kernel"),
        ("void at::native::vectorized_elementwise_kernel<4, add>", 95, 350, 100, "kernel"),
        ("_sk_select_fwd_kernel", 490, 500, 100, "kernel"),
        ("Memcpy HtoD (Pageable -> Device)", 700, 700, 20, "gpu_memcpy"),
        ("sm90_xmma_fprop_implicit_gemm", 2050, 2100, 200, "kernel"),
        ("_zpool_fwd_kernel", 2060, 2400, 50, "kernel"),
    ]
    for corr, (name, launch_ts, ts, dur, cat) in enumerate(kernels, start=1):
        api = "cudaMemcpyAsync" if cat == "gpu_memcpy" else "cudaLaunchKernel"
        ev.append(x(api, launch_ts, 5, cat="cuda_runtime", correlation=corr))
        ev.append(
            {
                "ph": "X",
                "cat": cat,
                "name": name,
                "pid": 0,
                "tid": 7,
                "ts": ts,
                "dur": dur,
                "args": {"correlation": corr, "stream": 7, "device": 0, "External id": corr},
            }
        )
    ev += [mem(10, 1 << 20, 1), mem(20, 3 << 20, 1), mem(30, 5 << 30, 0)]
    return ev


def test_gpu_trace_figures(tmp_path: Path) -> None:
    m = variant_metrics(load_trace(write_trace(tmp_path / "g", gpu_events())))
    assert m["device_kind"] == "cuda" and m["steps"] == 2
    # Step 0 busy: union [100,450] + [500,600] + [700,720] = 470; step 1: 200 + 50.
    assert m["temporal"]["busy_ms"] == pytest.approx(0.470 + 0.250)
    assert m["temporal"]["idle_ms"] == pytest.approx(2.0 - 0.720)
    assert m["kernel_total_ms"] == pytest.approx(0.770)
    assert m["category_ms"][C.CONV_GEMM] == pytest.approx(0.500)
    assert m["category_ms"][C.CUSTOM] == pytest.approx(0.150)
    assert m["category_ms"][C.COPY] == pytest.approx(0.020)
    assert m["launches"] == [3, 2]  # memcpy is not a kernel launch
    assert m["host"]["launch_api_ms_per_step"] == pytest.approx(0.015)
    assert m["data"]["device_ms_per_step"] == pytest.approx(0.010)
    assert m["regions"]["sk_select"]["forward_ms_per_step"] == pytest.approx(0.050)
    assert m["regions"]["zpool"]["by_kernel_name_ms_per_step"] == pytest.approx(0.025)
    assert m["memory"]["peak_allocated_bytes"] == 3 << 20


def test_report_side_by_side(tmp_path: Path) -> None:
    root = tmp_path / "prof"
    write_trace(root / "eager_fp32", cpu_step(0.0) + cpu_step(2000.0) + cpu_step(4000.0))
    write_run(root / "eager_fp32", [4.0, 5.0, 6.0])
    fast = cpu_step(0.0, 0.5) + cpu_step(1000.0, 0.25) + cpu_step(2000.0, 0.5)
    write_trace(root / "compiled_bf16_cl", fast)
    write_run(root / "compiled_bf16_cl", [2.0, 2.5, 3.0])
    report = analyze(root)
    assert report["variant_order"] == ["eager_fp32", "compiled_bf16_cl"] and report["baseline"] == "eager_fp32"
    e, c = report["variants"]["eager_fp32"], report["variants"]["compiled_bf16_cl"]
    assert c["median_step_ms"] == pytest.approx(0.5)
    assert c["speedup_vs_baseline"] == pytest.approx(e["median_step_ms"] / c["median_step_ms"]) == pytest.approx(2.0)
    assert c["wall_speedup_vs_baseline"] == pytest.approx(5.0 / 2.5)
    saved = json.loads((root / "report.json").read_text())
    assert saved["variants"]["compiled_bf16_cl"]["speedup_vs_baseline"] == pytest.approx(2.0)
    text = (root / "report.md").read_text()
    assert "| compiled_bf16_cl |" in text and "2.00×" in text and "sk_select" in text
    for chart in report["charts"]:
        assert (root / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not report["hta"]["computed"]  # CPU traces: HTA is not used


def test_hta_on_gpu_trace(tmp_path: Path) -> None:
    pytest.importorskip("hta")
    from fastcifar.profiling.hta_bridge import hta_figures

    path = write_trace(tmp_path / "g", gpu_events())
    figures = hta_figures(path, "cuda")
    assert figures["used"], figures
    assert "temporal_breakdown" in figures["computed"], figures.get("errors")
    row = figures["temporal_breakdown"][0]
    # HTA's busy time (compute + memcpy, overlaps merged) is the union our metrics compute too.
    ours = variant_metrics(load_trace(path))["temporal"]["busy_ms"]
    assert (row["compute_time(us)"] + row["non_compute_time(us)"]) / 1e3 == pytest.approx(ours)
    assert figures["launch_stats"]["launches"] == 6
    report = analyze(tmp_path, charts=False)
    assert "temporal_breakdown" in report["hta"]["computed"]
    assert "temporal: idle" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "no profiler traces"),
        (
            lambda root: (root / "x").mkdir(parents=True) or (root / "x" / "notes.txt").write_text("hi"),
            "no profiler traces",
        ),
        (
            lambda root: write_trace(root / "eager", []).write_text('{"traceEvents": [{"ph": "X",'),
            "truncated or not valid JSON",
        ),
        (lambda root: write_trace(root / "eager", []).write_text('{"hello": 1}'), "not a PyTorch profiler trace"),
        (lambda root: write_trace(root / "eager", [x("aten::add", 0, 1)]), "no ProfilerStep"),
    ],
    ids=["missing", "empty", "foreign", "truncated", "not-a-trace", "no-steps"],
)
def test_user_errors(tmp_path: Path, setup, message: str) -> None:
    root = tmp_path / "prof"
    setup(root)
    with pytest.raises(UserError, match=message):
        analyze(root, charts=False)


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fastcifar.analyze", str(tmp_path / "nothing")], capture_output=True, text=True
    )
    assert_user_error(proc, PROG, "does not exist")


# --- bad input, unwritable output, impossible figures ---------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastcifar.analyze", *args], capture_output=True, text=True)


def profile_folder(tmp_path: Path) -> Path:
    root = tmp_path / "prof"
    write_trace(root / "eager", cpu_step(0.0) + cpu_step(2000.0))
    write_run(root / "eager", [4.0, 5.0])
    return root


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--top_m", "3"], "unknown flag --top_m"),
        (["--top_n", "0"], "--top_n"),
        (["--chart"], "unknown flag --chart"),
        (["extra"], "unexpected argument 'extra'"),
    ],
)
def test_cli_rejects_mistyped_flags_before_any_work(tmp_path: Path, flags: list[str], fragment: str) -> None:
    root = profile_folder(tmp_path)
    assert_user_error(run_cli(str(root), *flags), PROG, fragment)
    assert not (root / "report.json").exists()  # nothing was analysed


def test_cli_writes_the_report_elsewhere_with_out(tmp_path: Path) -> None:
    root = profile_folder(tmp_path)
    proc = run_cli(str(root), "--out", str(tmp_path / "report"), "--nocharts", "--top_n", "3")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "report" / "report.json").read_text())["variant_order"] == ["eager"]
    assert sorted(p.name for p in root.iterdir()) == ["eager"]  # the profile folder is only read


def test_cli_unwritable_output_is_one_line(tmp_path: Path) -> None:
    root = profile_folder(tmp_path)
    (root / "report.json").mkdir()  # something in the way of the final name
    assert_user_error(run_cli(str(root), "--nocharts"), PROG, "cannot write the report", "--out")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert_user_error(run_cli(str(root), "--out", str(blocker / "sub")), PROG, "cannot write the report")
    assert not any(p.name.endswith(".tmp") for p in root.iterdir())


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_cli_read_only_folder_is_one_line(tmp_path: Path) -> None:
    root = profile_folder(tmp_path)
    for folder in (root / "eager", root):
        folder.chmod(0o555)
    try:
        assert_user_error(run_cli(str(root)), PROG, "cannot write the report", "--out")
        assert run_cli(str(root), "--out", str(tmp_path / "elsewhere")).returncode == 0
    finally:
        for folder in (root, root / "eager"):
            folder.chmod(0o755)


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"\xff\xfe{not utf-8", "not UTF-8 JSON"),
        (b'{"wall_median_step_ms": ', "not UTF-8 JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b'{"wall_median_step_ms": "fast"}', "'wall_median_step_ms'"),
        (b'{"wall_step_ms": [1.0, "x"]}', "'wall_step_ms'"),
        (b'{"wall_median_step_ms": -3.0}', "'wall_median_step_ms'"),
    ],
    ids=["non-utf8", "truncated", "list", "string-time", "string-in-list", "negative"],
)
def test_damaged_run_json_is_one_line(tmp_path: Path, content: bytes, fragment: str) -> None:
    root = profile_folder(tmp_path)
    (root / "eager" / "run.json").write_bytes(content)
    assert_user_error(run_cli(str(root), "--nocharts"), PROG, "run.json", fragment)
    assert not (root / "report.json").exists()


@pytest.mark.parametrize(
    "event",
    [
        x("aten::mul", 100, -50),
        x("ProfilerStep#9", 5000, -1000, cat="user_annotation"),
        {"ph": "X", "cat": "cpu_op", "name": "aten::add", "pid": PID, "tid": TID, "ts": 10, "dur": "NaN"},
        {"ph": "X", "cat": "cpu_op", "name": "aten::add", "pid": PID, "tid": TID, "ts": 10, "dur": 1, "args": [1]},
    ],
    ids=["negative-op", "negative-step", "nan", "args-list"],
)
def test_damaged_trace_events_are_one_line(tmp_path: Path, event: dict) -> None:
    root = tmp_path / "prof"
    write_trace(root / "eager", cpu_step(0.0) + [event])
    proc = run_cli(str(root), "--nocharts")
    assert_user_error(proc, PROG, "profile again")
    assert not (root / "report.json").exists()


def test_cpu_busy_is_a_union_over_threads(tmp_path: Path) -> None:
    """Operators on two threads that overlap in time count once: busy never exceeds the step."""
    events = [
        x("ProfilerStep#1", 0, 1000, cat="user_annotation"),
        x("aten::convolution", 0, 800),  # main thread
        x("autograd::engine::evaluate_function: MulBackward0", 100, 800, tid=BWD_TID),
        x("aten::mul", 150, 700, tid=BWD_TID),
    ]
    m = variant_metrics(load_trace(write_trace(tmp_path / "v", events)))
    assert m["temporal"]["busy_ms_by_step"] == [pytest.approx(0.9)]  # [0, 900) on either thread
    assert m["temporal"]["idle_ms_per_step"] == pytest.approx(0.1)
    assert m["host"]["overhead_ms_per_step"] == pytest.approx(0.1)
    assert m["kernel_total_ms"] == pytest.approx(0.8 + 0.1 + 0.7)  # self times, summed over threads


@pytest.mark.slow
def test_busy_never_exceeds_the_step_on_a_real_cpu_profile(tmp_path: Path) -> None:
    from fastcifar.models import tiny_overrides
    from fastcifar.profiling.record import profile_variants

    profile_variants(
        "sk_densenet",
        "eager_fp32",
        steps=2,
        batch_size=8,
        out=tmp_path,
        model_kwargs=tiny_overrides("sk_densenet"),
        device="cpu",
    )
    report = analyze(tmp_path, charts=False)
    m = report["variants"]["eager_fp32"]
    t = m["temporal"]
    assert len(t["busy_ms_by_step"]) == m["steps"] == 2
    for busy, window, step in zip(t["busy_ms_by_step"], t["window_ms_by_step"], m["step_ms"]):
        assert 0 < busy <= window + 1e-9 and window == pytest.approx(step)
    assert 0 < t["busy_pct"] <= 100


def test_a_profile_folder_another_process_writes_is_not_analysed(tmp_path: Path) -> None:
    """One writer per folder: the report is not written beside a profile still running there."""
    from tiny_runs import start_holder

    root = profile_folder(tmp_path)
    holder = start_holder(root, "fastcifar.profile")
    try:
        assert_user_error(run_cli(str(root), "--nocharts"), PROG, f"is in use by pid {holder.pid}")
    finally:
        holder.stdin.close()
        holder.wait()
    assert not (root / "report.json").exists()
