"""CLion, "Cautious Lion" (Huang, Zhang, Chen, arXiv:2604.14587)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ._base import Batch, DTensor, LionFamily, ParamsT, run_closure
from ._math import Hyper, stat_dtype, take_sign, threshold
from ._stats import ELEMENT_SGD_FRACTION, WARN_AFTER_STEPS, StepStats
from .functional import pass1, scalar_lr, update
from .validate import check_flag, check_groups_agree

__all__ = ["CLion", "ELEMENT_SGD_FRACTION", "WARN_AFTER_STEPS"]

Decision = tuple[Tensor | None, Tensor | None]
"""Per batch: ``take`` (one bool per tensor; None: element/soft, no decision) and the exact
pass-1 minima that went into it (None: the update pass measures them)."""


class CLion(LionFamily):
    """Lion whose sign is applied only "cautiously": ``h(c)`` replaces ``sign(c)``.

    ``h(c) = sign(c)`` if the smallest non-zero ``abs(c)`` is at least ``nu``, else ``c``.
    ``mode`` says over what that minimum is taken:

    * ``"global"``: every coordinate of every parameter in every param group (the paper's
      definition; reduced across processes in distributed runs).
    * ``"tensor"``: each parameter tensor on its own.
    * ``"element"``: each coordinate on its own: ``sign(c_j)`` if ``abs(c_j) >= nu``.
    * ``"soft"``: ``clamp(c / nu, -1, 1)`` (this project's continuous extension).

    The minimum is compared with ``nu`` in the compute dtype (fp64 for fp64 parameters,
    else fp32), as ``element`` compares each coordinate.

    Caveat, measured on a 2-layer GPT-2 before this package existed: the smallest
    ``abs(c)`` over a whole model is ~1e-15, so ``global`` (and usually ``tensor``) mode
    never takes the sign branch and CLion becomes momentum SGD at Lion's small learning
    rate (it did not train at lr=3e-4). Use ``mode="element"`` with ``nu`` ~1e-4..1e-5
    for Lion-like training, or an SGD-sized ``lr`` for ``global``. The optimizer warns
    (logging WARNING) at its first step when a ``global``/``tensor`` step took the sign
    branch nowhere, and after 100 steps without a sign branch in any mode (once).

    A NaN or infinite gradient makes the parameter's coordinate NaN (see
    :mod:`clion_hf.optim.functional`), on every implementation.

    Args:
        params: parameters or param groups. Each group may set its own ``lr``, ``betas``,
            ``weight_decay``, ``mode`` and ``nu`` and is decided with them; with
            ``mode="global"`` all groups must share ``mode`` and ``nu`` (one decision).
            Parameters must not share memory (overlapping views are refused).
        lr, betas, weight_decay, maximize, foreach, momentum_dtype, fused: as for
            :class:`clion_hf.Lion`. The fused paths produce the same statistics.
        nu: the threshold; must be finite and > 0.
        mode: ``"global"``, ``"tensor"``, ``"element"`` or ``"soft"``.
        track_stats: record the per-step sign-branch fraction and min ``abs(c)`` on the
            device (see :meth:`last_step_stats`, :meth:`consume_stats`). Costs two small
            reductions per tensor in element/soft modes; nothing extra in global/tensor.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        nu: float = 1e-4,
        mode: str = "global",
        maximize: bool = False,
        foreach: bool | None = None,
        *,
        momentum_dtype: torch.dtype | None = None,
        track_stats: bool = True,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, weight_decay=weight_decay, nu=nu, mode=mode, maximize=maximize,
            foreach=foreach, momentum_dtype=momentum_dtype, fused=fused,
        )  # fmt: skip
        self.track_stats = check_flag("track_stats", track_stats)
        super().__init__(params, defaults)
        self._stats = StepStats(self.param_groups)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "track_stats": self.track_stats}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # deepcopy/pickle: what torch.optim keeps, then the statistics rebuilt (fresh)
        # pickling passes track_stats; torch's load_state_dict calls this without it
        self.track_stats = state.pop("track_stats", getattr(self, "track_stats", True))
        super().__setstate__(state)
        self._stats = StepStats(self.param_groups)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "_stats"):  # not during __init__'s own calls
            self._stats = StepStats(self.param_groups)

    def _check_new_group(self, group: dict[str, Any]) -> None:
        check_groups_agree([*self.param_groups, group])

    def _check_loaded_groups(self, groups: list[dict[str, Any]]) -> None:
        check_groups_agree(groups)

    # ---------------------------------------------------------------------- the step

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step."""
        loss = run_closure(closure)
        batches = [b for b in map(self._gather, self.param_groups) if b.params]
        decisions, global_min = self._decide(batches)
        results = []
        for b, (take, min_abs_c) in zip(batches, decisions, strict=True):
            g = b.group
            hyper = Hyper(scalar_lr(g["lr"]), g["betas"][0], g["betas"][1],
                            g["weight_decay"], g["mode"], g["nu"], g["maximize"])  # fmt: skip
            results.append(update(b.params, b.grads, b.exp_avgs, hyper, take=take,
                                    stats=self.track_stats, min_abs_c=min_abs_c,
                                    impl=b.impl))  # fmt: skip
        if self.track_stats and batches:
            self._stats.record([p for b in batches for p in b.owners],
                               [p.numel() for b in batches for p in b.params], results,
                               global_min)  # fmt: skip
        return loss

    def _decide(self, batches: list[Batch]) -> tuple[list[Decision], Tensor | None]:
        """Every batch's :data:`Decision`, and global mode's minimum reduced across ranks.

        ``global`` (then every group is, with one ``nu``) takes one MIN over every group
        and, in distributed runs, every rank: a rank without gradients joins the all-reduce
        with +inf, so the others never wait for it. ``tensor`` groups decide each tensor
        with their own ``nu`` (MIN-reduced per tensor across the shards of FSDP2).
        """
        if self.param_groups[0]["mode"] == "global":
            return self._decide_global(batches)
        tensor = [b.group["mode"] == "tensor" for b in batches]
        sharded = _distributed() and any(isinstance(p, DTensor) for b, t in
                                         zip(batches, tensor, strict=True) if t for p in b.owners)
        return [self._decide_tensors(b, sharded) if t else (None, None)
                for b, t in zip(batches, tensor, strict=True)], None  # fmt: skip

    def _decide_global(self, batches: list[Batch]) -> tuple[list[Decision], Tensor | None]:
        reduce = _distributed()
        dtypes = {p.dtype for b in batches for p in b.params}
        found = [self._pass1(b, dtypes, may_stop=not reduce) for b in batches]
        device = self._stats.min.device
        low = torch.full((), math.inf, dtype=stat_dtype(device), device=device)
        if found:
            low = torch.cat([m.to(device) for m, _ in found]).amin()
        global_min = _all_reduce_min(low) if reduce else None
        take = take_sign(low.reshape(1) if global_min is None else global_min.reshape(1),
                         self.param_groups[0]["nu"], list(dtypes), "global")  # fmt: skip
        return [(take.to(m.device).expand(len(b.params)), m if exact else None)
                for b, (m, exact) in zip(batches, found, strict=True)], global_min  # fmt: skip

    def _decide_tensors(self, b: Batch, sharded: bool) -> Decision:
        dtypes = [p.dtype for p in b.params]
        m, exact = self._pass1(b, set(dtypes), may_stop=not sharded)
        if sharded:  # FSDP2: each rank holds a shard of every tensor
            m = _all_reduce_min(m)
        return take_sign(m, b.group["nu"], dtypes, "tensor"), m if exact else None

    @staticmethod
    def _pass1(b: Batch, dtypes: set[torch.dtype], may_stop: bool) -> tuple[Tensor, bool]:
        """The batch's per-tensor minima and whether they are exact (see :func:`pass1`).

        A value below ``nu`` (in every compute dtype of ``dtypes``, those the decision
        compares in) decides as well as the minimum does, so pass 1 may stop at the first
        one; the update pass then measures the minima. Not where they are reduced across
        ranks (``may_stop`` False: they are the statistics), nor while compiling (reading
        whether it stopped would break the graph).
        """
        g = b.group
        may_stop = may_stop and not torch.compiler.is_compiling()
        return pass1(b.grads, b.exp_avgs, beta1=g["betas"][0], maximize=g["maximize"],
                     impl=b.impl, mode=g["mode"],
                     below=threshold(g["nu"], dtypes) if may_stop else None)  # fmt: skip

    # ---------------------------------------------------------------------- statistics

    def last_step_stats(self, per_tensor: bool = False) -> dict[str, Any]:
        """Statistics of the last step, as Python floats (one host sync).

        ``sign_fraction``: fraction of coordinates that took the sign branch;
        ``min_abs_c``: smallest non-zero ``abs(c)`` over the step (``inf`` if ``c == 0``).
        With ``per_tensor``, also ``tensors``: a list of per-parameter dicts (in param
        group order, parameters that had a gradient) with ``shape``, ``sign_fraction``
        and ``min_abs_c``. Empty before the first step.
        """
        return self._stats.last_step(per_tensor)

    def last_step_stats_tensors(self) -> dict[str, Tensor]:
        """``sign_fraction`` and ``min_abs_c`` of the last step as 0-d device tensors."""
        return self._stats.last_step_tensors()

    def consume_stats(self) -> dict[str, float]:
        """Mean sign fraction and min ``abs(c)`` over the steps since the last call; resets.

        Meant for loggers (the Trainer callback calls it at each logging step).
        """
        return self._stats.consume()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_min(t: Tensor) -> Tensor:
    if not _distributed():
        return t
    t = t.clone()
    # inf is a valid operand for MIN; gloo (CPU) and NCCL both support ReduceOp.MIN.
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t
