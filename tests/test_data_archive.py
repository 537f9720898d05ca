"""Archive handling without FFCV: synthetic arrays/archives, safe extraction, pickles, download."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from fastcifar.data import archive as archives
from fastcifar.data import synthetic
from fastcifar.errors import UserError

# ---------------------------------------------------------------- synthetic arrays


def test_make_arrays_is_deterministic_balanced_and_not_flat():
    images, fine, coarse = synthetic.make_arrays(500, num_classes=100, seed=7)
    again = synthetic.make_arrays(500, num_classes=100, seed=7)
    other = synthetic.make_arrays(500, num_classes=100, seed=8)
    assert images.shape == (500, 32, 32, 3) and images.dtype == np.uint8
    assert fine.shape == coarse.shape == (500,) and fine.dtype == coarse.dtype == np.int64
    for a, b in zip((images, fine, coarse), again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(images, other[0])
    np.testing.assert_array_equal(np.bincount(fine, minlength=100), np.full(100, 5))
    np.testing.assert_array_equal(coarse, fine // 5)
    # Real texture: every image varies over its pixels, and classes differ in mean colour.
    assert (images.reshape(500, -1).std(axis=1) > 5).all()
    class_means = np.stack([images[fine == k].mean(axis=(0, 1, 2)) for k in range(100)])
    assert class_means.std(axis=0).min() > 10


def test_make_arrays_streams_share_class_looks_but_not_images():
    train = synthetic.make_arrays(1000, num_classes=10, seed=0, stream=0)
    test = synthetic.make_arrays(1000, num_classes=10, seed=0, stream=1)
    assert not np.array_equal(train[0], test[0])
    np.testing.assert_array_equal(train[2], np.zeros(1000))  # fewer than 20 classes: no superclasses
    # A nearest-class-mean classifier fit on one stream works on the other: the data is learnable.
    means = np.stack([train[0][train[1] == k].reshape(-1, 3072).mean(0) for k in range(10)])
    dists = ((test[0].reshape(-1, 1, 3072).astype(np.float32) - means[None]) ** 2).sum(-1)
    assert (dists.argmin(1) == test[1]).mean() > 0.5


# ---------------------------------------------------------------- archive format


def _load_member(path: Path, name: str) -> dict:
    with tarfile.open(path) as tar:
        return pickle.load(tar.extractfile(name), encoding="bytes")


def test_cifar100_archive_has_the_official_layout(tmp_path):
    path = tmp_path / "a.tar.gz"
    md5 = synthetic.write_archive(path, 30, 12, seed=1)
    assert md5 == hashlib.md5(path.read_bytes()).hexdigest() == archives.md5sum(path)
    assert synthetic.write_archive(tmp_path / "b.tar.gz", 30, 12, seed=1) == md5  # same bytes again
    with tarfile.open(path) as tar:
        assert sorted(tar.getnames()) == [
            "cifar-100-python",
            "cifar-100-python/meta",
            "cifar-100-python/test",
            "cifar-100-python/train",
        ]
    train = _load_member(path, "cifar-100-python/train")
    assert set(train) == {b"data", b"fine_labels", b"coarse_labels", b"filenames", b"batch_label"}
    images, fine, coarse = synthetic.make_arrays(30, 100, seed=1, stream=0)
    assert train[b"data"].dtype == np.uint8 and train[b"data"].shape == (30, 3072)
    # Row layout: 1024 red values, then 1024 green, then 1024 blue, each row-major over 32x32.
    np.testing.assert_array_equal(train[b"data"][4, :1024], images[4, :, :, 0].ravel())
    np.testing.assert_array_equal(train[b"data"][4, 1024:2048], images[4, :, :, 1].ravel())
    np.testing.assert_array_equal(train[b"data"][4, 2048:], images[4, :, :, 2].ravel())
    assert train[b"fine_labels"] == fine.tolist() and train[b"coarse_labels"] == coarse.tolist()
    assert len(train[b"filenames"]) == 30 and isinstance(train[b"filenames"][0], bytes)
    meta = _load_member(path, "cifar-100-python/meta")
    assert len(meta[b"fine_label_names"]) == 100 and len(meta[b"coarse_label_names"]) == 20
    assert all(name.startswith(b"synthetic") for name in meta[b"fine_label_names"] + meta[b"coarse_label_names"])


def test_extract_and_read_cifar100_match_the_generator(tmp_path):
    path = tmp_path / "a.tar.gz"
    synthetic.write_archive(path, 40, 15, seed=2)
    target = archives.extract(path, tmp_path / "out")
    spec = archives.SPECS["cifar100"]
    # Both the folder itself and its parent are accepted (torchvision's layout).
    assert archives.find_folder(target, spec) == target / "cifar-100-python"
    assert archives.find_folder(target / "cifar-100-python", spec) == target / "cifar-100-python"
    data = archives.read_folder(target / "cifar-100-python", spec)
    for split, stream, n in ((data.train, 0, 40), (data.test, 1, 15)):
        images, fine, coarse = synthetic.make_arrays(n, 100, seed=2, stream=stream)
        np.testing.assert_array_equal(split.images, images)
        np.testing.assert_array_equal(split.fine, fine)
        np.testing.assert_array_equal(split.coarse, coarse)
    assert data.classes == synthetic.class_names(100) and data.superclasses == synthetic.superclass_names(100)


def test_cifar10_archive_layout_round_trips(tmp_path):
    path = tmp_path / "c10.tar.gz"
    synthetic.write_archive(path, 53, 11, seed=4, dataset="cifar10")
    batch = _load_member(path, "cifar-10-batches-py/data_batch_2")
    assert set(batch) == {b"data", b"labels", b"filenames", b"batch_label"}
    assert set(_load_member(path, "cifar-10-batches-py/batches.meta")) >= {b"label_names"}
    spec = archives.SPECS["cifar10"]
    data = archives.read_folder(archives.find_folder(archives.extract(path, tmp_path / "x"), spec), spec)
    images, fine, _ = synthetic.make_arrays(53, 10, seed=4, stream=0)
    np.testing.assert_array_equal(data.train.images, images)  # five batches concatenated in order
    np.testing.assert_array_equal(data.train.fine, fine)
    np.testing.assert_array_equal(data.train.coarse, np.zeros(53))
    assert len(data.test.fine) == 11 and len(data.classes) == 10 and data.superclasses == []


# ---------------------------------------------------------------- unsafe or damaged archives


def _tar_with(path: Path, member: tarfile.TarInfo, payload: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("cifar-100-python/meta")
        ok.size = 1
        tar.addfile(ok, io.BytesIO(b"m"))
        if member.isfile():
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
        else:
            tar.addfile(member)
    return path


def _link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "member, words",
    [
        (tarfile.TarInfo("../escaped"), "escapes the target"),
        (tarfile.TarInfo("cifar-100-python/../../escaped"), "escapes the target"),
        (tarfile.TarInfo("/tmp/absolute-escaped"), "absolute path"),
        (_link("cifar-100-python/train", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        (_link("cifar-100-python/train", tarfile.LNKTYPE, "cifar-100-python/meta"), "link"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink"],
)
def test_extract_rejects_unsafe_members_before_writing_anything(tmp_path, member, words):
    path = _tar_with(tmp_path / "evil.tar.gz", member)
    target = tmp_path / "deep" / "target"
    with pytest.raises(UserError, match=words):
        archives.extract(path, target)
    assert list(target.iterdir()) == []  # not even the harmless member was written
    assert not (tmp_path / "deep" / "escaped").exists() and not (tmp_path / "escaped").exists()


def test_truncated_archive_is_a_user_error(tmp_path):
    path = tmp_path / "a.tar.gz"
    synthetic.write_archive(path, 200, 10)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        archives.extract(path, tmp_path / "out")
    with pytest.raises(UserError, match="truncated or corrupt"):
        archives.archive_content_size(path)
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive at all")
    with pytest.raises(UserError, match="truncated or corrupt"):
        archives.extract(tmp_path / "junk.tar.gz", tmp_path / "out2")


def test_pickles_may_only_hold_arrays(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [Evil()]}, protocol=2))
    with pytest.raises(UserError, match="not a valid CIFAR pickle"):
        archives.read_folder(folder, archives.SPECS["cifar100"])


def test_missing_split_file_is_a_user_error(tmp_path):
    synthetic.write_archive(tmp_path / "a.tar.gz", 10, 5)
    folder = archives.extract(tmp_path / "a.tar.gz", tmp_path / "x") / "cifar-100-python"
    (folder / "test").unlink()
    with pytest.raises(UserError, match="missing"):
        archives.read_folder(folder, archives.SPECS["cifar100"])


def test_unknown_dataset_spec():
    with pytest.raises(UserError, match="unknown dataset 'cifar1000'.*cifar10"):
        archives.get_spec("cifar1000")


# ---------------------------------------------------------------- download


@pytest.fixture
def served_archive(tmp_path):
    """A generated CIFAR-100 archive and a spec whose URL (file://) and md5 point at it."""
    path = tmp_path / "served" / "cifar-100-python.tar.gz"
    md5 = synthetic.write_archive(path, 20, 10, seed=5)
    spec = dataclasses.replace(archives.SPECS["cifar100"], url=path.as_uri(), md5=md5)
    return path, spec


def test_download_from_file_url(tmp_path, served_archive):
    source, spec = served_archive
    dest = archives.download(spec, tmp_path / "downloads" / spec.filename)
    assert dest.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == [spec.filename]  # no temporary left behind


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, served_archive):
    _, spec = served_archive
    dest = tmp_path / "downloads" / spec.filename
    with pytest.raises(UserError, match="md5"):
        archives.download(dataclasses.replace(spec, md5="0" * 32), dest)
    assert list(dest.parent.iterdir()) == []


