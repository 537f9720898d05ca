"""prepare(): archive -> FFCV betons + meta.json, read back through FFCV; errors; atomicity; idempotency."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import urllib.error
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from cli_checks import assert_user_error

from fastcifar.data import archive as archives
from fastcifar.data import beton, synthetic
from fastcifar.data import prepare as prep
from fastcifar.errors import UserError

REPO = Path(__file__).resolve().parents[1]
# The sizes and seed of conftest's session-wide ``synthetic_root`` (shared with other test files).
N_TRAIN, N_TEST, SEED = 1024, 300, 0


@pytest.fixture
def prepared(synthetic_root) -> Path:
    """conftest's prepared synthetic root; tests here read it or copy it, never change it."""
    return synthetic_root


def _files_state(folder: Path) -> dict[str, tuple[int, int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.iterdir())}


def _assert_split_equal(path: Path, expected: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    images, fine, coarse = beton.read_beton(path)
    assert images.dtype == np.uint8 and fine.dtype == coarse.dtype == np.int64
    np.testing.assert_array_equal(images, expected[0])
    np.testing.assert_array_equal(fine, expected[1])
    np.testing.assert_array_equal(coarse, expected[2])


# ---------------------------------------------------------------- round trip, meta, idempotency


def test_every_record_reads_back_bit_for_bit_in_order(prepared):
    folder = prep.dataset_dir(prepared, "synthetic")
    assert sorted(p.name for p in folder.iterdir()) == [".verified.json", "meta.json", "test.beton", "train.beton"]
    _assert_split_equal(folder / "train.beton", synthetic.make_arrays(N_TRAIN, 100, SEED, stream=0))
    _assert_split_equal(folder / "test.beton", synthetic.make_arrays(N_TEST, 100, SEED, stream=1))


def test_meta_figures_match_numpy(prepared, tmp_path):
    meta = prep.load_meta(prepared, "synthetic")
    images, fine, _ = synthetic.make_arrays(N_TRAIN, 100, SEED, stream=0)
    _, test_fine, _ = synthetic.make_arrays(N_TEST, 100, SEED, stream=1)
    scaled = images.astype(np.float64) / 255
    # numpy sums in float64 (relative rounding ~1e-12); meta's figures come from exact integer sums.
    np.testing.assert_allclose(meta["mean"], scaled.mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(meta["std"], scaled.std(axis=(0, 1, 2)), rtol=1e-9)
    assert meta["counts"] == {"train": N_TRAIN, "test": N_TEST}
    assert meta["class_counts"]["train"] == np.bincount(fine, minlength=100).tolist()
    assert meta["class_counts"]["test"] == np.bincount(test_fine, minlength=100).tolist()
    assert meta["dataset"] == "synthetic" and meta["synthetic"] is True and meta["num_classes"] == 100
    assert meta["classes"] == synthetic.class_names(100) and meta["superclasses"] == synthetic.superclass_names(100)
    assert meta["image_shape"] == [32, 32, 3]
    assert meta["ffcv_version"] == metadata.version("ffcv")
    assert meta["archive_md5"] == synthetic.write_archive(tmp_path / "same.tar.gz", N_TRAIN, N_TEST, seed=SEED)
    folder = prep.dataset_dir(prepared, "synthetic")
    assert meta["files"] == {name: (folder / name).stat().st_size for name in ("train.beton", "test.beton")}


def test_second_run_is_a_no_op(prepared, capsys):
    folder = prep.dataset_dir(prepared, "synthetic")
    before = _files_state(folder)
    assert prep.prepare(dataset="synthetic", root=prepared, n_train=N_TRAIN, n_test=N_TEST, seed=SEED) == folder
    assert "nothing to do" in capsys.readouterr().out
    assert _files_state(folder) == before


def test_cli_second_run_and_info(prepared):
    cmd = [sys.executable, "-m", "fastcifar.data"]
    run = subprocess.run(
        [
            *cmd,
            "prepare",
            "--dataset",
            "synthetic",
            "--root",
            str(prepared),
            "--n_train",
            str(N_TRAIN),
            "--n_test",
            str(N_TEST),
            "--seed",
            str(SEED),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "nothing to do" in run.stdout
    info = subprocess.run(
        [*cmd, "info", "--dataset", "synthetic", "--root", str(prepared)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert info.returncode == 0, info.stderr
    assert "SYNTHETIC" in info.stdout and f"train {N_TRAIN}, test {N_TEST}" in info.stdout


@pytest.fixture
def served_cifar100(tmp_path, monkeypatch):
    """Make the 'official' CIFAR-100 a generated archive served from a file:// URL with its md5."""
    path = tmp_path / "served" / "cifar-100-python.tar.gz"
    md5 = synthetic.write_archive(path, 60, 20, seed=9)
    served = dataclasses.replace(archives.SPECS["cifar100"], url=path.as_uri(), md5=md5)
    monkeypatch.setitem(archives.SPECS, "cifar100", served)
    return path, md5


def test_official_route_downloads_verifies_and_prepares(tmp_path, served_cifar100, capsys):
    source, md5 = served_cifar100
    root = tmp_path / "root"
    folder = prep.prepare(dataset="cifar100", root=root)
    assert (root / "downloads" / "cifar-100-python.tar.gz").read_bytes() == source.read_bytes()
    assert sorted(p.name for p in root.iterdir()) == ["cifar100", "downloads"]  # scratch folders are gone
    _assert_split_equal(folder / "train.beton", synthetic.make_arrays(60, 100, 9, stream=0))
    meta = prep.load_meta(root, "cifar100")
    assert meta["synthetic"] is False and meta["archive_md5"] == md5 and meta["counts"] == {"train": 60, "test": 20}
    # Recognised as prepared without the archive and without network.
    (root / "downloads" / "cifar-100-python.tar.gz").unlink()
    capsys.readouterr()
    prep.prepare(dataset="cifar100", root=root, download=False)
    assert "nothing to do" in capsys.readouterr().out


def test_extracted_cifar10_folder_is_accepted(tmp_path):
    synthetic.write_archive(tmp_path / "c10.tar.gz", 50, 20, seed=6, dataset="cifar10")
    extracted = archives.extract(tmp_path / "c10.tar.gz", tmp_path / "torchvision")  # holds cifar-10-batches-py/
    folder = prep.prepare(dataset="cifar10", root=tmp_path / "root", archive=extracted)
    images, fine, _ = synthetic.make_arrays(20, 10, 6, stream=1)
    _assert_split_equal(folder / "test.beton", (images, fine, np.zeros(20, dtype=np.int64)))
    meta = prep.load_meta(tmp_path / "root", "cifar10")
    assert meta["source"]["kind"] == "folder" and meta["num_classes"] == 10 and meta["superclasses"] == []


# ---------------------------------------------------------------- user errors (function)


def _truncated(tmp_path: Path) -> Path:
    path = tmp_path / "cut.tar.gz"
    synthetic.write_archive(path, 300, 10)
    path.write_bytes(path.read_bytes()[:100_000])
    return path


def _traversal(tmp_path: Path) -> Path:
    import io
    import tarfile

    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-100-python/../../../escaped")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    return path


def _use_md5_of(monkeypatch, path: Path) -> None:
    spec = dataclasses.replace(archives.SPECS["cifar100"], md5=archives.md5sum(path))
    monkeypatch.setitem(archives.SPECS, "cifar100", spec)


def test_checksum_mismatch(tmp_path):
    path = tmp_path / "cifar-100-python.tar.gz"
    synthetic.write_archive(path, 10, 5)
    with pytest.raises(UserError, match="checksum mismatch.*eb9058c3a382ffc7106e4002c42a8d85"):
        prep.prepare(dataset="cifar100", root=tmp_path / "root", archive=path)
    assert not (tmp_path / "root" / "cifar100").exists()


def test_truncated_archive(tmp_path, monkeypatch):
    path = _truncated(tmp_path)
    _use_md5_of(monkeypatch, path)
    with pytest.raises(UserError, match="truncated or corrupt"):
        prep.prepare(dataset="cifar100", root=tmp_path / "root", archive=path)
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == []


def test_path_traversal_member(tmp_path, monkeypatch):
    path = _traversal(tmp_path)
    _use_md5_of(monkeypatch, path)
    with pytest.raises(UserError, match="escapes the target folder"):
        prep.prepare(dataset="cifar100", root=tmp_path / "a" / "b" / "root", archive=path)
    assert not any(p.name == "escaped" for p in tmp_path.rglob("*"))


def test_unknown_dataset(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'imagenet'; choose one of cifar100, cifar10, synthetic"):
        prep.prepare(dataset="imagenet", root=tmp_path)
    with pytest.raises(UserError, match="unknown dataset"):
        prep.load_meta(tmp_path, "imagenet")


def test_unwritable_root(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(UserError, match="cannot write to --root"):
        prep.prepare(dataset="synthetic", root=tmp_path / "a-file" / "data")


def test_not_enough_free_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(prep.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(UserError, match="not enough free disk.*1 MiB free"):
        prep.prepare(dataset="synthetic", root=tmp_path)
    assert not (tmp_path / "synthetic").exists()


def test_download_impossible_says_how_to_place_the_archive(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("Network is unreachable")

    monkeypatch.setattr(archives.urllib.request, "urlopen", offline)
    dest = tmp_path / "downloads" / "cifar-100-python.tar.gz"
    with pytest.raises(UserError, match=f"cannot download .*copy it to {dest} or pass --archive"):
        prep.prepare(dataset="cifar100", root=tmp_path)
    with pytest.raises(UserError, match="downloading is off"):
        prep.prepare(dataset="cifar100", root=tmp_path, download=False)
    assert list((tmp_path / "downloads").iterdir()) == []


def test_synthetic_only_flags(tmp_path):
    with pytest.raises(UserError, match="only to --dataset synthetic"):
        prep.prepare(dataset="cifar100", root=tmp_path, n_train=10)
    with pytest.raises(UserError, match="--n_test must be a positive integer"):
        prep.prepare(dataset="synthetic", root=tmp_path, n_test=0)


def test_load_meta_of_unprepared_dataset(tmp_path):
    with pytest.raises(UserError, match="run `python -m fastcifar.data prepare --dataset cifar10"):
        prep.load_meta(tmp_path, "cifar10")


# ---------------------------------------------------------------- interrupted writes


def test_writer_process_failure_leaves_no_beton(tmp_path, monkeypatch):
    original = beton._Records.__getitem__

    def fail_late(self, i):  # runs in FFCV's (forked) writer processes
        if i == N_TRAIN - 5:
            raise OSError(28, "No space left on device")
        return original(self, i)

    monkeypatch.setattr(beton._Records, "__getitem__", fail_late)
    with pytest.raises(UserError, match="writing .*train.beton failed"):
        prep.prepare(dataset="synthetic", root=tmp_path, n_train=N_TRAIN, n_test=N_TEST, seed=SEED)
    assert list((tmp_path / "synthetic").iterdir()) == []  # no beton, no temporary, no meta.json


def test_ctrl_c_during_write_leaves_no_beton(tmp_path, monkeypatch):
    from ffcv.writer import DatasetWriter

    def interrupted(self, allocations):
        raise KeyboardInterrupt

    monkeypatch.setattr(DatasetWriter, "finalize", interrupted)
    images, fine, coarse = synthetic.make_arrays(50, 100, 0)
    with pytest.raises(KeyboardInterrupt):
        beton.write_beton(tmp_path / "x.beton", images, fine, coarse)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_reprepare_is_not_taken_as_prepared(prepared, tmp_path, monkeypatch, capsys):
    root = tmp_path / "copy"
    shutil.copytree(prepared, root)
    real_write = prep.write_beton

    def write_train_only(path, *arrays):
        if path.name == "test.beton":
            raise KeyboardInterrupt
        return real_write(path, *arrays)

    monkeypatch.setattr(prep, "write_beton", write_train_only)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(dataset="synthetic", root=root, n_train=N_TRAIN, n_test=N_TEST, seed=SEED + 1)
    assert not (root / "synthetic" / "meta.json").exists()
    monkeypatch.undo()
    capsys.readouterr()
    prep.prepare(dataset="synthetic", root=root, n_train=N_TRAIN, n_test=N_TEST, seed=SEED)
    assert "nothing to do" not in capsys.readouterr().out  # the half-replaced folder was redone
    # Same inputs as the original folder again (the beton bytes themselves may differ: FFCV's
    # writer processes claim pages in whatever order they get to them).
    assert prep.load_meta(root, "synthetic")["fingerprint"] == prep.load_meta(prepared, "synthetic")["fingerprint"]
    assert prep.load_meta(root, "synthetic")["source"]["seed"] == SEED


# ---------------------------------------------------------------- damaged betons


def test_read_beton_errors(prepared, tmp_path):
    with pytest.raises(UserError, match="does not exist.*prepare"):
        beton.read_beton(tmp_path / "absent.beton")
    (tmp_path / "junk.beton").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="not a (readable|complete)"):
        beton.read_beton(tmp_path / "junk.beton")
    whole = (prep.dataset_dir(prepared, "synthetic") / "test.beton").read_bytes()
    (tmp_path / "cut.beton").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match="not a (readable|complete)"):
        beton.read_beton(tmp_path / "cut.beton")


# ---------------------------------------------------------------- user errors through the CLI

# Runs the CLI with the official CIFAR-100 md5 replaced by argv[1], so damaged archives get past
# the checksum and reach extraction (the real archive's md5 cannot be matched by a test file).
_CLI_WITH_MD5 = (
    "import sys, dataclasses; from fastcifar.data import archive as a; "
    "a.SPECS['cifar100'] = dataclasses.replace(a.SPECS['cifar100'], md5=sys.argv.pop(1)); "
    "from fastcifar.data.__main__ import main; main()"
)


def _cli_error(args: list[str], words: str, md5: str | None = None) -> None:
    cmd = [sys.executable, "-m", "fastcifar.data"] if md5 is None else [sys.executable, "-c", _CLI_WITH_MD5, md5]
    run = subprocess.run([*cmd, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert_user_error(run, "fastcifar.data", words)


def test_cli_errors_are_one_line(tmp_path):
    root = str(tmp_path / "root")
    _cli_error(["prepare", "--dataset", "svhn", "--root", root], "unknown dataset 'svhn'")
    mismatched = tmp_path / "cifar-100-python.tar.gz"
    synthetic.write_archive(mismatched, 10, 5)
    _cli_error(["prepare", "--root", root, "--archive", str(mismatched)], "checksum mismatch")
    cut = _truncated(tmp_path)
    _cli_error(["prepare", "--root", root, "--archive", str(cut)], "truncated or corrupt", md5=archives.md5sum(cut))
    evil = _traversal(tmp_path)
    _cli_error(
        ["prepare", "--root", root, "--archive", str(evil)], "escapes the target folder", md5=archives.md5sum(evil)
    )
