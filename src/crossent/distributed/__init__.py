"""crossent.distributed: vocabulary-parallel cross-entropy and linear cross-entropy over
torch.distributed process groups and DTensor, the head module that owns its weight shard, and the
global token count for data-parallel 'mean' losses.

    vocab_parallel_cross_entropy          logits split on the class dim (local shard + group, or
                                          a DTensor Shard(1) on one mesh dim)
    vocab_parallel_linear_cross_entropy   the output layer's weight split by rows; no logits
    VocabParallelLinearCrossEntropyLoss   that layer as a module owning its shard (FSDP2 / ZeRO-3)
    VocabParallelCrossEntropyLoss         the logits loss as a module
    VocabParallelLinearDistillationLoss   the distillation loss as a module owning the student's shard
    vocab_parallel_linear_log_probs       per-token log-probs (and entropy) of that weight split
    vocab_parallel_linear_distillation_loss  a student's and a teacher's heads split alike: the dense
                                          distillation loss (generalized JSD + hard CE), no logits
    global_normalizer                     the step's counted tokens over the data-parallel ranks

Every value and gradient equals the single-process crossent loss on the concatenated logits /
weight; forward runs two small all-reduces (row max; stacked per-row sums), the logits loss's
backward none (the distillation loss: three per token chunk, the divergence's row totals being the
third, see `_distill_shards`). Modules: `_stats` (math), `_comm` (collectives), `_layout` (who holds what).
"""

from .cross_entropy import vocab_parallel_cross_entropy
from .distillation import vocab_parallel_linear_distillation_loss
from .linear import vocab_parallel_linear_cross_entropy
from .log_probs import vocab_parallel_linear_log_probs
from .nn import (
    VocabParallelCrossEntropyLoss,
    VocabParallelLinearCrossEntropyLoss,
    VocabParallelLinearDistillationLoss,
)
from .normalizer import global_normalizer

__all__ = [
    "VocabParallelCrossEntropyLoss",
    "VocabParallelLinearCrossEntropyLoss",
    "VocabParallelLinearDistillationLoss",
    "global_normalizer",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
    "vocab_parallel_linear_distillation_loss",
    "vocab_parallel_linear_log_probs",
]
