"""Data for training: the embedded default task's tokenizer and prompts, TRL-style pairs, packing.

Kept light on purpose: nothing heavy is imported here, so ``import inpo.data.prompts`` never pays for
transformers. Import the submodules directly (``from inpo.data.tokenizer import default_tokenizer``).
"""
