"""DeepSpeed ZeRO-3 on CPU (DS_ACCELERATOR=cpu, gloo), 2 ranks: a tiny Llama patched by
crossent.integrations.transformers, each rank half the batch with unequal counted tokens, the
normaliser convention (``num_items_in_batch = global_normalizer(shifted labels, group=dp)``, loss
times the DP size because ZeRO averages gradients): the full gradients equal one process's
unpatched whole-batch mean. Also: a ZeRO-3 parameter given to a functional loss is refused.

Then VocabParallelLinearCrossEntropyLoss itself under ZeRO-3 (its module hooks gather its weight).
``python zero3_worker.py PORT`` prints one JSON line {"max_abs_grad_diff", "loss_diff", "refused",
"head_module_grad_diff"}.
"""

from __future__ import annotations

import copy
import json
import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402


def _run(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    import deepspeed
    import transformers

    from crossent._checks import InvalidArgumentType
    from crossent.distributed import global_normalizer, vocab_parallel_linear_cross_entropy
    from crossent.integrations import transformers as hf

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, initializer_range=0.2, tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config).double()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (4, 10), generator=g)
    labels = ids.clone()
    labels[0, 2:] = -100  # rank 0 counts far fewer tokens than rank 1
    labels[1, :6] = -100
    ref = copy.deepcopy(model)
    ref_loss = ref(input_ids=ids, labels=labels).loss
    ref_loss.backward()
    hf.patch(model)
    ds_config = {
        "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3}, "optimizer": {"type": "SGD", "params": {"lr": 0.0}}, "zero_allow_untested_optimizer": True,
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    mine = slice(2 * rank, 2 * rank + 2)
    shifted = labels[mine, 1:]
    norm = global_normalizer(shifted, group=None)  # the whole step's counted tokens
    loss = engine(input_ids=ids[mine], labels=labels[mine], num_items_in_batch=norm).loss
    engine.backward(loss * world)  # ZeRO averages over the DP ranks: undo it
    from deepspeed.utils import safe_get_full_grad

    diff = 0.0
    for (name, p), q in zip(engine.module.named_parameters(), ref.parameters()):
        full = safe_get_full_grad(p)
        diff = max(diff, (full.double() - q.grad).abs().max().item())
    total = loss.detach().clone()
    dist.all_reduce(total)
    refused = False
    try:
        vocab_parallel_linear_cross_entropy(torch.randn(2, 16, dtype=torch.float64),
                                            engine.module.lm_head.weight, torch.tensor([1, 2]),
                                            group=None, num_classes=97)
    except InvalidArgumentType as err:
        refused = "ZeRO-3" in str(err)
    head_diff = _head_module(rank, world, deepspeed, ds_config, global_normalizer)
    if rank == 0:
        queue.put({"max_abs_grad_diff": diff, "loss_diff": abs(total.item() - ref_loss.item()),
                   "refused": refused, "head_module_grad_diff": head_diff})
    dist.destroy_process_group()


class _Net(torch.nn.Module):
    def __init__(self, head):
        super().__init__()
        self.body, self.head = torch.nn.Linear(8, 16), head

    def forward(self, x, t, normalizer):
        return self.head(torch.tanh(self.body(x)), t, normalizer=normalizer)


def _head_module(rank, world, deepspeed, ds_config, global_normalizer):
    """VocabParallelLinearCrossEntropyLoss under ZeRO-3 (data parallel; each rank its own
    one-rank vocabulary group): ZeRO gathers the head's weight in the module's hooks, gradients
    equal one process's."""
    import crossent
    from crossent.distributed import VocabParallelLinearCrossEntropyLoss

    groups = [dist.new_group([r]) for r in range(world)]
    torch.manual_seed(0)
    full = torch.nn.Linear(16, 50)
    head = VocabParallelLinearCrossEntropyLoss.from_linear(full, group=groups[rank], label_smoothing=0.1)
    net = _Net(head)
    ref_body = copy.deepcopy(net.body)
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(8, 8, generator=g), torch.randint(0, 50, (8,), generator=g)
    t[:3] = -100  # unequal counts: rank 0 has 1 counted token, rank 1 has 4
    w, b = full.weight.detach().clone().requires_grad_(), full.bias.detach().clone().requires_grad_()
    crossent.linear_cross_entropy(torch.tanh(ref_body(x)), w, t, linear_bias=b, label_smoothing=0.1).backward()
    engine, *_ = deepspeed.initialize(model=net, model_parameters=net.parameters(), config=ds_config)
    mine = slice(4 * rank, 4 * rank + 4)
    norm = global_normalizer(t[mine], group=None)
    loss = engine(x[mine], t[mine], norm)
    engine.backward(loss * world)  # ZeRO averages over the DP ranks
    from deepspeed.utils import safe_get_full_grad

    grads = [safe_get_full_grad(p) for p in engine.module.parameters()]
    refs = [ref_body.weight.grad, ref_body.bias.grad, w.grad, b.grad]
    return max((a.double() - r.double()).abs().max().item() for a, r in zip(grads, refs))


if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.spawn(_run, args=(2, int(sys.argv[1]), queue), nprocs=2, join=True)
    print(json.dumps(queue.get()))
