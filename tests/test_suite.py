"""The GPU suite on CPU at tiny sizes: it runs end to end without the optional packages, keeps to its
budget, and saves complete results after every section."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_checks import assert_user_error, call_main

REPO = Path(__file__).resolve().parent.parent
BLOCKED = ("ffcv", "fire", "hta", "torch_tb_profiler")
# Runs bench.suite with the optional packages unimportable, as on the GPU machine that lacks them.
BLOCKING_LAUNCHER = f"""
import runpy, sys
BLOCKED = {BLOCKED!r}

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, Blocker())
sys.argv = ["bench.suite", *sys.argv[1:]]
runpy.run_module("bench.suite", run_name="__main__", alter_sys=True)
"""


def run_suite(*args: str, blocked: bool = False, timeout: float = 900) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "-c", BLOCKING_LAUNCHER] if blocked else [sys.executable, "-m", "bench.suite"]
    start = time.monotonic()
    proc = subprocess.run(
        [*cmd, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    return proc, time.monotonic() - start


@pytest.mark.slow
def test_every_section_runs_or_says_why_without_optional_packages(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    # eager_bf16 stands in for the fast variant so the goal figures are derived end to end on CPU.
    # compile_cache compiles twice (minutes on 2 cores): test_compile_section_measures_cold_then_warm.
    proc, _ = run_suite(
        "--out", str(out), "--device", "cpu", "--tiny", "--fast_variant", "eager_bf16", "--skip", "compile_cache",
        blocked=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    record = json.loads((out / "results.json").read_text())
    sections = record["sections"]
    assert list(sections) == [
        "environment",
        "train:eager_fp32",
        "train:eager_bf16",
        "augment_no_sync",
        "augment_no_sync_compiled",
        "augment",
        "gpu_loader",
        "kernels",
        "profile",
        "cuda_tests",
    ]
    for name, entry in sections.items():
        assert entry["status"] in ("ok", "skipped"), (name, entry)
        assert entry["estimate_s"] > 0
        if entry["status"] == "skipped":
            assert entry["reason"] and entry["reason"] != "budget", (name, entry)
        else:
            assert entry["seconds"] >= 0
    assert sections["cuda_tests"]["reason"].startswith("needs CUDA")

    env = sections["environment"]["result"]
    assert env["environment"]["device_type"] == "cpu"
    assert env["copy"]["gb_per_s"] > 0 and env["matmul"]["tflop_per_s"] > 0
    for module in BLOCKED:
        assert env["optional_modules"][module].startswith("absent"), env["optional_modules"]
    assert env["triton_problem"] is None  # the interpreter needs no compiler

    fast, eager = sections["train:eager_bf16"]["result"], sections["train:eager_fp32"]["result"]
    assert fast["images_per_s"] > 0 and eager["images_per_s"] > 0
    assert fast["train_flops_per_step"] == eager["train_flops_per_step"]  # counted once, passed on
    for row in (fast, eager):  # read against the computed floor at the measured ceilings
        assert row["times_floor"] == pytest.approx(row["step_ms"] / row["floor"]["floor_ms_per_step"])
        assert row["achieved_gb_per_s"] > 0 and row["floor"]["peaks"].startswith("measured")
    assert fast["floor"]["traced"] == "bf16 autocast" and eager["floor"]["traced"] == "fp32"

    loader = sections["gpu_loader"]["result"]
    assert loader["epochs"][-1]["images"] == (loader["images"] // 256) * 256  # drop_last epoch

    profile = sections["profile"]["result"]
    assert set(profile["variants"]) == {"eager_fp32", "compiled_bf16"}
    assert (out / "profile" / "report.md").is_file()
    for figures in profile["variants"].values():
        assert 0 < figures["busy_pct"] <= 100  # a union, never more than the step

    derived = record["derived"]
    assert derived["fast_variant"] == "eager_bf16"
    assert derived["fast_vs_eager_fp32"] == pytest.approx(fast["images_per_s"] / eager["images_per_s"])
    assert derived["projected_30_epochs_seconds"] == pytest.approx(30 * 50_000 / fast["images_per_s"])
    assert derived["augment_share_of_fast_step"] > 0 and derived["mfu"] > 0

    summary = (out / "results.md").read_text()
    for name, entry in sections.items():
        assert f"| {name} | {entry['status']} |" in summary
    assert summary.strip() in proc.stdout  # the short table is printed last


@pytest.mark.slow
def test_a_small_budget_skips_later_sections_and_keeps_results(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    budget = 10.0
    proc, seconds = run_suite("--out", str(out), "--device", "cpu", "--tiny", "--budget", str(budget))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The budget counts from main(); the interpreter and `import torch` come before it.
    assert seconds <= budget + 10

    record = json.loads((out / "results.json").read_text())
    sections = record["sections"]
    assert sections["environment"]["status"] == "ok"
    skipped = [name for name, e in sections.items() if e["status"] == "skipped" and e["reason"] == "budget"]
    # kernels and profile need more than the whole budget; which earlier ones fit depends on the machine.
    assert {"kernels", "profile"} <= set(skipped)
    for entry in sections.values():
        if entry["status"] == "skipped" and entry["reason"] == "budget":
            assert entry["needs_s"] <= entry["estimate_s"] and "of the budget left" in entry["detail"]
    assert all(e["status"] != "pending" for e in sections.values())
    assert record["budget"]["used_s"] <= budget
    assert set(record["derived"]) >= {
        "fast_vs_eager_fp32",
        "projected_30_epochs_seconds",
        "augment_share_of_fast_step",
        "mfu",
        "sk_select_min_fraction_of_copy",
    }
    text = (out / "results.md").read_text()
    assert "## Goal figures" in text and "| kernels | skipped |" in text and "budget (needs" in text


def test_every_variant_and_section_has_an_estimate(tmp_path: Path) -> None:
    """Planning reads ESTIMATES without a fallback, so every section the suite can build has one."""
    import argparse

    import torch

    from bench.suite import ESTIMATES, Context, build_sections
    from fastcifar.training.variant import VARIANTS

    args = argparse.Namespace(train_variants=list(VARIANTS), profile_variants=None, skip=set())
    for device in ("cpu", "cuda"):
        ctx = Context(device=torch.device(device), tiny=device == "cpu", out=tmp_path)
        names = [s.name for s in build_sections(ctx, args, {})]
        assert set(names) <= set(ESTIMATES) and {f"train:{v}" for v in VARIANTS} <= set(names)


@pytest.mark.slow
def test_compile_section_measures_cold_then_warm(tmp_path: Path) -> None:
    """Two fresh processes share one new Inductor cache: the first compiles every graph, the second finds them."""
    import torch

    from bench.common import Deadline
    from bench.suite import Context, compile_cache_line, fast_variant_name, section_compile_cache

    ctx = Context(device=torch.device("cpu"), tiny=True, out=tmp_path)
    result = section_compile_cache(ctx, Deadline(None))
    cold, warm = result["cold"], result["warm"]
    assert result["variant"] == fast_variant_name() == cold["variant"] and result["cut"] is None
    assert cold["lookups"]["hits"] == 0 and cold["lookups"]["misses"] >= 2  # forward and backward at least
    assert warm["lookups"] == {"hits": cold["lookups"]["misses"], "misses": 0, "bypasses": 0}
    assert cold["cache_dir"] == warm["cache_dir"] and not Path(cold["cache_dir"]).exists()  # removed after
    assert result["cache_bytes"] > 0
    assert result["warm_over_cold"] == pytest.approx(warm["compile_seconds"] / cold["compile_seconds"])
    line = compile_cache_line({"sections": {"compile_cache": {"status": "ok", "result": result}}})
    assert f"cold {cold['compile_seconds']:.1f} s" in line and f"warm {warm['compile_seconds']:.1f} s" in line


def test_plan_runs_nothing(tmp_path: Path) -> None:
    out = tmp_path / "never"
    proc, _ = run_suite("--plan", "--device", "cpu", "--out", str(out), "--budget", "30")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("environment") for line in lines)
    assert any(line.startswith("cuda_tests") and "skipped: needs CUDA" in line for line in lines)
    from bench.suite import ESTIMATES

    cpu_tiny = f"{ESTIMATES['compile_cache'][0]:.0f}"
    assert any(line.split()[:2] == ["compile_cache", cpu_tiny] for line in lines)
    total = next(line for line in lines if line.startswith("total"))
    assert "budget 30 s" in total
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget", "0"], "--budget must be a positive number"),
        (["--train_variants", "turbo"], "unknown --train_variants turbo"),
        (["--bogus"], "unknown flag --bogus"),
        (["--budge", "30"], "unknown flag --budge"),
        (["--device", "cuda:abc"], "is not a device"),
    ],
)
def test_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    from bench.suite import main

    result = call_main(main, ["--plan", "--device", "cpu", "--out", str(tmp_path / "o"), *args], capsys)
    assert_user_error(result, "bench.suite", message)


def test_sections_skip_on_budget_and_save_after_each(tmp_path: Path) -> None:
    from bench.common import Deadline
    from bench.suite import Section, Suite

    saved: list[list[str]] = []

    class Recording(Suite):
        def save(self) -> None:
            super().save()
            record = json.loads((self.out / "results.json").read_text())
            saved.append([e["status"] for e in record["sections"].values()])

    def slow_part(deadline: Deadline) -> dict:
        return {"value": 1.0}

    sections = [
        Section("first", slow_part, estimate_s=1.0, minimum_s=1.0),
        Section("too_long", slow_part, estimate_s=1e6, minimum_s=1e6),
        Section("broken", lambda d: 1 / 0, estimate_s=1.0, minimum_s=1.0),
        Section("not_here", slow_part, estimate_s=1.0, minimum_s=1.0, skip_reason=lambda: "needs CUDA"),
    ]
    config = {"budget_s": 60.0, "fast_variant": "compiled_bf16_cl_triton"}
    suite = Recording(tmp_path, config, Deadline(60.0), sections)
    suite.run_all()
    entries = suite.record["sections"]
    assert entries["first"]["status"] == "ok" and entries["first"]["result"] == {"value": 1.0}
    assert entries["too_long"]["status"] == "skipped" and entries["too_long"]["reason"] == "budget"
    assert entries["broken"]["status"] == "failed" and "ZeroDivisionError" in entries["broken"]["error"]
    assert entries["not_here"] == {"estimate_s": 1.0, "status": "skipped", "reason": "needs CUDA"}
    # Saved before the first section and after every one, each time a complete file.
    assert saved == [
        ["pending"] * 4,
        ["ok", "pending", "pending", "pending"],
        ["ok", "skipped", "pending", "pending"],
        ["ok", "skipped", "failed", "pending"],
        ["ok", "skipped", "failed", "skipped"],
    ]


def sk_row(shape: list[int], impl: str, ms: float, fraction: float) -> dict:
    return {"op": "sk_select", "shape": shape, "mode": "fwd+bwd", "impl": impl, "median_ms": ms,
            "fraction_of_copy": fraction}  # fmt: skip


def test_derived_goal_figures_follow_from_the_sections() -> None:
    from bench.suite import derive, render_markdown

    fast = "compiled_bf16_cl_triton"
    sections = {
        "augment": {
            "status": "ok",
            "result": {
                "throughput": {
                    "results": [
                        {"pipeline": "torchvision-pil", "device": "cpu", "images_per_s": 900.0},
                        {"pipeline": "fastcifar", "device": "cuda", "images_per_s": 200_000.0},
                    ]
                }
            },
        },
        "train:eager_fp32": {"status": "ok", "result": {"images_per_s": 4_000.0}},
        f"train:{fast}": {
            "status": "ok",
            "result": {"images_per_s": 16_000.0, "mfu": 0.21, "times_floor": 2.5, "achieved_gb_per_s": 1900.0},
        },
        "train:compiled_bf16_cl": {"status": "failed", "error": "boom"},
        "kernels": {
            "status": "ok",
            "result": {
                "timing": [
                    sk_row([256, 2, 80, 32, 32], "triton", 0.10, 0.85),
                    sk_row([256, 2, 80, 32, 32], "triton_compiled", 0.11, 0.80),
                    sk_row([256, 2, 80, 32, 32], "inductor", 0.12, 0.70),
                    sk_row([256, 2, 80, 16, 16], "triton", 0.05, 0.70),
                    sk_row([256, 2, 80, 16, 16], "triton_compiled", 0.045, 0.78),
                    sk_row([256, 2, 80, 16, 16], "inductor", 0.04, 0.90),
                    sk_row([256, 2, 80, 8, 8], "triton", 0.02, 0.40),
                    dict(sk_row([256, 2, 80, 32, 32], "triton", 0.01, 0.99), mode="fwd"),
                ]
            },
        },
    }
    derived = derive(sections, fast)
    # One image costs 1/200k s to augment and 1/16k s to train: the share is 16k/200k.
    assert derived["augment_share_of_fast_step"] == pytest.approx(0.08)
    assert derived["fast_vs_eager_fp32"] == pytest.approx(4.0)
    assert derived["projected_30_epochs_seconds"] == pytest.approx(30 * 50_000 / 16_000)
    assert derived["mfu"] == pytest.approx(0.21)
    assert derived["fast_times_floor"] == 2.5 and derived["fast_achieved_gb_per_s"] == 1900.0
    # Per shape the better of direct and compiled launches; 8x8 and forward-only rows are not goals.
    assert derived["sk_select_fraction_of_copy"] == {"2x80x32x32": 0.85, "2x80x16x16": 0.78}
    assert derived["sk_select_min_fraction_of_copy"] == pytest.approx(0.78)
    assert derived["sk_select_triton_vs_inductor"] == {"faster_shapes": 1, "shapes": 2}
    assert derived["best_variant"]["name"] == fast
    assert derived["goals_met"] == {
        "fast_vs_eager_fp32": True,
        "projected_30_epochs_seconds": False,  # 94 s
        "fast_times_floor": True,
        "augment_share_of_fast_step": False,
        "sk_select_min_fraction_of_copy": False,
    }

    failed = dict(sections, **{f"train:{fast}": {"status": "failed", "error": "boom"}})
    assert derive(failed, fast)["fast_vs_eager_fp32"] is None
    assert derive(failed, fast)["augment_share_of_fast_step"] is None

    record = {
        "date": "d",
        "command": "c",
        "sections": {name: dict(entry, seconds=1.0, estimate_s=2.0) for name, entry in sections.items()},
        "derived": derived,
    }
    text = render_markdown(record)
    assert "| augment_share_of_fast_step | 8.0% | <= 5.0% of a fast step | no |" in text
    assert "| fast_times_floor | 2.50x | <= 3.00x the computed floor" in text
    assert "| fast_vs_eager_fp32 | 4.00x |" in text and "| projected_30_epochs_seconds | 94 s |" in text
    assert "| train:compiled_bf16_cl | failed | 2.0 | 1.0 | boom |" in text


def test_cuda_tests_section_keeps_what_finished_when_the_budget_ends(tmp_path: Path) -> None:
    import torch

    from bench.common import Deadline
    from bench.suite import RESERVE_S, Context, section_cuda_tests

    tests = tmp_path / "test_fake_cuda.py"
    tests.write_text(
        "import time\n\nimport pytest\n\n\n"
        "@pytest.mark.cuda\ndef test_quick():\n    pass\n\n\n"
        "@pytest.mark.cuda\ndef test_not_here():\n    pytest.skip('no device')\n\n\n"
        "@pytest.mark.cuda\ndef test_profile_gpu_tiny():\n    raise AssertionError('deselected: never runs')\n\n\n"
        "def test_unmarked():\n    raise AssertionError('not marked cuda: never runs')\n\n\n"
        "@pytest.mark.cuda\ndef test_zz_hangs():\n    time.sleep(120)\n"
    )
    ctx = Context(device=torch.device("cpu"), tiny=True, out=tmp_path)
    start = time.monotonic()
    result = section_cuda_tests(ctx, Deadline(RESERVE_S + 2 + 10), paths=(str(tests),))
    assert time.monotonic() - start < 20
    assert result["cut"] == "budget"
    outcomes = {name.split("::")[-1]: outcome for name, outcome in result["outcomes"].items()}
    assert outcomes == {"test_quick": "PASSED", "test_not_here": "SKIPPED"}
    assert result["counts"] == {"PASSED": 1, "SKIPPED": 1}


def test_benchmarks_get_only_the_arguments_they_take() -> None:
    from bench.suite import call_supported

    def old(a: int, *, short: bool = False) -> dict:
        return {"a": a, "short": short}

    def new(a: int, **kwargs: object) -> dict:
        return {"a": a, **kwargs}

    assert call_supported(old, 1, short=True, time_left=lambda: 5.0) == ({"a": 1, "short": True}, ["time_left"])
    result, dropped = call_supported(new, 1, time_left=3)
    assert result == {"a": 1, "time_left": 3} and dropped == []


def test_without_a_c_compiler_every_triton_section_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU without a C compiler, the sections that run Triton code are skipped with the reason."""
    import argparse

    import torch

    from bench import preflight
    from bench.suite import GPU_TRAIN_VARIANTS, Context, build_sections

    monkeypatch.setenv("CC", "")
    monkeypatch.setattr(preflight.shutil, "which", lambda name: None)
    assert preflight.c_compiler() is None
    problem = preflight.triton_build_problem(torch.device("cuda"))
    assert problem.startswith("no C compiler")

    class EnvironmentOnly:
        def result(self, name: str) -> dict:
            return {"triton_problem": problem} if name == "environment" else {}

    ctx = Context(device=torch.device("cuda"), tiny=False, out=tmp_path, suite=EnvironmentOnly())
    args = argparse.Namespace(train_variants=list(GPU_TRAIN_VARIANTS), skip=set(), profile_variants=None)
    reasons = {s.name: s.skip_reason() for s in build_sections(ctx, args, {})}
    expected_runs = {"environment", "train:eager_fp32", "augment_no_sync", "cuda_tests"}
    assert {name for name, reason in reasons.items() if reason is None} == expected_runs
    for name, reason in reasons.items():
        assert reason is None or reason == f"triton unusable: {problem}", (name, reason)


