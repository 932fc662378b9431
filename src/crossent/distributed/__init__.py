"""crossent.distributed: vocabulary-parallel cross-entropy and linear cross-entropy over
torch.distributed process groups and DTensor, the head module that owns its weight shard, and the
global token count for data-parallel 'mean' losses."""

from .cross_entropy import vocab_parallel_cross_entropy
from .linear import vocab_parallel_linear_cross_entropy

__all__ = ["vocab_parallel_cross_entropy", "vocab_parallel_linear_cross_entropy"]
