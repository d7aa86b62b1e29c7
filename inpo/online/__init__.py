"""The online iteration, end to end (shared/ARCHITECTURE.md's data flow), and offline training on JSONL pairs --
one module per phase, driven by :mod:`inpo.online.loop`.

For t = 0..T−1:  sample K responses per prompt from π_t (:mod:`~inpo.online.generate`) → rank them with the
oracle and pick a pair per prompt (ties dropped; SPPO: per-response win-rate targets instead;
:mod:`~inpo.online.rank`) → precompute π_ref and π_t log-probs with the fused head under no_grad
(:mod:`~inpo.online.precompute`) → train E epochs with the objective (:mod:`~inpo.online.train`) → π_{t+1}
(checkpoint, iterate folder; :mod:`~inpo.online.export`) → win-rate of π_{t+1} against π_ref on held-out prompts
(:mod:`~inpo.online.evaluate`) → next t. Offline training is the same loop fed by a pairs file, with T = 1
(:mod:`~inpo.online.sources`).

Which log-probs each objective gets (ALGORITHMS.md):  INPO: ref = π_ref, anchor = π_t (π_0 = π_ref);
IPO: ref = π_ref (online IPO = INPO with τ/η = 1); DPO: ref = π_t (iterative DPO); SPPO: anchor = π_t and
targets P̂(y ≻ π_t); ONPO: two regressions per iteration -- π'_{t+1} against anchor π'_t, then π_{t+1}
against anchor π'_{t+1}, both on the pairs sampled from π_t (π'_0 = π_ref).

Everything an iteration produces is written atomically under ``<out>/iter_<t>/`` before it is used, so a
crash loses nothing already written and ``--resume`` reuses it (:func:`~inpo.online.cache.cached_phase`).

Under ``torchrun`` (FSDP2, world size W > 1) the policy is sharded for training, and every rank keeps a plain
(unsharded) twin that receives π_t's full weights before generation and evaluation. Each rank samples and ranks
its block of the prompts (:class:`~inpo.online.shard.Shard`), and the blocks are gathered in prompt order.
Log-probs are computed by every rank on all sequences with plain models (π_ref, the twin), training uses the shared
FSDP2 :func:`~inpo.train.loop.train_phase`, evaluation runs on rank 0 and its result is broadcast; only rank 0
writes files. ONPO's auxiliary chain π' is a second FSDP2-sharded model, trained and checkpointed beside the policy.

Resume (``--resume``) works the same in one process and under torchrun, with two conditions under torchrun: the
same number of processes as the run that wrote the checkpoint (it decides every rank's share of the prompts and of
each step; a different one is refused with a clear error), and an output directory every rank can read (one
node, or a shared filesystem): every rank reads the checkpoint and the iteration's files.
"""

from inpo.online.export import prune_iterates
from inpo.online.loop import run_offline, run_online, run_training
from inpo.online.models import attn_impl, run_tokenizer
from inpo.online.precompute import training_sequences
from inpo.online.generate import sampling_plan
from inpo.online.prompts import prompt_pools

__all__ = ["run_online", "run_offline", "run_training", "prune_iterates", "prompt_pools", "run_tokenizer",
           "training_sequences", "attn_impl", "sampling_plan"]

# The names benches and older scripts import (bench/iteration.py: the loop's own tokenizer and encoder).
_load_tokenizer = run_tokenizer
_sequences = training_sequences