class _Response:
    """Minimal urlopen response: serves ``payload`` in chunks, optionally failing after ``fail_after`` bytes."""

    def __init__(self, payload: bytes, dest: Path, fail_after: int | None = None, length: int | None = None):
        self.payload, self.dest, self.fail_after, self.pos = payload, dest, fail_after, 0
        self.headers = {"Content-Length": str(len(payload) if length is None else length)}
        self.final_name_seen_during_download = False

    def read(self, size: int) -> bytes:
        self.final_name_seen_during_download |= self.dest.exists()
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise ConnectionResetError(104, "Connection reset by peer")
        chunk = self.payload[self.pos : self.pos + min(size, 1000)]
        self.pos += len(chunk)
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_writes_a_temporary_then_renames(tmp_path, served_archive, monkeypatch):
    source, spec = served_archive
    dest = tmp_path / "downloads" / spec.filename
    response = _Response(source.read_bytes(), dest)
    monkeypatch.setattr(archives.urllib.request, "urlopen", lambda url, timeout: response)
    archives.download(spec, dest)
    assert not response.final_name_seen_during_download  # bytes went to another name meanwhile
    assert dest.read_bytes() == source.read_bytes()


def test_interrupted_download_leaves_nothing(tmp_path, served_archive, monkeypatch):
    source, spec = served_archive
    dest = tmp_path / "downloads" / spec.filename
    monkeypatch.setattr(
        archives.urllib.request, "urlopen", lambda url, timeout: _Response(source.read_bytes(), dest, fail_after=3000)
    )
    with pytest.raises(UserError, match="cannot download.*--archive"):
        archives.download(spec, dest)
    assert list(dest.parent.iterdir()) == []


