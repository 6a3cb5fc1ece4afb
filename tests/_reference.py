"""The float64 reference of the Lion / CLion update that the optimizer tests compare with.

Written from the definitions alone (the Lion paper, arXiv:2302.06675; the CLion paper,
arXiv:2604.14587, as the package's README states it; Liang et al., arXiv:2411.16085,
Algorithm 2, for cautious Lion), one parameter at a time, sharing no code with clion_hf.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Group:
    """One param group: the indices of its parameters and its hyper-parameters.

    ``mode``: ``"lion"`` (the sign everywhere) or a CLion mode.
    """

    members: list[int]
    lr: float
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    mode: str = "lion"
    nu: float = 1.0
    caution: bool = False


def min_nonzero(c: torch.Tensor) -> float:
    """The smallest non-zero ``abs(c)``; inf if there is none."""
    nz = c.abs()[c != 0]
    return nz.min().item() if nz.numel() else math.inf


def h(c: torch.Tensor, mode: str, nu: float, global_min: float) -> torch.Tensor:
    """What replaces ``sign(c)`` in the update (``global_min``: over the whole model)."""
    if mode == "lion":
        return c.sign()
    if mode == "global":
        return c.sign() if global_min >= nu else c
    if mode == "tensor":
        return c.sign() if min_nonzero(c) >= nu else c
    if mode == "element":
        return torch.where(c.abs() >= nu, c.sign(), c)
    if mode == "soft":
        return (c / nu).clamp(-1, 1)
    raise AssertionError(mode)


Store = Callable[[int, torch.Tensor, torch.Tensor], None]


def step(params: list[torch.Tensor], exp_avgs: list[torch.Tensor],
         grads: list[torch.Tensor | None], groups: list[Group],
         store: Store | None = None) -> float:  # fmt: skip
    """One step in place on float64 ``params`` and ``exp_avgs``; returns the global min.

    ``grads[i] is None``: parameter ``i`` has no gradient (skipped, and not in the min).
    ``store(i, p, m)``: rounds parameter ``i`` and its momentum to their storage dtypes
    in place, after the step (the optimizers store every step).
    """
    cs = {}
    for group in groups:
        b1 = group.betas[0]
        for i in group.members:
            if grads[i] is not None:
                cs[i] = b1 * exp_avgs[i] + (1 - b1) * grads[i]
    global_min = min([min_nonzero(c) for c in cs.values()], default=math.inf)
    for group in groups:
        b2 = group.betas[1]
        for i in group.members:
            g = grads[i]
            if g is None:
                continue
            u = h(cs[i], group.mode, group.nu, global_min)
            if group.caution:
                mask = (u * g > 0).double()
                u = u * mask * (mask.numel() / (mask.sum() + 1))
            p = params[i]
            p.copy_(p - group.lr * (u + group.weight_decay * p))
            exp_avgs[i].copy_(b2 * exp_avgs[i] + (1 - b2) * g)
            if store is not None:
                store(i, p, exp_avgs[i])
    return global_min
