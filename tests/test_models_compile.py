"""Tiny model configurations through torch.compile(fullgraph=True) on CPU: same output as eager."""

from __future__ import annotations

import pytest
import torch

from fastcifar.models import create_model, tiny_overrides


# Inductor's C++ compilation dominates on CPU, so only the registered tiny configurations of the
# two families with attention layers of their own (SK, Triplet) are compiled.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["sk_densenet", "triplet_resnet"])
def test_compiled_tiny_model_matches_eager(name):
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = create_model(name, num_classes=10, **tiny_overrides(name), impl="torch").eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, fullgraph=True)
        out = compiled(x)
    assert out.shape == (2, 10)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
