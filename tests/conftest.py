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
    from fastcifar.models import tiny_overrides

    return dict(
        arch="sk_densenet",
        model_kwargs=tiny_overrides("sk_densenet"),
        epochs=1,
        batch_size=16,
        eval_batch_size=16,
        dataset="synthetic",
        data_root=str(train_data),
        device="cpu",
        workers=1,
    )
