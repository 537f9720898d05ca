"""What happens when things go wrong on the data side: full disks, kill -9, damaged files, bad input.

Each case ends in one line (a UserError, or ``<prog>: error: ...`` and exit code 2 on the command
line), never a hang, a traceback, a silent cast or a half-written file at a final name.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from cli_checks import assert_user_error

from fastcifar.atomic import held, remove_stale
from fastcifar.data import archive as archives
from fastcifar.data import beton, integrity, synthetic
from fastcifar.data import prepare as prep
from fastcifar.errors import UserError

pytest.importorskip("ffcv")

REPO = Path(__file__).resolve().parents[1]
PROG = "fastcifar.data"
# conftest's synthetic_root: 1024 train / 300 test images, seed 0.
SYNTHETIC_FLAGS = ["--n_train", "1024", "--n_test", "300", "--seed", "0"]


def _copy(prepared: Path, tmp_path: Path) -> Path:
    """A private copy of conftest's prepared root (tests here damage it)."""
    root = tmp_path / "copy"
    shutil.copytree(prepared, root)
    return root


def _run(args: list[str], prelude: str = "", timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``python -m fastcifar.data <args>`` after running ``prelude`` (Python) in the same process."""
    script = prelude + "\nfrom fastcifar.data.__main__ import main\nmain()\n"
    return subprocess.run(
        [sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, **kwargs
    )


def _assert_one_line_error(run: subprocess.CompletedProcess, words: str) -> str:
    # FFCV's progress bar may share stderr (carriage returns); the error is the last line.
    return assert_user_error(run, PROG, words, progress_ok=True)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if p.name != integrity.CACHE_NAME)


# ---------------------------------------------------------------- disk full


# Every page FFCV's writer processes flush fails as on a full disk. The work queue then still
# holds most chunks of indices, which is what made the process hang at exit.
_DISK_FULL = textwrap.dedent("""
    import errno
    from ffcv import memory_allocator

    def full(self):
        if self.my_page >= 0:
            raise OSError(errno.ENOSPC, "No space left on device")

    memory_allocator.MemoryAllocator.flush_page = full
""")


def test_disk_full_during_write_exits_with_one_line_and_leaves_nothing(tmp_path):
    root = tmp_path / "data"
    run = _run(
        ["prepare", "--dataset", "synthetic", "--root", str(root), "--n_train", "6000", "--n_test", "50"],
        prelude=_DISK_FULL,
        timeout=150,
    )
    line = _assert_one_line_error(run, "No space left on device")
    assert "train.beton" in line and "free some space" in line
    assert list((root / "synthetic").iterdir()) == []  # no beton, no temporary file, no meta.json
    assert _hidden(root) == []


def test_disk_full_in_this_process_is_one_line(tmp_path, monkeypatch):
    from ffcv.writer import DatasetWriter

    def full(self, allocations):  # FFCV writing its tables at the end, in this process
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(DatasetWriter, "finalize", full)
    images, fine, coarse = synthetic.make_arrays(40, 100, 0)
    with pytest.raises(UserError, match=r"writing .*x.beton failed: No space left on device \(errno 28\)"):
        beton.write_beton(tmp_path / "x.beton", images, fine, coarse)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_writing_meta_json_is_one_line(tmp_path, monkeypatch):
    def full(path, obj):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(prep, "write_json_atomic", full)
    with pytest.raises(UserError, match=r"meta.json: No space left on device; .*free some space"):
        prep.prepare(dataset="synthetic", root=tmp_path, n_train=40, n_test=10)
    assert not (tmp_path / "synthetic" / "meta.json").exists()


# ---------------------------------------------------------------- kill -9 and leftovers


# Writer processes stall after a few hundred images, so the temporary beton surely exists when
# the test kills the process group.
_STALL = textwrap.dedent("""
    import time
    from fastcifar.data import beton

    original = beton._Records.__getitem__

    def slow(self, i):
        if i >= 300:
            time.sleep(3600)
        return original(self, i)

    beton._Records.__getitem__ = slow
""")


def test_next_run_removes_what_a_killed_run_left(tmp_path, capsys):
    root = tmp_path / "data"
    args = ["prepare", "--dataset", "synthetic", "--root", str(root), "--n_train", "1000", "--n_test", "50"]
    script = _STALL + "\nfrom fastcifar.data.__main__ import main\nmain()\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not list((root / "synthetic").glob(".train.beton.*.tmp")):
            assert proc.poll() is None and time.monotonic() < deadline, "prepare never started writing"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    # The writer's forked workers die a moment after it and hold the folder's lock until then: the
    # prepare below waits for them (fastcifar.locks' grace for an exited holder) instead of refusing.
    leftovers = list((root / "synthetic").glob(".train.beton.*.tmp"))
    assert len(leftovers) == 1
    # Also what a kill during generation or extraction leaves (their locks died with the process).
    (root / ".synthetic-killed").mkdir()
    (root / ".synthetic-killed" / "partial.tar.gz").write_bytes(b"x")
    (root / ".extract-killed").mkdir()

    capsys.readouterr()
    prep.prepare(dataset="synthetic", root=root, n_train=1000, n_test=50)
    out = capsys.readouterr().out
    assert "removed 3 temporary file(s) left by an interrupted run" in out
    assert _hidden(root) == []
    assert sorted(p.name for p in (root / "synthetic").iterdir()) == [
        integrity.CACHE_NAME,
        "meta.json",
        "test.beton",
        "train.beton",
    ]


def test_leftovers_in_use_by_a_live_run_are_kept(tmp_path):
    folder = tmp_path / "synthetic"
    folder.mkdir()
    busy = folder / ".train.beton.busy.tmp"
    busy.write_bytes(b"being written")
    dead = folder / ".test.beton.dead.tmp"
    dead.write_bytes(b"left over")
    foreign = folder / ".other.tmp"  # not a pattern prepare owns
    foreign.write_bytes(b"not ours")
    with held(busy):  # as a live writer holds it
        removed = remove_stale(folder, (".train.beton.*.tmp", ".test.beton.*.tmp"))
    assert removed == [dead]
    assert busy.exists() and foreign.exists() and not dead.exists()


# ---------------------------------------------------------------- damaged betons


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def _alloc_table_offset(path: Path) -> int:
    from ffcv.types import HeaderType

    header = np.frombuffer(path.read_bytes()[: HeaderType.itemsize], dtype=HeaderType)[0]
    return int(header["alloc_table_ptr"])


def _metadata_offset(path: Path) -> int:
    from ffcv.types import FieldDescType, HeaderType

    return HeaderType.itemsize + len(beton.FIELDS) * FieldDescType.itemsize


REGIONS = {
    "header": lambda path: 4,  # page_size
    "allocation table": lambda path: _alloc_table_offset(path) + 8,  # first sample's pointer
    "image data": lambda path: beton.PAGE_SIZE + 1000,  # pixels of the first page
    "sample table": lambda path: _metadata_offset(path) + 8,  # per-sample metadata (labels live there too)
}


@pytest.mark.parametrize("region", sorted(REGIONS))
def test_damaged_beton_is_detected_by_loader_and_rebuilt_by_prepare(region, synthetic_root, tmp_path, capsys):
    from fastcifar.data.loaders import build_loader

    root = _copy(synthetic_root, tmp_path)
    path = root / "synthetic" / "test.beton"
    _flip(path, REGIONS[region](path))
    rebuild = (
        f"rebuild it with `python -m fastcifar.data prepare --dataset synthetic --root {root} "
        + " ".join(SYNTHETIC_FLAGS)
        + "`"
    )
    with pytest.raises(UserError) as caught:
        build_loader("gpu", "test", root=root, dataset="synthetic")
    damaged = f"{path} is damaged: its content differs from what was written (hash in meta.json)"
    assert str(caught.value) == f"{damaged}; {rebuild}"

    capsys.readouterr()
    prep.prepare(dataset="synthetic", root=root, n_train=1024, n_test=300, seed=0)
    out = capsys.readouterr().out
    assert f"{path} is damaged" in out and "nothing to do" not in out
    images, fine, _ = beton.read_beton(path)
    expected_images, expected_fine, _ = synthetic.make_arrays(300, 100, 0, stream=1)
    assert np.array_equal(images, expected_images) and np.array_equal(fine, expected_fine)


def test_verification_is_cached_by_size_and_mtime(synthetic_root, tmp_path, monkeypatch):
    from fastcifar.data.loaders import beton_path

    root = _copy(synthetic_root, tmp_path)
    calls = []
    real_hash = integrity.content_hash
    monkeypatch.setattr(integrity, "content_hash", lambda path: calls.append(Path(path).name) or real_hash(path))
    beton_path(root, "synthetic", "test")  # a copy is another file (inode): verified once
    beton_path(root, "synthetic", "test")
    assert calls == ["test.beton"]
    path = root / "synthetic" / "test.beton"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # touched: verified again
    beton_path(root, "synthetic", "test")
    beton_path(root, "synthetic", "test")
    assert calls == ["test.beton", "test.beton"]
    # prepare itself recorded the verification of what it wrote: a first open costs nothing
    calls.clear()
    beton_path(synthetic_root, "synthetic", "test")
    assert calls == []


# ---------------------------------------------------------------- bad labels and images at prepare


def _extracted_folder(tmp_path: Path, change: dict) -> Path:
    """A synthetic cifar-100-python/ folder whose train pickle has the keys in ``change`` replaced."""
    synthetic.write_archive(tmp_path / "a.tar.gz", 20, 5, seed=1)
    folder = archives.extract(tmp_path / "a.tar.gz", tmp_path / "x") / "cifar-100-python"
    record = pickle.loads((folder / "train").read_bytes())
    record.update(change)
    (folder / "train").write_bytes(pickle.dumps(record, protocol=2))
    return folder


_IMAGES = synthetic.make_arrays(20, 100, 1)[0].transpose(0, 3, 1, 2).reshape(20, 3072)
BAD_INPUT = {
    "fine label too large": ({b"fine_labels": [100] + [0] * 19}, "holds the label 100, outside 0..99"),
    "fine label negative": ({b"fine_labels": [-1] + [0] * 19}, "holds the label -1, outside 0..99"),
    "coarse label too large": (
        {b"coarse_labels": [0] * 19 + [20]},
        "key 'coarse_labels') holds the label 20, outside 0..19",
    ),
    "float labels": ({b"fine_labels": [1.0] * 20}, "holds a label 1.0 of type float; labels must be integers"),
    "bool labels": ({b"fine_labels": [True] * 20}, "holds a label True of type bool"),
    "string labels": ({b"fine_labels": ["3"] * 20}, "holds a label '3' of type str"),
    "None labels": ({b"fine_labels": None}, "holds labels as a NoneType"),
    "None label": ({b"fine_labels": [None] * 20}, "holds a label None of type NoneType"),
    "2-D labels": ({b"fine_labels": np.zeros((20, 2), np.int64)}, "holds labels of shape (20, 2)"),
    "float label array": ({b"fine_labels": np.zeros(20)}, "holds labels of dtype float64"),
    "float images in 0..1": ({b"data": _IMAGES / 255.0}, "images of dtype float64 (they look scaled to 0..1)"),
    "int16 images": ({b"data": _IMAGES.astype(np.int16)}, "images of dtype int16; images must be uint8"),
    "images as a list": ({b"data": _IMAGES.tolist()}, "holds images as a list"),
    "too few labels": ({b"fine_labels": [0] * 19}, "holds 20 images, 19 labels"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_labels_and_images_are_one_line_at_prepare(case, tmp_path):
    change, words = BAD_INPUT[case]
    folder = _extracted_folder(tmp_path, change)
    with pytest.raises(UserError, match="^" + re.escape(str(folder / "train"))) as caught:
        prep.prepare(dataset="cifar100", root=tmp_path / "root", archive=folder)
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "root" / "cifar100").exists()


def test_bad_labels_through_the_command_line(tmp_path):
    folder = _extracted_folder(tmp_path, {b"coarse_labels": [25] * 20})
    run = _run(["prepare", "--dataset", "cifar100", "--root", str(tmp_path / "root"), "--archive", str(folder)])
    _assert_one_line_error(run, "outside 0..19")


@pytest.mark.parametrize(
    "field, values, words",
    [
        ("label", (150, 0), "(field label) holds the label 150, outside 0..99"),
        ("coarse_label", (0, 20), "(field coarse_label) holds the label 20, outside 0..19"),
    ],
)
def test_labels_out_of_range_inside_a_beton(field, values, words, synthetic_root, tmp_path):
    """A beton written elsewhere (its hash recorded) with labels the model has no class for."""
    from fastcifar.data.loaders import build_loader

    root = _copy(synthetic_root, tmp_path)
    path = root / "synthetic" / "test.beton"
    images, fine, coarse = synthetic.make_arrays(50, 100, 0)
    fine[7], coarse[7] = values
    beton.write_beton(path, images, fine, coarse)
    meta = json.loads((root / "synthetic" / "meta.json").read_text())
    meta["hashes"]["test.beton"] = integrity.content_hash(path)
    meta["files"]["test.beton"] = path.stat().st_size
    (root / "synthetic" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="rebuild it with `python -m fastcifar.data prepare") as caught:
        build_loader("gpu", "test", root=root, dataset="synthetic")
    assert words in str(caught.value)


# ---------------------------------------------------------------- damaged meta.json


def _meta_cases(meta: dict) -> dict[str, str]:
    def changed(**kv):
        return json.dumps({**meta, **kv})

    partial = json.dumps(meta)
    without_hashes = dict(meta)
    del without_hashes["hashes"]
    return {
        "empty": ("", "is damaged (empty)"),
        "partial": (partial[: len(partial) // 2], "is damaged (not JSON"),
        "a list": ("[1, 2]", "it holds a list, not an object"),
        "num_classes a string": (changed(num_classes="100"), "'num_classes' is '100', not of type int"),
        "num_classes a bool": (changed(num_classes=True), "'num_classes' is True, not of type int"),
        "classes not matching": (changed(classes=["a"]), "num_classes 100 does not match the 1 class names"),
        "no hashes": (json.dumps(without_hashes), "the key 'hashes' is missing"),
        "hash not a digest": (
            changed(hashes={"train.beton": 5, "test.beton": 5}),
            "hashes['train.beton'] is 5, not a blake2b digest",
        ),
        "counts wrong": (changed(counts={"train": "many", "test": 3}), "counts['train'] is 'many'"),
        "mean wrong": (changed(mean=[0.5, None, 0.5]), "'mean' is [0.5, None, 0.5], not three numbers"),
        "older format": (changed(format_version=1), "format version 1, this version of fastcifar writes 2"),
        "not UTF-8": ("\udcff", "not UTF-8"),
    }


def test_damaged_meta_json_is_one_line_everywhere(synthetic_root, tmp_path):
    from fastcifar.data.loaders import build_loader

    root = _copy(synthetic_root, tmp_path)
    path = root / "synthetic" / "meta.json"
    good = json.loads(path.read_text())
    for case, (text, words) in _meta_cases(good).items():
        path.write_bytes(text.encode(errors="surrogateescape"))
        for call in (
            lambda: prep.load_meta(root, "synthetic"),
            lambda: build_loader("gpu", "test", root=root, dataset="synthetic"),
        ):
            with pytest.raises(UserError) as caught:
                call()
            message = str(caught.value)
            assert message.startswith(f"{path} is damaged"), (case, message)
            assert words in message and "\n" not in message, (case, message)
            assert "prepare --dataset synthetic" in message
    run = _run(["info", "--dataset", "synthetic", "--root", str(root)])
    _assert_one_line_error(run, "meta.json is damaged")


def test_prepare_rebuilds_over_a_damaged_meta_json(synthetic_root, tmp_path, capsys):
    root = _copy(synthetic_root, tmp_path)
    (root / "synthetic" / "meta.json").write_text('{"dataset": "synthetic"')
    capsys.readouterr()
    prep.prepare(dataset="synthetic", root=root, n_train=1024, n_test=300, seed=0)
    out = capsys.readouterr().out
    assert "meta.json is damaged" in out and "prepared synthetic data" in out
    assert prep.load_meta(root, "synthetic")["counts"] == {"train": 1024, "test": 300}


# ---------------------------------------------------------------- flags


@pytest.mark.parametrize(
    "args, words",
    [
        (
            ["prepare", "--dataset", "synthetic", "--ntrain", "5"],
            "unknown flag --ntrain for prepare; valid flags: --dataset",
        ),
        (["prepare", "--dataset", "synthetic", "--n_train=40", "7"], "unexpected argument '7'"),
        (["prepare", "--dataset", "synthetic", "--", "--n_train", "40"], "nothing may follow --"),
        (["info", "--dataset", "synthetic", "--verbose"], "unknown flag --verbose for info"),
    ],
)
def test_flag_mistakes_are_rejected_before_any_work(args, words, tmp_path):
    root = tmp_path / "data"
    started = time.monotonic()
    run = _run([*args, "--root", str(root)])
    _assert_one_line_error(run, words)
    assert not root.exists()  # nothing was prepared first
    assert time.monotonic() - started < 60


def test_flags_that_fire_accepts_still_work(tmp_path):
    run = _run(
        ["prepare", "--dataset=synthetic", "--root", str(tmp_path), "--n-train", "40", "--n_test=10", "--nodownload"]
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert prep.load_meta(tmp_path, "synthetic")["counts"] == {"train": 40, "test": 10}


# ---------------------------------------------------------------- ~ in --root


def test_tilde_root_names_the_same_folder_for_prepare_info_and_loaders(synthetic_root, tmp_path, monkeypatch):
    from fastcifar.data.loaders import beton_path

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(synthetic_root, tmp_path / "d")
    assert prep.dataset_dir("~/d", "synthetic") == tmp_path / "d" / "synthetic"
    assert prep.load_meta("~/d", "synthetic")["counts"] == {"train": 1024, "test": 300}
    assert beton_path("~/d", "synthetic", "test") == tmp_path / "d" / "synthetic" / "test.beton"
    run = _run(["info", "--dataset", "synthetic", "--root=~/d"], env={**os.environ, "HOME": str(tmp_path)})
    assert run.returncode == 0 and str(tmp_path / "d" / "synthetic") in run.stdout, run.stderr
    assert not (REPO / "~").exists()


# ---------------------------------------------------------------- package surface


def test_package_surface_is_unambiguous():
    code = textwrap.dedent("""
        import importlib, inspect
        import fastcifar.data as data
        assert data.DATASETS == ("cifar100", "cifar10", "synthetic")
        data.load_meta  # a lazy re-export
        assert not hasattr(data, "prepare") or inspect.ismodule(data.prepare)
        import fastcifar.data.prepare
        assert inspect.ismodule(data.prepare) and callable(data.prepare.prepare)
        from fastcifar.data.prepare import prepare, dataset_dir, load_meta
        from fastcifar.data.loaders import gpu, default_num_workers
        assert gpu.GpuLoader.__module__ == "fastcifar.data.loaders.gpu"
        try:
            importlib.import_module("fastcifar.data.loaders.gpu_loader")
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError("gpu_loader still importable")
        assert default_num_workers("torch") <= 8 and default_num_workers("ffcv") >= 1
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
