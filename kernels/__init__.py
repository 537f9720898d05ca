"""Fused Triton kernels for the study's attention layers, visible to torch.compile."""
