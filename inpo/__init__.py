"""inpo: Nash-style preference optimisation (INPO, ONPO, DPO, IPO, SPPO) with a fused Triton LM head."""

__version__ = "0.1.0"
