"""Every GPU-related check and timing in one call: ``python -m bench.suite --out DIR``.

GPU time is scarce, so one command does it all, in this order, each section timed and recorded
even when another fails (results.json is rewritten after every section, so a run cut short keeps
what it measured):

1. ``environment``  GPU, driver, versions; the two ceilings (copy GB/s, bf16 matmul TFLOP/s)
2. ``cuda_tests``   the tests marked ``cuda`` (real Triton compilation, no interpreter)
3. ``kernels``      ``bench.kernels``: Triton vs eager vs inductor for SK select and Z-pool
4. ``augment``      no-host-sync check of the train transform, then ours vs torchvision throughput
5. ``gpu_loader``   ``gpu`` loader epoch throughput with full RandAugment (synthetic in-memory data)
6. ``train``        sk_densenet images/s, step time, peak memory, compile time, MFU per variant
7. ``profile``      eager vs compiled traces and the analyzer's report

Needs torch >= 2.11 and triton >= 3.6; neither FFCV nor a prepared data set nor internet (data is
synthetic and lives in device memory). On a CPU, ``--tiny`` (the default there) runs every section
on tiny sizes so the suite cannot rot; CPU figures are never GPU claims.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from bench.common import sync, write_text_atomic

REPO = Path(__file__).resolve().parent.parent
TINY_SK_DENSENET = {"growth_rate": 4, "block_config": [2, 2, 2, 2]}


class Suite:
    """Runs named sections, records status/seconds/result of each, rewrites results after each."""

    def __init__(self, out: Path, config: dict[str, Any]):
        self.out = out
        self.record: dict[str, Any] = {
            "command": " ".join([Path(sys.executable).name, "-m", "bench.suite", *sys.argv[1:]]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "config": config,
            "sections": {},
        }

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        print(f"[suite] {name} ...", flush=True)
        start = time.perf_counter()
        entry: dict[str, Any] = {}
        try:
            entry["result"] = fn()
            entry["status"] = "ok"
        except Exception as err:  # one broken section must not cost the others their GPU time
            entry["status"] = "failed"
            entry["error"] = f"{type(err).__name__}: {err}"
            entry["traceback"] = traceback.format_exc(limit=8)
            print(entry["traceback"], file=sys.stderr, flush=True)
        entry["seconds"] = round(time.perf_counter() - start, 2)
        self.record["sections"][name] = entry
        print(f"[suite] {name}: {entry['status']} in {entry['seconds']} s", flush=True)
        self.save()
        return entry.get("result")

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.out / "results.json", json.dumps(self.record, indent=2, default=str))
        write_text_atomic(self.out / "results.md", render_markdown(self.record))


# --- sections ---------------------------------------------------------------------------------


def section_environment(device: torch.device, tiny: bool) -> dict:
    from bench.ceilings import copy_bandwidth, environment, matmul_rate

    return {
        "environment": environment(device),
        "copy": copy_bandwidth(device, nbytes=(16 << 20) if tiny else None),
        "matmul": matmul_rate(device, n=256 if tiny else None),
    }


def section_cuda_tests(device: torch.device) -> dict:
    """Run the ``cuda``-marked tests in a child process with the Triton interpreter off."""
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    summary = next((line for line in reversed(tail) if " in " in line and ("passed" in line or "skipped" in line or "failed" in line or "deselected" in line)), "")
    # pytest exits 5 when every test is deselected/skipped-at-collection: not a failure here.
    if proc.returncode not in (0, 5):
        raise RuntimeError(f"cuda tests failed (exit {proc.returncode}): {summary}\n" + "\n".join(tail))
    return {"exit_code": proc.returncode, "summary": summary, "device": device.type}


def section_kernels(out: Path) -> dict:
    from bench.kernels import run_benchmarks

    return run_benchmarks(out / "kernels")


def section_augment(device: torch.device, tiny: bool) -> dict:
    from bench.augment import bench_augment
    from fastcifar.augment import TrainTransform

    result: dict[str, Any] = {}
    if device.type == "cuda":
        x = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, device=device)
        transform = TrainTransform().to(device)
        gen = torch.Generator(device=device).manual_seed(0)
        transform(x, generator=gen)  # warm-up outside the check (lazy inits may sync)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            transform(x, generator=gen)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
        result["no_host_sync"] = True
    n = 1024 if tiny else 32768
    result["throughput"] = bench_augment(device, batch_size=256 if tiny else 512, n_images=n,
                                         pil_images=128 if tiny else 2048)
    return result


def section_gpu_loader(device: torch.device, tiny: bool) -> dict:
    from fastcifar.data.loaders.gpu_loader import GpuLoader
    from fastcifar.data.synthetic import make_arrays

    n = 2048 if tiny else 50_000
    images, fine, _ = make_arrays(n, num_classes=100, seed=0)
    loader = GpuLoader.from_arrays(images, fine, device=device, train=True, batch_size=256, augment=True, seed=0,
                                   dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
                                   channels_last=True)
    epochs = []
    for epoch in range(2):  # epoch 0 warms up (allocator, lazy kernels); epoch 1 is the figure
        loader.set_epoch(epoch)
        sync(device)
        start = time.perf_counter()
        seen = 0
        for xb, _yb in loader:
            seen += xb.shape[0]
        sync(device)
        epochs.append({"images": seen, "seconds": time.perf_counter() - start})
    timed = epochs[-1]
    return {"images": n, "epochs": epochs, "images_per_s": timed["images"] / timed["seconds"]}


def section_train(device: torch.device, tiny: bool, variants: str, peak_tflop_per_s: float | None) -> dict:
    from bench.train import bench_train

    return bench_train(
        device=device,
        arch="sk_densenet",
        model_kwargs=TINY_SK_DENSENET if tiny else {},
        batch_size=8 if tiny else 256,
        steps=2 if tiny else 20,
        variants=variants,
        repeats=1 if tiny else 3,
        peak_tflop_per_s=peak_tflop_per_s,
    )


def section_profile(device: torch.device, tiny: bool, out: Path, variants: str, compile_backend: str) -> dict:
    from fastcifar.analyze import analyze
    from fastcifar.profile import profile_variants

    folder = out / "profile"
    profile_variants(
        arch="sk_densenet",
        variants=variants,
        steps=2 if tiny else 5,
        batch_size=8 if tiny else 256,
        out=folder,
        model_kwargs=TINY_SK_DENSENET if tiny else None,
        device=str(device),
        compile_backend=compile_backend,
    )
    report = analyze(folder)
    return {
        "report": str(folder / "report.md"),
        "baseline": report["baseline"],
        "speedup": {name: m["speedup_vs_baseline"] for name, m in report["variants"].items()},
        "median_step_ms": {name: m["median_step_ms"] for name, m in report["variants"].items()},
    }


def _measured_peak(suite: Suite) -> float | None:
    """The matmul rate the environment section measured: the MFU denominator."""
    env = suite.record["sections"].get("environment", {}).get("result") or {}
    return (env.get("matmul") or {}).get("tflop_per_s")


# --- report -------------------------------------------------------------------------------------

FAST_VARIANT = "compiled_bf16_cl_triton"
CIFAR_TRAIN_IMAGES = 50_000


def derive(sections: dict) -> dict:
    """Figures the issues set goals for, computed from what the sections measured (None if missing).

    - ``augment_share_of_fast_step``: seconds our train transform takes for one batch over the
      seconds of one fast-path training step at the same batch size (goal on a GPU: < 5%);
    - ``fast_vs_eager_fp32``: images/s of the fast path over the study's eager fp32 setting (goal: >= 3x);
    - ``projected_30_epochs_seconds``: 30 x 50,000 images at the fast path's measured training
      rate, evaluation excluded (a projection from throughput, not a timed run; goal: < 180 s).
    """
    def result(name: str) -> dict:
        entry = sections.get(name) or {}
        return entry.get("result") or {} if entry.get("status") == "ok" else {}

    train = result("train")
    variants = train.get("variants") or {}
    fast = variants.get(FAST_VARIANT) or {}
    eager = variants.get("eager_fp32") or {}
    ours = next((r for r in (result("augment").get("throughput") or {}).get("results", [])
                 if r.get("pipeline") == "fastcifar"), None)
    derived: dict[str, Any] = {"fast_variant": FAST_VARIANT, "augment_share_of_fast_step": None,
                               "fast_vs_eager_fp32": None, "projected_30_epochs_seconds": None}
    if fast.get("images_per_s") and ours:
        derived["augment_share_of_fast_step"] = fast["images_per_s"] / ours["images_per_s"]
    if fast.get("images_per_s") and eager.get("images_per_s"):
        derived["fast_vs_eager_fp32"] = fast["images_per_s"] / eager["images_per_s"]
    if fast.get("images_per_s"):
        derived["projected_30_epochs_seconds"] = 30 * CIFAR_TRAIN_IMAGES / fast["images_per_s"]
    return derived


def render_markdown(record: dict) -> str:
    """A short human summary: one row per section plus the headline figures found in results."""
    lines = [f"# GPU suite — {record['date']}", "", f"Command: `{record['command']}`", ""]
    env = record["sections"].get("environment", {}).get("result") or {}
    if env:
        e = env["environment"]
        lines += [
            f"Device: {e.get('gpu', e.get('cpu'))} ({e['device_type']}), torch {e['torch']}, triton {e['triton']}, driver {e.get('driver')}",
            f"Ceilings: copy {env['copy']['gb_per_s']:.1f} GB/s (read+write), matmul {env['matmul']['tflop_per_s']:.2f} TFLOP/s ({env['matmul']['dtype']})",
            "",
        ]
    lines += ["| section | status | seconds | headline |", "|---|---|---|---|"]
    for name, entry in record["sections"].items():
        lines.append(f"| {name} | {entry['status']} | {entry['seconds']} | {_headline(name, entry)} |")
    derived = record.get("derived") or {}
    if any(v is not None for k, v in derived.items() if k != "fast_variant"):
        lines += ["", f"Derived from the figures above (fast path = `{derived['fast_variant']}`):", ""]
        if derived["augment_share_of_fast_step"] is not None:
            lines.append(f"- augmentation time / fast training step: {100 * derived['augment_share_of_fast_step']:.1f}%")
        if derived["fast_vs_eager_fp32"] is not None:
            lines.append(f"- fast path vs eager fp32: {derived['fast_vs_eager_fp32']:.2f}x images/s")
        if derived["projected_30_epochs_seconds"] is not None:
            lines.append(f"- 30 epochs of 50,000 images at the fast path's rate (projection, no evaluation): "
                         f"{derived['projected_30_epochs_seconds']:.0f} s")
    return "\n".join(lines) + "\n"


def _headline(name: str, entry: dict) -> str:
    if entry["status"] != "ok":
        return entry.get("error", "")[:120].replace("|", "/")
    res = entry.get("result") or {}
    try:
        if name == "cuda_tests":
            return res["summary"]
        if name == "gpu_loader":
            return f"{res['images_per_s']:,.0f} img/s"
        if name == "train":
            return "; ".join(f"{v}: {r['images_per_s']:,.0f} img/s" if "images_per_s" in r else f"{v}: failed"
                             for v, r in res["variants"].items())
        if name == "profile":
            return "; ".join(f"{v}: {s:.2f}x" for v, s in res["speedup"].items() if s is not None)
        if name == "augment":
            return "; ".join(f"{r['pipeline']}: {r['images_per_s']:,.0f} img/s" for r in res["throughput"]["results"])
    except (KeyError, TypeError, AttributeError):
        pass
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "bench/results/suite", help="results folder")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--tiny", dest="tiny", action="store_true", default=None, help="tiny sizes (default on CPU)")
    size.add_argument("--full", dest="tiny", action="store_false", help="full sizes (default on CUDA)")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip")
    parser.add_argument("--train_variants", default="eager_fp32,eager_bf16_cl,compiled_bf16_cl,compiled_bf16_cl_triton",
                        help="bench.train variants (comma-separated)")
    parser.add_argument("--profile_variants", default="eager,compiled", help="fastcifar.profile variants")
    parser.add_argument("--compile_backend", default="inductor",
                        help="torch.compile backend for the profile section (aot_eager: quick CPU check)")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("python -m bench.suite: error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    tiny = (device.type != "cuda") if args.tiny is None else args.tiny
    out = Path(args.out)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    suite = Suite(out, {"device": str(device), "tiny": tiny, "skip": sorted(skip)})
    sections: list[tuple[str, Callable[[], Any]]] = [
        ("environment", lambda: section_environment(device, tiny)),
        ("cuda_tests", lambda: section_cuda_tests(device)),
        ("kernels", lambda: section_kernels(out)),
        ("augment", lambda: section_augment(device, tiny)),
        ("gpu_loader", lambda: section_gpu_loader(device, tiny)),
        ("train", lambda: section_train(device, tiny, args.train_variants, _measured_peak(suite))),
        ("profile", lambda: section_profile(device, tiny, out, args.profile_variants, args.compile_backend)),
    ]
    for name, fn in sections:
        if name not in skip:
            suite.run(name, fn)
    suite.record["derived"] = derive(suite.record["sections"])
    suite.save()
    print()
    print(render_markdown(suite.record))
    failed = [n for n, e in suite.record["sections"].items() if e["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
