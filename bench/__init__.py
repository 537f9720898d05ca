"""Benchmarks (``python -m bench.<name>``) and the one-call GPU suite; figures land in bench/results/."""
