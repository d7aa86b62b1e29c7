"""Data for training: the embedded default task's tokenizer and prompts, TRL-format pairs and prompt files, the
one encoder of text into token ids (:mod:`inpo.data.chat`: chat templates, truncation, stop tokens), packing.

Kept light on purpose: nothing heavy is imported here, so ``import inpo.data.prompts`` never pays for
transformers. Import the submodules directly (``from inpo.data.chat import encode_pair``).
"""
