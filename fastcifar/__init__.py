"""fastcifar: fast, profiled CIFAR-100 training of attention CNNs.

Rooms, each built on the ones before it: ``data`` (archives, betons, loaders) -> ``augment``
(batched per-sample GPU augmentation) -> ``models`` (the study's architectures, one registry) with
``kernels`` (Triton kernels) -> ``training`` (config, step, run, checkpoints) -> ``evaluation``
(load, evaluate and export a trained model), ``profiling`` and ``study``. Underneath all of them:
``cli``, ``errors``, ``atomic``, ``environment``, ``locks``.

Commands: ``python -m fastcifar.data``, ``fastcifar.models``, ``fastcifar.train``,
``fastcifar.evaluate``, ``fastcifar.export``, ``fastcifar.profile``, ``fastcifar.analyze``,
``fastcifar.study``. ``fastcifar.load_model(path)`` loads a trained model (:mod:`fastcifar.evaluation`).
"""

__version__ = "0.1.0"
__all__ = ["__version__", "load_model"]


def __getattr__(name: str):
    """``fastcifar.load_model`` on first use, so that ``import fastcifar`` does not import torch."""
    if name == "load_model":
        from fastcifar.evaluation.loading import load_model

        return load_model
    raise AttributeError(f"module 'fastcifar' has no attribute {name!r}")


def _find_checkout_kernels() -> None:
    """Let ``fastcifar.kernels`` resolve from a checkout that was not installed.

    The Triton kernels live in the repository's top-level ``kernels/`` folder and install as
    ``fastcifar.kernels`` (pyproject's package-dir). Run from a checkout without installing (the
    GPU suite runs with PYTHONPATH=<checkout>) or installed in editable mode, only that one name is
    mapped onto the folder beside the ``fastcifar`` package actually imported, so two checkouts on
    one machine never mix. An installed copy has ``fastcifar/kernels/`` and skips all this.
    """
    import importlib.util
    import os
    import sys

    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
    if os.path.isdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")):
        return
    if not os.path.isfile(os.path.join(folder, "__init__.py")):
        return

    class CheckoutKernels:
        @staticmethod
        def find_spec(name: str, path: object = None, target: object = None) -> object:
            if name != "fastcifar.kernels":
                return None
            init = os.path.join(folder, "__init__.py")
            return importlib.util.spec_from_file_location(name, init, submodule_search_locations=[folder])

    sys.meta_path.insert(0, CheckoutKernels)


_find_checkout_kernels()
