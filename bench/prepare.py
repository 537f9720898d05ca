"""Beton throughput, in images/s: writing N synthetic CIFAR images with FFCV's DatasetWriter
(through :func:`fastcifar.data.beton.write_beton`, 1 and 2 writer processes) and reading them all
back in order through an FFCV Loader (:func:`fastcifar.data.beton.read_beton`), and hashing the
beton (:func:`fastcifar.data.integrity.content_hash`, blake2b) as ``prepare`` does right after
writing it and a loader does before trusting it.

Input: :func:`fastcifar.data.synthetic.make_arrays` (coloured gratings + noise; never all-zero),
generated once and not timed. Each figure is the median of ``--repeats`` runs. Reads are reported
twice: a whole ``read_beton`` call (which builds a Loader and pays its numba compilation) and one
more pass of a warm Loader (steady-state decoding rate).
Output: a table on stdout and ``bench/results/prepare-cpu-<date>.json`` / ``.md``.

Usage: ``python -m bench.prepare --n 50000 --repeats 3``
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS_DIR, environment_line, markdown_table, new_record, save_record
from fastcifar.errors import UserError


def _median_run(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench_prepare(
    n: int = 50_000, repeats: int = 3, workers: tuple[int, ...] = (1, 2), seed: int = 0, tmp_dir: str | None = None
) -> dict:
    """Time beton writes and reads of ``n`` synthetic images; returns ``{"config": ..., "results": [...]}``.

    Stages: ``write`` (one per writer process count), ``hash`` (blake2b of the just written file,
    from the page cache as in ``prepare``), ``verify_cached`` (:func:`integrity.verify` once the
    verification is remembered: what a second loader open pays), ``read_beton`` (a whole call:
    checks, a new Loader with its numba compilation, one pass), ``read_epoch`` (one more pass of
    an already built Loader: the steady-state read rate). Each result: ``stage``, ``writer_processes``,
    ``images``, ``seconds`` (median), ``all_seconds``, ``images_per_s`` (from the median), ``mib``.
    """
    import ffcv.loader  # noqa: F401  imported here so its start-up (seconds) is not timed

    from fastcifar.data import integrity
    from fastcifar.data.beton import read_beton, sequential_loader, write_beton
    from fastcifar.data.synthetic import make_arrays

    if n < 1 or repeats < 1:
        raise UserError("--n and --repeats must be positive integers")
    images, fine, coarse = make_arrays(n, 100, seed)
    results = []

    def record(stage: str, procs: int | None, times: list[float], size: int, **extra) -> None:
        median = statistics.median(times)
        results.append(
            {
                "stage": stage,
                "writer_processes": procs,
                "images": n,
                "seconds": round(median, 5),
                "all_seconds": [round(t, 5) for t in times],
                "images_per_s": round(n / median),
                "mib": round(size / 2**20, 1),
                **extra,
            }
        )

    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix="bench-prepare-") as scratch:
        path = Path(scratch) / "bench.beton"
        for count in workers:
            times = _median_run(lambda count=count: write_beton(path, images, fine, coarse, num_workers=count), repeats)
            record("write", count, times, path.stat().st_size)
        digest = integrity.content_hash(path)
        record("hash", None, _median_run(lambda: integrity.content_hash(path), repeats), path.stat().st_size)
        integrity.remember(path, digest)
        record(
            "verify_cached",
            None,
            _median_run(lambda: integrity.verify(path, digest, "-"), repeats),
            path.stat().st_size,
        )
        start = time.perf_counter()
        read_images, _, _ = read_beton(path)
        first = time.perf_counter() - start
        if not (read_images == images).all():  # a benchmark of a wrong read would be meaningless
            raise RuntimeError("the beton read back differs from what was written")
        record(
            "read_beton",
            None,
            _median_run(lambda: read_beton(path), repeats),
            path.stat().st_size,
            first_call_seconds=round(first, 3),
        )
        loader, _ = sequential_loader(path)
        for _ in loader:  # warm-up pass: compilation
            pass

        def one_pass() -> None:
            for _ in loader:
                pass

        record("read_epoch", None, _median_run(one_pass, repeats), path.stat().st_size)
    return {
        "config": {
            "n": n,
            "repeats": repeats,
            "workers": list(workers),
            "seed": seed,
            "data": "fastcifar.data.synthetic.make_arrays (100 classes)",
        },
        "results": results,
    }


def _table(record: dict) -> str:
    header = ("stage", "writer processes", "images", "median s", "images/s", "runs (s)", "beton MiB")
    rows = [
        (
            r["stage"],
            "-" if r["writer_processes"] is None else r["writer_processes"],
            r["images"],
            f"{r['seconds']:.3g}",
            f"{r['images_per_s']:,}",
            ", ".join(f"{t:.3g}" for t in r["all_seconds"]),
            r["mib"],
        )
        for r in record["results"]
    ]
    return markdown_table(header, "lrrrrlr", rows)


def main(
    n: int = 50_000,
    repeats: int = 3,
    workers: tuple[int, ...] | int = (1, 2),
    seed: int = 0,
    out_dir: str = str(RESULTS_DIR),
    tmp_dir: str | None = None,
) -> None:
    """Run the benchmark, print the table and write bench/results/prepare-cpu-<date>.json and .md.

    Args:
        n: synthetic images per beton.
        repeats: runs per figure (the median is reported).
        workers: writer process counts to try, e.g. --workers=1,2.
        seed: seed of the synthetic images.
        out_dir: where the JSON and Markdown results go.
        tmp_dir: where the temporary betons go (default: the system temp folder).
    """
    workers = (workers,) if isinstance(workers, int) else tuple(int(w) for w in workers)
    record = bench_prepare(n=n, repeats=repeats, workers=workers, seed=seed, tmp_dir=tmp_dir)
    record = {**new_record("prepare", "cpu", packages=("numba",)), **record}
    table = _table(record)
    print(table)
    markdown = (
        f"# Beton write/read throughput (CPU, {record['date'][:10]})\n\n"
        f"Command: `{record['command']}`\n\n"
        f"{environment_line(record['environment'])} The machine was shared.\n\n"
        f"{table}\n\n"
        "- write: `write_beton` (FFCV DatasetWriter, raw RGB + 2 IntFields, temporary file, fsync, rename) "
        "of synthetic images already in memory.\n"
        "- hash: `integrity.content_hash` (blake2b, 256-bit) of the written beton, read from the page cache "
        "as `prepare` does right after writing; a loader's first open of a beton pays the same.\n"
        "- verify_cached: `integrity.verify` of an unchanged beton whose verification is remembered "
        "(size, mtime, inode): what every later open pays.\n"
        "- read_beton: one whole `read_beton` call (beton checks, a new FFCV Loader with its numba "
        "compilation, one sequential pass copying every record out), after a first call that took "
        f"{record['results'][-2]['first_call_seconds']} s (FFCV's first compilation in the process).\n"
        "- read_epoch: one more sequential pass of an already built Loader (1 thread), decoding only.\n"
    )
    save_record(out_dir, record, markdown)


if __name__ == "__main__":
    from fastcifar.cli import run_cli

    run_cli(main, "bench.prepare")