def test_short_download_is_reported_as_truncated(tmp_path, served_archive, monkeypatch):
    source, spec = served_archive
    dest = tmp_path / "downloads" / spec.filename
    payload = source.read_bytes()
    monkeypatch.setattr(
        archives.urllib.request, "urlopen", lambda url, timeout: _Response(payload, dest, length=len(payload) + 10)
    )
    with pytest.raises(UserError, match="stopped after"):
        archives.download(spec, dest)
    assert list(dest.parent.iterdir()) == []


def test_offline_download_says_how_to_place_the_archive(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(archives.urllib.request, "urlopen", offline)
    spec = archives.SPECS["cifar100"]
    dest = tmp_path / "downloads" / spec.filename
    with pytest.raises(UserError) as info:
        archives.download(spec, dest)
    message = str(info.value)
    assert "\n" not in message
    for words in (spec.url, spec.md5, str(dest), "--archive", "name resolution"):
        assert words in message
    assert list(dest.parent.iterdir()) == []


def test_pickles_with_numpy1_module_names_load(tmp_path):
    # The official pickles name numpy 1.x's module (numpy.core.multiarray); numpy 2 renamed it.
    images, fine, coarse = synthetic.make_arrays(6, 100, seed=0)
    record = {
        b"data": images.transpose(0, 3, 1, 2).reshape(6, 3072),
        b"fine_labels": fine.tolist(),
        b"coarse_labels": coarse.tolist(),
    }
    payload = pickle.dumps(record, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in payload
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(payload)
    split = archives._read_split(folder, ("train",), archives.SPECS["cifar100"], num_superclasses=20)
    np.testing.assert_array_equal(split.images, images)
    np.testing.assert_array_equal(split.fine, fine)
