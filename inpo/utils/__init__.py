"""The bottom layer: small shared pieces every other part of inpo uses. It imports nothing from inpo.

One module per concern (records and environment, atomic io and JSONL, rank/world, the model-folder writer with the
one NaN guard, a folder's manifest of what a command wrote, available memory, MFU); this file re-exports nothing,
so importing one piece never drags in another.
"""
