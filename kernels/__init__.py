"""Triton kernels of the fused head, installed as ``inpo.kernels`` (never a top-level ``kernels``)."""
