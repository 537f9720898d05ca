"""Checks of image and label arrays, wherever they enter the data package (archives, betons, loaders).

Why checks and not casts: ``np.asarray(x, dtype=np.uint8)`` silently wraps floats in 0..1 to 0 and
int16 values above 255 to garbage, and labels cast from floats, booleans or strings train on
nonsense or fail much later with an IndexError. Each check raises a one-line :class:`UserError`
naming ``where`` the data came from (a file, a field) and what was expected.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastcifar.errors import UserError

__all__ = ["as_images", "as_labels", "check_label_range"]


def _describe(values: Any) -> str:
    if hasattr(values, "dtype") and hasattr(values, "shape"):
        return f"an array of dtype {values.dtype} and shape {tuple(values.shape)}"
    return f"a {type(values).__name__}"


def as_images(values: Any, where: str, shape: tuple[int | None, ...]) -> Any:
    """Check that ``values`` are uint8 images of per-image ``shape``; nothing is cast.

    Args:
        values: the pixels as stored: a numpy array or a torch tensor (anything else is refused).
        where: what to name in an error, e.g. ``"/path/train (key 'data')"``.
        shape: per-image shape, e.g. ``(3072,)`` for archive rows, ``(32, 32, 3)``, or with
            ``None`` for any size: ``(3, None, None)``.

    Returns:
        ``values`` itself, of shape ``(N, *shape)`` and dtype uint8 (0..255 by construction).
    """
    if not (isinstance(values, np.ndarray) or type(values).__module__.startswith("torch")):
        raise UserError(f"{where} holds images as {_describe(values)}; expected a uint8 array (N, {shape})")
    dtype = str(values.dtype).removeprefix("torch.")
    if dtype != "uint8":
        count = values.numel() if hasattr(values, "numel") else values.size
        floats = dtype.startswith(("float", "bfloat"))
        scaled = floats and count and 0 <= float(values.min()) <= float(values.max()) <= 1
        hint = " (they look scaled to 0..1)" if scaled else ""
        raise UserError(
            f"{where} holds images of dtype {values.dtype}{hint}; images must be uint8 in 0..255, "
            "convert them (e.g. np.round(x * 255).astype(np.uint8)) first"
        )
    actual = tuple(values.shape)
    if len(actual) != 1 + len(shape) or any(want is not None and got != want for got, want in zip(actual[1:], shape)):
        expected = ", ".join("any" if d is None else str(d) for d in shape)
        raise UserError(f"{where} holds images of shape {actual}; expected (N, {expected})")
    return values


def as_labels(values: Any, where: str) -> np.ndarray:
    """``values`` (a list of ints or a 1-D integer array) as an int64 ``(N,)`` array, without casting.

    Floats, booleans, strings, ``None`` and anything not one-dimensional are refused with a
    UserError, even when a cast would succeed (``1.0``, ``True``).
    """
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "iu":
            raise UserError(f"{where} holds labels of dtype {values.dtype}; labels must be integers")
        array = values
    elif isinstance(values, (list, tuple)):
        # bool is a subclass of int: refused explicitly.
        for value in values:
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise UserError(
                    f"{where} holds a label {value!r} of type {type(value).__name__}; labels must be integers"
                )
        array = np.array(values, dtype=np.int64) if values else np.zeros(0, dtype=np.int64)
    else:
        raise UserError(f"{where} holds labels as {_describe(values)}; expected a list of integers")
    if array.ndim != 1:
        raise UserError(f"{where} holds labels of shape {array.shape}; expected one label per image (N,)")
    return array.astype(np.int64, copy=False)


def check_label_range(labels: np.ndarray, count: int, where: str) -> None:
    """UserError unless every label is in ``0..count-1`` (``count`` classes or superclasses)."""
    if len(labels) == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= count:
        bad = low if low < 0 else high
        raise UserError(
            f"{where} holds the label {bad}, outside 0..{count - 1}; the file is damaged or not {count}-class data"
        )
