"""The fused LM head: per-sequence log-probs and preference losses without [N, V] logits."""

from inpo.ops.checks import raise_pending_value_errors
from inpo.ops.head import preference_loss, resolve_impl, response_lengths, sequence_logps

__all__ = ["sequence_logps", "preference_loss", "resolve_impl", "response_lengths", "raise_pending_value_errors"]
