"""The launcher of the distributed tests: one process group per world size runs every case.

``python harness.py WORLD PORT [NAME_PREFIX]`` spawns WORLD gloo ranks on CPU; each runs every case of
`cases.CASES` that applies at that world size and rank 0 prints one JSON line
{case name: null (passed) or the first rank's failure text}. A launch costs ~10-20 s on 2 cores, so
the cases share it (as CCE's tests do) and pytest reports them one by one from the JSON.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _run(rank: int, world: int, port: int, queue, only: str = "") -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # W ranks on a few cores: no oversubscription
    # a case that fails on one rank only would leave the others waiting: time out instead of hanging
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=30))
    sys.path.insert(0, os.path.dirname(__file__))
    import cases

    results = {}
    for name, case in cases.applicable(world):
        if only and not name.startswith(only):
            continue
        try:
            case(rank, world)
            results[name] = None
        except Exception:  # a failing case is reported, the others still run
            results[name] = f"rank {rank}: " + traceback.format_exc(limit=6)
        dist.barrier()  # a case that failed on one rank must not leave the others in a collective
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        merged = {name: next((r[name] for r in gathered if r[name]), None) for name in results}
        queue.put(merged)
    dist.destroy_process_group()


def main(world: int, port: int, only: str = "") -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.spawn(_run, args=(world, port, queue, only), nprocs=world, join=True)
    return queue.get()


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:4])))
