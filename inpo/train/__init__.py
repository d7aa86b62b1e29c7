"""The lean trainer: config, model loading, packing-aware step, optimiser/schedule, checkpoints, FSDP2.

Entry points: :func:`inpo.online.run_training` (``inpo train``), :func:`inpo.train.step.train_step`,
:func:`inpo.train.model.load_policy` / :func:`~inpo.train.model.build_default_policy` /
:func:`~inpo.train.model.hidden_and_head`. Submodules are imported on use (transformers is heavy).
"""
