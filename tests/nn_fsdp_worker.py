"""FSDP2 on CPU with gloo, 2 ranks: crossent.nn.LinearCrossEntropyLoss sharded like any layer.
Run by test_nn_fsdp.py as ``python nn_fsdp_worker.py PORT``; prints one JSON line
{"max_abs_grad_diff", "loss_diff"} against one process with the whole batch."""

from __future__ import annotations

import copy
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        import crossent

        self.body = torch.nn.Linear(8, 16)
        self.head = crossent.nn.LinearCrossEntropyLoss(16, 50, bias=True, label_smoothing=0.1)

    def forward(self, x, t):
        return self.head(torch.tanh(self.body(x)), t)


def _run(rank: int, world: int, port: int, queue) -> None:
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    net = Net()
    x, t = torch.randn(12, 8), torch.randint(0, 50, (12,))
    ref = copy.deepcopy(net)
    ref_loss = ref(x, t)
    ref_loss.backward()
    fully_shard(net.head)
    fully_shard(net)
    half = slice(rank * 6, rank * 6 + 6)  # equal halves: FSDP's averaged gradients are the mean's
    loss = net(x[half], t[half])
    loss.backward()
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach())
    diff = 0.0
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        full = p.grad.full_tensor()
        diff = max(diff, (full - q.grad).abs().max().item())
    if rank == 0:
        queue.put({"max_abs_grad_diff": diff,
                   "loss_diff": abs(sum(v.item() for v in losses) / world - ref_loss.item())})
    dist.destroy_process_group()


if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.spawn(_run, args=(2, int(sys.argv[1]), queue), nprocs=2, join=True)
    print(json.dumps(queue.get()))
