"""FSDP2 (``fully_shard``) on CPU/gloo vs an unsharded run with the same global batch.

Launched by tests/test_distributed.py: ``torchrun --nproc_per_node 2 fsdp2_worker.py
RUN[,RUN...] OUT``, each RUN being ``MODE`` or ``MODE:offload``, all in one launch (the
start-up is the slow part); rank 0 writes each run's report to ``OUT.RUN``.
``offload``: ``CPUOffloadPolicy`` (sharded parameters, gradients and optimizer state on
the CPU) and ``fused=True`` (the C++ kernel) on both runs; MODE ``lion`` then trains
:class:`clion_hf.Lion`.

``nu`` is chosen from the first step's gradient so that at least one
rank's shard would decide differently from the whole model (``global``) or the whole
tensor (``tensor``) if the min were not reduced across ranks; the sharded parameters and
the per-tensor decisions must then match the unsharded run at every step.
"""

from __future__ import annotations

import json
import math
import sys

import torch
import torch.distributed as dist
from _finish import finish  # the file beside this one
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

from clion_hf import CLion, Lion
from clion_hf.optim.kernels import cpu as kernel_cpu

BETA1, LR, STEPS = 0.9, 0.05, 4
CALLS: list[int] = []
_update = kernel_cpu.update


def _counted_update(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
    # The real C++ kernel runs; the count shows that the fused CPU path was taken.
    CALLS.append(1)
    return _update(*args, **kwargs)


kernel_cpu.update = _counted_update


def build() -> nn.Module:
    torch.manual_seed(0)
    # Linear(10, 3): 3 rows over 2 ranks (2 + 1), an uneven shard.
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3)).double()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(
        8, 3, generator=g, dtype=torch.float64
    )


def nonzero_min(t: torch.Tensor) -> float:
    a = t.abs()
    a = a[a > 0]
    return a.min().item() if a.numel() else math.inf


def choose_nu(mode: str, world: int) -> tuple[float, str]:
    """A nu between the reduced min and some shard's own min, from step 1 (c = 0.1 g)."""
    model = build()
    x, y = batch()
    nn.functional.mse_loss(model(x), y).backward()
    cs = [(1 - BETA1) * p.grad for p in model.parameters()]
    shard_mins = [
        [nonzero_min(s) if s.numel() else math.inf for s in torch.chunk(c, world, dim=0)]
        + [math.inf] * (world - len(torch.chunk(c, world, dim=0)))
        for c in cs
    ]
    if mode == "global":
        per_rank = [min(m[r] for m in shard_mins) for r in range(world)]
        lo, hi = min(per_rank), max(per_rank)
        why = f"rank mins {per_rank}"
    else:
        # A tensor whose shards disagree, and a nu that leaves the whole-tensor decisions
        # mixed (some tensors sign, some not) when possible.
        candidates = []
        for m in shard_mins:
            finite = [v for v in m if v < math.inf]
            lo_t, hi_t = min(finite), max(finite)
            nu_t = math.sqrt(lo_t * hi_t)
            mixed = len({min(k) >= nu_t for k in shard_mins}) == 2
            candidates.append((mixed, hi_t / lo_t, lo_t, hi_t))
        _, _, lo, hi = max(candidates)
        why = f"tensor shard mins {shard_mins}"
    assert hi > 1.2 * lo, f"no shard decides differently: {why}"
    return math.sqrt(lo * hi), why


def decisions(opt: CLion | Lion) -> list[bool]:
    if not isinstance(opt, CLion):
        return []
    return [t["sign_fraction"] > 0 for t in opt.last_step_stats(per_tensor=True)["tensors"]]


def make(mode: str, params, nu: float, fused: bool | None) -> CLion | Lion:  # noqa: ANN001
    if mode == "lion":
        return Lion(params, lr=LR, betas=(BETA1, 0.99), weight_decay=0.1, fused=fused)
    return CLion(params, lr=LR, betas=(BETA1, 0.99), nu=nu, mode=mode, fused=fused)


def stats(opt: CLion | Lion) -> dict:
    if not isinstance(opt, CLion):
        return {"min_abs_c": 0.0, "tensors": []}
    return opt.last_step_stats(True)


def main() -> None:
    dist.init_process_group("gloo")
    for run in sys.argv[1].split(","):
        mode, _, offload = run.partition(":")
        compare(mode, offload == "offload", f"{sys.argv[2]}.{run}")
    finish()


def compare(mode: str, offload: bool, out: str) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    CALLS.clear()
    nu, why = choose_nu(mode, world) if mode in ("global", "tensor") else (1e-3, "")
    fused = True if offload else None
    kw = {"offload_policy": CPUOffloadPolicy(pin_memory=False)} if offload else {}

    ref = build()
    ref_opt = make(mode, ref.parameters(), nu, fused)
    sharded = build()
    mesh = init_device_mesh("cpu", (world,))
    for layer in (sharded[0], sharded[2]):
        fully_shard(layer, mesh=mesh, **kw)
    fully_shard(sharded, mesh=mesh, **kw)
    opt = make(mode, sharded.parameters(), nu, fused)

    x, y = batch()
    local = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
    report = {"mode": mode, "nu": nu, "why": why, "steps": []}
    for _ in range(STEPS):
        nn.functional.mse_loss(ref(x), y).backward()  # every rank: the whole batch
        ref_opt.step()
        ref_opt.zero_grad()
        # FSDP2 averages the gradients of the local batches: the same global gradient.
        nn.functional.mse_loss(sharded(x[local]), y[local]).backward()
        opt.step()
        opt.zero_grad()
        diffs = [
            (p.full_tensor() - q).abs().max().item()
            for p, q in zip(sharded.parameters(), ref.parameters(), strict=True)
        ]
        ref_stats, stats_ = stats(ref_opt), stats(opt)
        report["steps"].append({
            "max_param_diff": max(diffs),
            "ref_decisions": decisions(ref_opt),
            "decisions": decisions(opt),
            "ref_min_abs_c": ref_stats["min_abs_c"],
            "min_abs_c": stats_["min_abs_c"],
            "ref_tensor_mins": [t["min_abs_c"] for t in ref_stats["tensors"]],
            "tensor_mins": [t["min_abs_c"] for t in stats_["tensors"]],
        })  # fmt: skip
    # Where the state lives and which implementation ran (offload: the CPU kernel).
    report["state_devices"] = sorted({str(v.device) for st in opt.state.values()
                                      for v in st.values() if isinstance(v, torch.Tensor)})
    report["param_devices"] = sorted({str(p.device) for p in sharded.parameters()})
    report["offload"] = offload
    report["kernel_calls"] = len(CALLS)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(report, f)


if __name__ == "__main__":
    main()
