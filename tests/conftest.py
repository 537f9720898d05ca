"""Test-wide settings. Kept import-light: heavy imports happen inside the tests."""

import os

# Triton kernels run on CPU tensors through the interpreter; must be set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
# Two cores, two xdist workers: one intra-op thread each keeps them from fighting.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A data root holding a prepared synthetic dataset (1024 train / 300 test images, seed 0).

    Use as ``build_loader(..., root=synthetic_root, dataset="synthetic")`` or
    ``load_meta(synthetic_root, "synthetic")``; the betons are in ``synthetic_root / "synthetic"``.
    """
    # Betons need FFCV; where it is absent (e.g. a GPU machine running the cuda tests) skip, not fail.
    pytest.importorskip("ffcv")
    from fastcifar.data.prepare import prepare

    root = tmp_path_factory.mktemp("data")
    prepare(dataset="synthetic", root=root, n_train=1024, n_test=300, seed=0)
    return root


@pytest.fixture(scope="session")
def train_data(tmp_path_factory):
    """A small synthetic dataset (64 train / 40 test images, seed 0), shared by the training tests."""
    pytest.importorskip("ffcv")
    from fastcifar.data.prepare import prepare

    root = tmp_path_factory.getbasetemp() / "train-synthetic"
    prepare(dataset="synthetic", root=root, n_train=64, n_test=40, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_flags(train_data):
    """Flags of a one-epoch CPU run of the tiny ``sk_densenet`` on ``train_data`` (4 steps of 16)."""
    from tiny_runs import one_epoch_flags

    from fastcifar.models import tiny_overrides

    return dict(arch="sk_densenet", model_kwargs=tiny_overrides("sk_densenet"), **one_epoch_flags(train_data))


@pytest.fixture
def call_compiling_triton():
    """``call(test_file, function)``: run a module-level function of a test file in a fresh Python
    with ``TRITON_INTERPRET=0`` and return its result (JSON round-tripped: tuples come back as lists).

    For checks that compile the Triton kernels for real without a GPU: this process runs them
    through the interpreter, and Triton reads the variable once, when it is imported.
    """
    import json
    import subprocess
    import sys

    def call(test_file: str, function: str):
        env = {**os.environ, "TRITON_INTERPRET": "0"}
        script = f"import json, runpy; print(json.dumps(runpy.run_path({test_file!r})[{function!r}]()))"
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600, check=False
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    return call


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)``: make creating anything under ``folder`` fail with EROFS in this process.

    A read-only mount, as root sees it too (the tests run as root here, and root writes into a chmod
    0555 folder). Covers what the code creates files and folders with: ``os.open`` with ``O_CREAT``
    (``tempfile.mkstemp``, hence every atomic write) and ``os.mkdir`` (``Path.mkdir``).
    """
    import errno

    roots: list[str] = []
    real_open, real_mkdir = os.open, os.mkdir

    def blocked(path) -> bool:
        target = os.path.abspath(os.fsdecode(path))
        return any(target == root or target.startswith(root + os.sep) for root in roots)

    def refuse(path):
        return OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def fake_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and blocked(path):
            raise refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if blocked(path):
            raise refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    return lambda folder: roots.append(os.path.abspath(folder))
