"""Benchmarks: ``python -m bench.head`` (fused head); results under ``bench/results/``."""
