"""The one benchmark record: every benchmark writes the same header through bench.common."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.common import environment_line, new_record, save_record

HEADER = ["benchmark", "command", "date", "environment"]


def test_a_record_is_named_after_its_benchmark_device_and_day(tmp_path: Path) -> None:
    record = {**new_record("demo", "cpu", packages=("numpy",)), "results": [1, 2]}
    assert list(record)[:4] == HEADER
    env = record["environment"]
    assert env["device_type"] == "cpu" and env["cpu_count"] >= 1 and env["numpy"] and env["torch"]
    stem = save_record(tmp_path / "out", record, "# demo\n")
    assert stem == tmp_path / "out" / f"demo-cpu-{record['date'][:10]}"
    assert json.loads(stem.with_suffix(".json").read_text()) == record
    assert stem.with_suffix(".md").read_text() == "# demo\n"
    # Nothing ran on a device: the name has no device part.
    assert save_record(tmp_path, new_record("static"), "").name == f"static-{record['date'][:10]}"
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["out", f"{stem.name}.json", f"{stem.name}.md", f"static-{record['date'][:10]}.json"]
        + [f"static-{record['date'][:10]}.md"]
    )  # written atomically: no temporaries left behind
    line = environment_line(env)
    assert f"torch {env['torch']}" in line and f"{env['cpu_count']} CPU cores" in line and "device_type" not in line


def _train(out: Path) -> None:
    from bench.train import main

    main(device="cpu", steps=1, repeats=1, variants="eager_fp32", batch_size=4, out=str(out))


def _augment(out: Path) -> None:
    from bench.augment import main

    main(device="cpu", batch_size=8, n_images=8, pil_images=2, routes="eager", out_dir=str(out))


def _prepare(out: Path) -> None:
    pytest.importorskip("ffcv")
    from bench.prepare import main

    main(n=64, repeats=1, workers=1, out_dir=str(out))


def _loaders(out: Path) -> None:
    pytest.importorskip("ffcv")
    from bench.loaders import main

    main(out_dir=str(out), n=64, batch_size=16, kinds=("gpu",), plain_kinds=(), warmup_batches=1, num_workers=0)


def _kernels(out: Path) -> None:
    from bench.kernels import run_benchmarks

    run_benchmarks(out, short=True)


@pytest.mark.parametrize(
    "name, run",
    [
        ("train", _train),
        ("augment", _augment),
        ("prepare", _prepare),
        pytest.param("loaders", _loaders, marks=pytest.mark.slow),
        pytest.param("kernels", _kernels, marks=pytest.mark.slow),
    ],
)
def test_every_benchmark_writes_the_one_header(tmp_path: Path, name: str, run: Callable[[Path], None]) -> None:
    run(tmp_path)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert len(written) == 2 and written[0].startswith(f"{name}-cpu-") and written[0].endswith(".json")
    record = json.loads((tmp_path / written[0]).read_text())
    assert list(record)[:4] == HEADER and record["benchmark"] == name
    assert record["environment"]["device_type"] == "cpu" and "load_average" in record["environment"]
    assert record["command"] in (tmp_path / written[1]).read_text()  # the Markdown names the command
