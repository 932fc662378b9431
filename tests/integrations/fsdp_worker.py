"""FSDP2 (fully_shard) and FSDP1 (FullyShardedDataParallel) on CPU with gloo, world size 2: a
patched tiny Llama's gradients vs one process.

Run by test_hf_fsdp.py as a script: ``python fsdp_worker.py PORT``; prints one JSON line, for patch
called before and after fully_shard, and for FSDP1 auto-wrapping after patch:
{case: {"max_abs_grad_diff", "loss_diff", "head_class"}}. Each rank takes half the batch;
num_items_in_batch is the whole batch's count, so the ranks' summed gradients are the full batch's.
"""

from __future__ import annotations

import copy
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _run(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {order: _compare(rank, world, order) for order in ("before", "after")}
    results["fsdp1"] = _compare_fsdp1(rank, world)
    if rank == 0:
        queue.put(results)
    dist.destroy_process_group()


def _setup():
    """A tiny untied Llama, a batch of 4 with ignored labels, and the unpatched whole-batch
    reference (loss backpropagated) in this process."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 1000, (4, 12), generator=g)
    labels = ids.clone()
    labels[0, -4:] = -100
    labels[3, :5] = -100
    ref = copy.deepcopy(model)  # unpatched, unsharded, whole batch
    ref_loss = ref(input_ids=ids, labels=labels).loss
    ref_loss.backward()
    n = torch.tensor(int((labels[:, 1:] != -100).sum()))
    return model, ref, ids, labels, ref_loss, n


def _compare(rank: int, world: int, order: str) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from crossent.integrations import transformers as hf

    model, ref, ids, labels, ref_loss, n = _setup()
    if order == "before":
        hf.patch(model)
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model.lm_head, mesh=mesh)  # the head's weight is sharded between the two ranks
    fully_shard(model, mesh=mesh)
    if order == "after":
        hf.patch(model)
    part = slice(2 * rank, 2 * rank + 2)
    loss = model(input_ids=ids[part], labels=labels[part], num_items_in_batch=n).loss
    (loss * world).backward()  # FSDP averages gradients over ranks; the normalizer divides already
    total = loss.detach().clone()
    dist.all_reduce(total)
    worst = 0.0
    for (_, p), (_, r) in zip(model.named_parameters(), ref.named_parameters()):
        worst = max(worst, (p.grad.full_tensor() - r.grad).abs().max().item())
    return dict(max_abs_grad_diff=worst, loss_diff=abs(total.item() - ref_loss.item()),
                head_class=type(model.lm_head).__name__)


def _compare_fsdp1(rank: int, world: int) -> dict:
    """FSDP1 (FullyShardedDataParallel) auto-wrapping the decoder layers and the head, after patch:
    the head becomes an FSDP wrapper, which the patched forward calls; its pre-forward hook
    unshards the weight the fused loss then reads."""
    import functools

    import transformers
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

    from crossent.integrations import transformers as hf

    model, ref, ids, labels, ref_loss, n = _setup()
    hf.patch(model)
    layer_cls = transformers.models.llama.modeling_llama.LlamaDecoderLayer
    wrap = functools.partial(
        lambda_auto_wrap_policy,
        lambda_fn=lambda m: isinstance(m, layer_cls) or m is model.lm_head,
    )
    sharded = FSDP(model, auto_wrap_policy=wrap, device_id=torch.device("cpu"), use_orig_params=True)
    part = slice(2 * rank, 2 * rank + 2)
    loss = sharded(input_ids=ids[part], labels=labels[part], num_items_in_batch=n).loss
    (loss * world).backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    worst = 0.0
    with FSDP.summon_full_params(sharded, with_grads=True):
        for (_, p), (_, r) in zip(model.named_parameters(), ref.named_parameters()):
            worst = max(worst, (p.grad - r.grad).abs().max().item())
    return dict(max_abs_grad_diff=worst, loss_diff=abs(total.item() - ref_loss.item()),
                head_class=type(model.lm_head).__name__)


def main() -> None:
    port = int(sys.argv[1])
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_run, args=(2, port, queue), nprocs=2, start_method="spawn")
    print(json.dumps(queue.get(timeout=60)))


if __name__ == "__main__":
    main()
