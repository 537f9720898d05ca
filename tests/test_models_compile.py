"""Tiny model configurations through torch.compile(fullgraph=True) on CPU: same output as eager."""

from __future__ import annotations

import pytest
import torch

from fastcifar.models import create_model

# Inductor's C++ compilation dominates on CPU, so the configurations are as small as they can be
# while still containing the attention layers: one dense block of two SK layers (plus the stem SK),
# one Triplet BasicBlock.
TINY = {
    "sk_densenet": dict(growth_rate=4, block_config=(2,), k=2, sk_groups=2, impl="torch"),
    "triplet_resnet": dict(widths=(8,), depths=(1,), impl="torch"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_compiled_tiny_model_matches_eager(name):
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = create_model(name, num_classes=10, **TINY[name]).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, fullgraph=True)
        out = compiled(x)
    assert out.shape == (2, 10)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
