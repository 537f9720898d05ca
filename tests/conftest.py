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
