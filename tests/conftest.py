"""Test-wide settings. Kept import-light: heavy imports happen inside the tests."""

import os

# Triton kernels run on CPU tensors through the interpreter; must be set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
# Two cores, two xdist workers: one intra-op thread each keeps them from fighting.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
