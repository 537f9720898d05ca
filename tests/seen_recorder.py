"""Test-side torchrun entry point: ``python -m fastcifar.train`` with a batch hook that records data.

Run as ``torchrun ... tests/seen_recorder.py SEEN_DIR <train flags>``: every rank trains through
:func:`fastcifar.train.main` with a :class:`SeenRecorder` as ``batch_hook`` and dumps the labels
and test-image fingerprints it saw to ``SEEN_DIR/seen-rank<r>.npz``, so a test can check the data
sharding. Recording copies each batch to the host (a sync per step): tests only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch


class SeenRecorder:
    """Collects the labels and test-image fingerprints one rank sees."""

    def __init__(self) -> None:
        self.records: dict[str, list] = {"train_labels": [], "test_labels": [], "test_fingerprints": []}
        # Random projection of each image: distinct images give distinct values (with probability 1).
        self._weights = torch.randn(3 * 32 * 32, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)

    def __call__(self, split: str, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.records[f"{split}_labels"].append(labels.cpu().numpy())
        if split == "test":
            flat = images.detach().cpu().to(dtype=self._weights.dtype).reshape(images.shape[0], -1)
            self.records["test_fingerprints"].append((flat @ self._weights).numpy())

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in self.records.items()}

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **self.arrays())


def main() -> None:
    seen_dir, flags = Path(sys.argv[1]), sys.argv[2:]
    recorder = SeenRecorder()
    from fastcifar.train import main as train_main

    try:
        train_main(flags, batch_hook=recorder)
    finally:
        recorder.save(seen_dir / f"seen-rank{os.environ.get('RANK', '0')}.npz")


if __name__ == "__main__":
    main()
