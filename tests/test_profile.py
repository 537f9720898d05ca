"""Profile a tiny SK-DenseNet (eager + compiled), analyse it, and check the report against the raw trace.

Also: the profile runs the step, optimiser and schedule that training runs.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_checks import assert_user_error
from tiny_runs import one_epoch_flags

from fastcifar.errors import UserError
from fastcifar.models import tiny_overrides

TINY = tiny_overrides("sk_densenet")
STEPS = 2
EAGER, COMPILED = "eager_fp32", "compiled_bf16_cl"


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    from fastcifar.analyze import analyze
    from fastcifar.profiling.record import profile_variants

    out = tmp_path_factory.mktemp("prof")
    # aot_eager: the whole torch.compile path (Dynamo + AOTAutograd) without C++ code generation,
    # which takes minutes on 2 cores; the analysis does not depend on the backend.
    result = profile_variants(
        "sk_densenet",
        f"{EAGER},{COMPILED}",
        steps=STEPS,
        batch_size=4,
        out=out,
        model_kwargs=TINY,
        device="cpu",
        compile_backend="aot_eager",
    )
    return out, result, analyze(out)


def raw_events(folder: Path) -> list[dict]:
    (trace,) = folder.glob("*.pt.trace.json")
    return json.loads(trace.read_text())["traceEvents"]


def union_length(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(spans):
        if s >= end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def test_outputs_written(profiled) -> None:
    out, result, _ = profiled
    for name in (EAGER, COMPILED):
        run = json.loads((out / name / "run.json").read_text())
        assert run == json.loads(json.dumps(result["variants"][name], default=str))
        assert len(run["wall_step_ms"]) == STEPS and len(run["profiled_step_ms"]) == STEPS
        assert run["profiler_schedule"] == {"wait": 1, "warmup": 1, "active": STEPS}
        assert run["optimizer"]["class"] == "torch.optim.adam.Adam" and run["schedule"]["name"] == "onecycle"
        # The OneCycle schedule spans every step the profile takes: warm-up, timed, profiled.
        assert run["schedule"]["total_steps"] == run["compile_warmup_steps"] + 2 * STEPS + 2
        assert run["triton_kernels"] == "not used" and run["impl"] == "torch"
        # TensorBoard's profiler plugin and Perfetto read <logdir>/<run>/*.pt.trace.json.
        (trace,) = (out / name).glob("*.pt.trace.json")
        assert trace.name in run["trace_files"]
    compiled = json.loads((out / COMPILED / "run.json").read_text())
    assert compiled["spec"]["channels_last"] is True and compiled["step"]["amp"] == "bf16"
    assert not list(out.rglob("*.tmp"))


def test_tensorboard_plugin_reads_traces(profiled, tmp_path: Path) -> None:
    pytest.importorskip("torch_tb_profiler")
    from torch_tb_profiler import consts
    from torch_tb_profiler.profiler.data import RunProfileData
    from torch_tb_profiler.profiler.run_generator import RunGenerator

    out, _, _ = profiled
    (trace,) = (out / EAGER).glob("*.pt.trace.json")
    match = consts.WORKER_PATTERN.match(trace.name)  # how the plugin finds traces in a run folder
    assert match and match.group(1) == EAGER
    data = RunProfileData.parse(EAGER, match.group(2)[1:], str(trace), str(tmp_path))
    profile = RunGenerator(EAGER, match.group(2), data).generate_run_profile()
    assert profile.views  # overview, operator, ... pages


def test_report_matches_raw_trace(profiled) -> None:
    out, _, report = profiled
    for name in (EAGER, COMPILED):
        m = report["variants"][name]
        events = [e for e in raw_events(out / name) if e.get("ph") == "X"]
        steps = sorted((e for e in events if e["name"].startswith("ProfilerStep#")), key=lambda e: e["ts"])
        assert m["steps"] == len(steps) == STEPS
        assert m["median_step_ms"] == pytest.approx(statistics.median(e["dur"] / 1e3 for e in steps))
        assert sum(m["category_ms"].values()) == pytest.approx(m["kernel_total_ms"])
        assert sum(m["category_pct"].values()) == pytest.approx(100.0)
        # CPU trace: operator self times add up to the time covered by operators within the steps.
        in_step = [
            e for e in events if e["cat"] == "cpu_op" and any(s["ts"] <= e["ts"] < s["ts"] + s["dur"] for s in steps)
        ]
        covered = union_length([(e["ts"], e["ts"] + e["dur"]) for e in in_step]) / 1e3
        assert m["kernel_total_ms"] == pytest.approx(covered, rel=1e-3)
        assert m["temporal"]["busy_ms"] + m["temporal"]["idle_ms"] == pytest.approx(sum(e["dur"] for e in steps) / 1e3)
        data = [e for e in events if e["name"] == "data" and e["cat"] == "user_annotation"]
        assert m["data"]["wait_ms_per_step"] == pytest.approx(sum(e["dur"] for e in data) / 1e3 / STEPS)
        assert m["memory"]["peak_allocated_bytes"] > 0
    base, compiled = report["variants"][report["baseline"]], report["variants"][COMPILED]
    assert compiled["speedup_vs_baseline"] == pytest.approx(base["median_step_ms"] / compiled["median_step_ms"])
    assert compiled["wall_speedup_vs_baseline"] == pytest.approx(
        statistics.median(base["run"]["wall_step_ms"]) / statistics.median(compiled["run"]["wall_step_ms"])
    )
    assert (out / "report.md").exists() and all((out / c).exists() for c in report["charts"])


def test_eager_layer_ranges_count_modules(profiled) -> None:
    from fastcifar.models import SKConv, create_model
    from fastcifar.models.densenet import PostActBottleneck, PreActBottleneck

    model = create_model("sk_densenet", **TINY)
    n_sk = sum(isinstance(mod, SKConv) for mod in model.modules())
    n_dense = sum(isinstance(mod, (PostActBottleneck, PreActBottleneck)) for mod in model.modules())
    _, _, report = profiled
    eager = report["variants"][EAGER]
    assert n_sk and n_dense
    assert eager["regions"]["sk_select"]["calls_per_step"] == n_sk
    assert eager["regions"]["sk_select"]["forward_ms_per_step"] > 0
    assert eager["regions"]["sk_select"]["backward_ms_per_step"] > 0
    assert eager["layers"]["SKConv"]["calls_per_step"] == n_sk
    assert eager["layers"]["dense_layer"]["calls_per_step"] == n_dense
    assert report["variants"][COMPILED]["layers"] == {}  # no ranges inside a compiled graph


def test_layer_ranges_are_hooks_on_module_types() -> None:
    from fastcifar.models import layers
    from fastcifar.profiling.record import layer_ranges

    globals_before = dict(vars(layers))
    model = torch.nn.Sequential(
        layers.SKConv(8, groups=2, min_dim=4, impl="torch"), layers.TripletAttention(impl="torch")
    )
    x = torch.randn(2, 8, 4, 4)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with layer_ranges(model) as wrapped:
            model(x)
    # SKConv + its SKSelect, TripletAttention + its three ZPools.
    assert wrapped == 6
    names = [e.name for e in prof.events()]
    assert names.count("sk_select") == 1 and names.count("zpool") == 3
    assert names.count("SKConv:0") == 1 and names.count("TripletAttention:1") == 1
    assert vars(layers) == globals_before  # nothing in the model modules is swapped
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_triton_mode_words(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastcifar.profiling.record import triton_mode

    cpu = torch.device("cpu")
    assert triton_mode(cpu, "torch") == "not used"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "interpreter" in triton_mode(cpu, "triton")
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "reference fallback" in triton_mode(cpu, "triton")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"variants": "eager_fp32,fast"}, "unknown variant"),
        ({"schedule": "cosine"}, "--schedule"),
        ({"model_kwargs": "{growth"}, "--model_kwargs must be a dict"),
        ({"arch": "no_such_net"}, "unknown --arch"),
        ({"steps": 0}, "--steps"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_profile_user_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    from fastcifar.profiling.record import profile_variants

    args = {"arch": "sk_densenet", "variants": EAGER, "steps": 1, "batch_size": 2, "out": tmp_path, "device": "cpu"}
    with pytest.raises(UserError, match=message):
        profile_variants(**{**args, **kwargs})


def test_profile_cli_error_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fastcifar.profile", "--variants", "turbo", "--out", str(tmp_path), "--device", "cpu"],
        capture_output=True,
        text=True,
    )
    assert_user_error(proc, "fastcifar.profile", "unknown variant")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_profile_gpu_tiny(tmp_path: Path) -> None:
    from fastcifar.analyze import analyze
    from fastcifar.profiling.record import profile_variants

    names = (EAGER, COMPILED, "compiled_bf16_cl_triton", "compiled_bf16_cl_triton_cudagraphs")
    profile_variants("sk_densenet", names, steps=3, batch_size=32, out=tmp_path, model_kwargs=TINY, device="cuda")
    report = analyze(tmp_path)
    for name in names:
        m = report["variants"][name]
        assert m["device_kind"] == "cuda" and m["steps"] == 3
        assert sum(m["category_ms"].values()) == pytest.approx(m["kernel_total_ms"])
    assert report["variants"]["compiled_bf16_cl_triton"]["regions"]["sk_select"]["found"]
    assert report["variants"]["compiled_bf16_cl_triton_cudagraphs"]["run"]["spec"]["compile_mode"] == "reduce-overhead"


def test_profile_and_training_run_the_same_step(profiled, synthetic_root: Path, tmp_path: Path) -> None:
    """The eager_fp32 profile and a 1-epoch training run of the same tiny config: same optimiser
    (class and hyper-parameters), same learning-rate schedule, same step composition."""
    from fastcifar.train import train
    from fastcifar.training import engine
    from fastcifar.training.checkpoint import checkpoint_path, load_checkpoint
    from fastcifar.training.variant import VARIANTS, Variant, build_model

    out, _, _ = profiled
    profile_run = json.loads((out / EAGER / "run.json").read_text())
    variant = VARIANTS[EAGER]
    train(
        **{**one_epoch_flags(synthetic_root), "batch_size": 128, "eval_batch_size": 150},
        arch="sk_densenet",
        model_kwargs=TINY,
        out=str(tmp_path / "run"),
        loader="gpu",
        lr=profile_run["lr"],
        compile=variant.compile,
        amp=variant.amp,
        channels_last=variant.channels_last,
        kernels=variant.kernels,
    )
    # What the training run used, from its checkpoint: the optimiser's and scheduler's saved state
    # (every hyper-parameter, the schedule's fixed points) loaded into fresh objects.
    state = load_checkpoint(checkpoint_path(tmp_path / "run"))
    config = state["config"]
    trained_variant = Variant(
        compile=config["compile"],
        compile_mode=config["compile_mode"],
        channels_last=config["channels_last"],
        amp=config["amp"],
        kernels=config["kernels"],
    )
    assert trained_variant == variant
    device = torch.device("cpu")
    model = build_model(config["arch"], config["model_kwargs"], trained_variant, device)
    optimizer, scheduler = engine.build_optimizer(
        model.parameters(),
        max_lr=config["lr"],
        epochs=config["epochs"],
        steps_per_epoch=1,
        device=device,
        weight_decay=config.get("weight_decay", 0.0),
        schedule=config.get("schedule", "onecycle"),
    )
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    settings = engine.StepSettings.for_variant(trained_variant, device, label_smoothing=config["label_smoothing"])
    trained = engine.describe_step(optimizer, scheduler, engine.build_scaler(settings), settings)

    assert trained["schedule"]["total_steps"] == 1024 // 128  # read from the checkpoint, not the rebuild
    assert trained["optimizer"] == profile_run["optimizer"]
    assert trained["step"] == profile_run["step"]
    length = ("total_steps",)  # a profile's schedule spans its few steps, a run's its epochs
    assert {k: v for k, v in trained["schedule"].items() if k not in length} == {
        k: v for k, v in profile_run["schedule"].items() if k not in length
    }


def test_a_second_profile_never_replaces_earlier_results(profiled) -> None:
    from fastcifar.profiling.record import profile_variants

    out = profiled[0]
    before = {path: path.read_bytes() for path in (out / EAGER).iterdir()}
    with pytest.raises(UserError, match=f"already holds a profile of {EAGER}"):
        profile_variants("sk_densenet", EAGER, steps=1, batch_size=2, out=out, model_kwargs=TINY, device="cpu")
    assert {path: path.read_bytes() for path in (out / EAGER).iterdir()} == before


def test_a_profile_folder_another_process_writes_is_refused(tmp_path: Path) -> None:
    from tiny_runs import start_holder

    from fastcifar.profiling.record import profile_variants

    holder = start_holder(tmp_path / "prof", "fastcifar.profile")
    try:
        with pytest.raises(UserError, match=f"is in use by pid {holder.pid} on host"):
            profile_variants("sk_densenet", EAGER, steps=1, batch_size=2, out=tmp_path / "prof", device="cpu")
    finally:
        holder.stdin.close()
        holder.wait()
    assert not (tmp_path / "prof" / EAGER).exists()
