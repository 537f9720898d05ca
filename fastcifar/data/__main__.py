"""Command line: ``python -m fastcifar.data prepare|info``.

Examples::

    python -m fastcifar.data prepare                          # download CIFAR-100, write data/cifar100/
    python -m fastcifar.data prepare --archive ~/cifar-100-python.tar.gz
    python -m fastcifar.data prepare --dataset synthetic --n_train 5000 --n_test 1000
    python -m fastcifar.data info --dataset synthetic
"""

from __future__ import annotations

import json

from fastcifar.cli import run_cli
from fastcifar.data.prepare import dataset_dir, load_meta, prepare

PROG = "fastcifar.data"


def info(dataset: str = "cifar100", root: str = "data", full: bool = False) -> None:
    """Print a summary of <root>/<dataset>/meta.json (--full prints all of it as JSON)."""
    meta = load_meta(root, dataset)
    if full:
        print(json.dumps(meta, indent=2))
        return
    folder = dataset_dir(root, dataset)
    classes = meta["classes"]
    source = meta["source"]
    rows = [
        ("folder", str(folder)),
        ("dataset", meta["dataset"] + ("  (SYNTHETIC: not real images)" if meta.get("synthetic") else "")),
        ("classes", f"{meta['num_classes']}: {', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}"),
        ("superclasses", str(meta.get("num_superclasses", len(meta.get("superclasses", []))))),
        ("images", ", ".join(f"{split} {count}" for split, count in meta["counts"].items())),
        ("mean (0..1)", " ".join(f"{v:.4f}" for v in meta["mean"])),
        ("std (0..1)", " ".join(f"{v:.4f}" for v in meta["std"])),
        ("source", f"{source.get('kind')} {source.get('name', source.get('archive', ''))} md5 {source.get('md5')}"),
        ("files", ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in meta["files"].items())),
        ("ffcv", meta.get("ffcv_version", "?")),
        ("created", meta.get("created_at", "?")),
    ]
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


COMMANDS = {"prepare": prepare, "info": info}


def main() -> None:
    run_cli(COMMANDS, prog=PROG)


if __name__ == "__main__":
    main()
