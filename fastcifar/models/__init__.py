"""The study's architectures behind one registry.

``create_model(name, num_classes=100, **overrides)`` builds a model, ``list_models()`` lists the
ids; ``python -m fastcifar.models`` prints every model's parameters and FLOPs next to the study's
reported figures. The attention layers (SK, CA, Triplet, LKA, GC) are exported for reuse.
"""

from fastcifar.models.layers import (
    IMPLS,
    LKA,
    AttentionGate,
    CoordinateAttention,
    GCBlock,
    HSwish,
    SKConv,
    TripletAttention,
    ZPool,
    resolve_impl,
    sk_select_torch,
    triton_available,
    zpool_torch,
)
from fastcifar.models.registry import (
    ModelEntry,
    StudyResult,
    create_model,
    get_entry,
    list_models,
    register,
    register_model,
    tiny_overrides,
)

__all__ = [
    "IMPLS",
    "LKA",
    "AttentionGate",
    "CoordinateAttention",
    "GCBlock",
    "HSwish",
    "ModelEntry",
    "SKConv",
    "StudyResult",
    "TripletAttention",
    "ZPool",
    "create_model",
    "get_entry",
    "list_models",
    "register",
    "register_model",
    "resolve_impl",
    "sk_select_torch",
    "tiny_overrides",
    "triton_available",
    "zpool_torch",
]
