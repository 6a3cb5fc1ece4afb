"""CLion ``global`` mode when one rank has no gradient this step.

Launched by tests/test_distributed.py: ``torchrun --nproc_per_node 2
global_no_grad_worker.py IMPL[,IMPL...] OUT`` (all implementations in one launch: the
start-up is the slow part). Rank 1's parameters get no gradient on step 1 (its experts
were not routed to, say): it must still join the MIN all-reduce (with +inf), or rank 0
waits for it forever. gloo's timeout is short, so a missing peer fails fast. Each rank
writes its parameters and statistics, and the single-process reference, to
``OUT.IMPL.rankR``.
"""

from __future__ import annotations

import datetime
import json
import sys

import torch
import torch.distributed as dist
from _finish import finish  # the file beside this one

from clion_hf import CLion

IMPLS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "single": {"foreach": False}}


def main() -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    for impl in sys.argv[1].split(","):
        check(impl, f"{sys.argv[2]}.{impl}")
    finish()


def check(impl: str, out: str) -> None:
    rank = dist.get_rank()
    # c = 0.1 * g at step 1: rank 0's min |c| is 0.05 >= nu; the other rank has none
    grads = [torch.tensor([0.5, -2.0]), torch.tensor([1.0, 3.0])]
    ps = [torch.nn.Parameter(torch.ones(2)) for _ in range(2)]
    opt = CLion([{"params": ps[:1]}, {"params": ps[1:]}], lr=0.1, nu=0.01, mode="global",
                **IMPLS[impl])  # fmt: skip
    report: dict = {}
    for step in range(2):
        for p, g in zip(ps, grads, strict=True):
            p.grad = g.clone() if rank == 0 or step == 1 else None
        if rank == 1 and step == 1:  # a rank whose gradients hold a tiny |c|
            ps[0].grad = torch.tensor([1e-6, 1.0])
        opt.step()
        report[f"step{step}"] = {"params": [p.tolist() for p in ps],
                                 "stats": opt.last_step_stats()}  # fmt: skip
    # single-process reference of rank 0's step 1
    qs = [torch.nn.Parameter(torch.ones(2)) for _ in range(2)]
    ref = CLion([{"params": qs[:1]}, {"params": qs[1:]}], lr=0.1, nu=0.01, mode="global")
    for q, g in zip(qs, grads, strict=True):
        q.grad = g.clone()
    ref.step()
    report["reference_step0"] = [q.tolist() for q in qs]
    with open(f"{out}.rank{rank}", "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