def test_sigterm_saves_what_was_measured(tmp_path: Path) -> None:
    """The shell's last-resort guard sends SIGTERM: the suite records the section it stopped and exits 130."""
    import signal

    out = tmp_path / "suite"
    args = ["--out", str(out), "--device", "cpu", "--tiny", "--train_variants", "eager_fp32"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "bench.suite", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        for line in proc.stdout:  # the suite prints (flushed) when a section starts
            if line.startswith("[suite] train:eager_fp32 (estimate"):
                break
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted (SIGTERM)" in stderr
    record = json.loads((out / "results.json").read_text())
    assert record["interrupted"] == "SIGTERM"
    statuses = [e["status"] for e in record["sections"].values()]
    assert statuses[0] == "ok" and "interrupted" in statuses
    assert "## Goal figures" in (out / "results.md").read_text()


def test_a_train_section_reads_its_step_against_the_floor_and_counts_corrected_flops(tmp_path: Path) -> None:
    """CPU tiny: × floor, achieved bandwidth and MFU follow from the measured step and the counts."""
    import torch

    from bench.common import Deadline
    from bench.suite import Context, section_train_variant
    from fastcifar.models import tiny_overrides
    from fastcifar.models.flops import count_model
    from fastcifar.profiling.roofline import Peaks, roofline

    environment = {"matmul": {"tflop_per_s": 0.5}, "copy": {"gb_per_s": 20.0}}

    class EnvironmentOnly:
        record = {"sections": {}}

        def result(self, name: str) -> dict:
            return environment if name == "environment" else {}

    ctx = Context(device=torch.device("cpu"), tiny=True, out=tmp_path, suite=EnvironmentOnly())
    row = section_train_variant(ctx, "eager_fp32", Deadline(300))
    overrides = tiny_overrides("sk_densenet")
    assert row["train_flops_per_step"] == 8 * count_model("sk_densenet", **overrides).train_flops
    assert row["mfu"] == pytest.approx(row["train_flops_per_step"] / (row["step_ms"] / 1000) / 1e12 / 0.5)
    expected = roofline("sk_densenet", amp=False, batch_size=8, eval_batch_size=8, overrides=overrides,
                        peaks=Peaks.measured(0.5, 20.0))  # fmt: skip
    assert row["floor"]["floor_ms_per_step"] == pytest.approx(expected.floor_ms)
    assert row["floor"]["bytes_per_step_fused_bound"] == expected.train.bytes_fused
    assert row["times_floor"] == pytest.approx(row["step_ms"] / expected.floor_ms)
    assert row["achieved_gb_per_s"] == pytest.approx(expected.train.bytes_fused / (row["step_ms"] / 1000) / 1e9)
    # The floor is traced once per precision and layout.
    assert section_train_variant(ctx, "eager_fp32", Deadline(300))["floor"] is row["floor"]
