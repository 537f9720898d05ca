"""Mistakes that used to surface as a traceback after minutes of work: caught first, one line each.

A batch of 1 (BatchNorm cannot train on it), a results folder that is a file or read-only, an
Inductor cache folder that cannot be written.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from torch import nn

from fastcifar.errors import UserError

TINY = {"growth_rate": 4, "block_config": [1, 1, 1, 1]}


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    return path


def test_profile_batch_size_1_is_refused():
    from fastcifar.profiling.record import profile_variants

    with pytest.raises(UserError, match=r"--batch_size must be an integer >= 2 \(BatchNorm"):
        profile_variants(arch="sk_densenet", variants="eager_fp32", batch_size=1, device="cpu", model_kwargs=TINY)


def test_profile_out_a_file_is_refused(a_file):
    from fastcifar.profiling.record import profile_variants

    for out in (a_file, a_file / "profile"):
        with pytest.raises(UserError, match="cannot write the profile into .*pass a writable --out"):
            profile_variants(arch="sk_densenet", variants="eager_fp32", steps=1, out=out, device="cpu")


def test_bench_train_batch_size_1_is_refused():
    from bench.train import bench_train

    with pytest.raises(UserError, match=r"--batch_size must be an integer >= 2 \(BatchNorm"):
        bench_train("cpu", arch="sk_densenet", model_kwargs=TINY, batch_size=1, steps=1, variants="eager_fp32")


def test_bench_train_out_a_file_is_refused(a_file):
    from bench.train import main

    with pytest.raises(UserError, match="cannot write results into .*pass a writable --out"):
        main(device="cpu", batch_size=2, steps=1, variants="eager_fp32", out=str(a_file))


def test_bench_kernels_static_out_dir_a_file_is_one_line_before_compiling(a_file):
    result = subprocess.run(
        [sys.executable, "-m", "bench.kernels", "--static", "--out_dir", str(a_file)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "pass a writable --out_dir" in result.stderr
    assert "compiling" not in result.stderr  # refused before the minute of compiling


def test_bench_kernels_out_dir_read_only_is_refused(tmp_path, read_only):
    from bench.kernels import run_benchmarks, run_static

    read_only(tmp_path)
    for run in (run_static, run_benchmarks):
        with pytest.raises(UserError, match="cannot write results into .*Read-only file system"):
            run(tmp_path / "results")


@pytest.mark.parametrize("where", ["under_a_file", "read_only"])
def test_compile_with_an_unwritable_inductor_cache_is_one_line(where, a_file, tmp_path, monkeypatch, read_only):
    from fastcifar.training.variant import VARIANTS

    if where == "under_a_file":
        cache = a_file / "inductor"
    else:
        cache = tmp_path / "cache"
        cache.mkdir()
        read_only(cache)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    with pytest.raises(UserError) as caught:
        VARIANTS["compiled_bf16_cl"].wrap(nn.Linear(2, 2))
    message = str(caught.value)
    assert str(cache) in message and "set TORCHINDUCTOR_CACHE_DIR" in message and "\n" not in message
    with pytest.raises(UserError, match="set TORCHINDUCTOR_CACHE_DIR"):  # torch.compile needs it with any backend
        VARIANTS["compiled_bf16_cl"].wrap(nn.Linear(2, 2), backend="aot_eager")
