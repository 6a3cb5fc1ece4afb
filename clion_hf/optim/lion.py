"""Lion (Chen et al., 2023, arXiv:2302.06675), optionally "cautious" (arXiv:2411.16085)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._base import LionFamily, ParamsT, run_closure
from ._math import Hyper, stat_dtype
from .functional import pass1, scalar_lr, update
from .validate import check_flag


class Lion(LionFamily):
    """Lion: ``p -= lr * (sign(beta1 * m + (1 - beta1) * g) + weight_decay * p)``.

    Args:
        params: parameters or param groups.
        lr: learning rate; the Lion paper advises 3-10x smaller than AdamW's.
        betas: ``(beta1, beta2)``: interpolation for the update direction and the momentum.
        weight_decay: decoupled weight decay (``lr * weight_decay`` per step), 3-10x
            AdamW's to keep ``lr * weight_decay`` comparable.
        caution: mask coordinates whose update disagrees in sign with the gradient and
            rescale the rest (Liang et al., "Cautious Optimizers", Algorithm 2). This is
            not CLion (:class:`clion_hf.CLion`), which shares the name "cautious".
        maximize: maximize the objective instead of minimizing it.
        foreach: use ``torch._foreach_*`` kernels (default: on non-CPU devices);
            ``False`` forces the single-tensor loop.
        momentum_dtype: dtype of the momentum buffer (default fp32, or fp64 for fp64
            parameters); ``torch.bfloat16`` halves optimizer state. Math runs in fp32.
        fused: one multi-tensor pass per step: a C++ kernel on CPU (built with the
            system compiler on first use, a few seconds once per machine, then cached),
            Triton kernels on CUDA. ``None`` (default, with ``foreach=None``) picks the CPU
            kernel where it builds, whose results equal the foreach path's bit for bit,
            and the eager paths elsewhere: the Triton kernels are so far tested only under
            Triton's CPU interpreter, so CUDA needs ``fused=True``. Under
            ``torch.compile`` of the training step the plain math is traced instead
            (unless ``fused=True``: then the fused custom op is called from the graph).
        track_stats: record the smallest non-zero ``abs(c)`` of each step (the paper's
            tau_t, the quantity CLion compares with ``nu``) on the device, for
            :meth:`consume_stats`. Off by default: it costs one extra read of ``g`` and
            ``m`` per step; off, the step is exactly the untracked one.

    Param groups are checked when added or loaded (a bad one is refused whole, with one
    line naming the value); parameters must not share memory. A NaN or infinite gradient
    makes the parameter's coordinate NaN on every implementation, so that divergence shows
    (see :mod:`clion_hf.optim.functional`).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        caution: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        *,
        momentum_dtype: torch.dtype | None = None,
        fused: bool | None = None,
        track_stats: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, weight_decay=weight_decay, caution=caution, maximize=maximize,
            foreach=foreach, momentum_dtype=momentum_dtype, fused=fused,
        )  # fmt: skip
        self.track_stats = check_flag("track_stats", track_stats)
        super().__init__(params, defaults)
        self._alloc_stats()

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "track_stats": self.track_stats}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # pickling passes track_stats; torch's load_state_dict calls this without it
        self.track_stats = state.pop("track_stats", getattr(self, "track_stats", False))
        super().__setstate__(state)
        self._alloc_stats()

    def _alloc_stats(self) -> None:
        """``[min abs(c), steps]`` since the last :meth:`consume_stats`, on the device.

        Allocated up front and only updated in place, as CLion's statistics: torch.compile
        drops attribute assignments made inside a compiled step (torch 2.13).
        """
        params = [p for g in self.param_groups for p in g["params"]]
        device = params[0].device if params else torch.device("cpu")
        self._acc = torch.tensor([math.inf, 0.0], dtype=stat_dtype(device), device=device)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step."""
        loss = run_closure(closure)
        for b in map(self._gather, self.param_groups):
            g = b.group
            if self.track_stats and b.params:  # before the update moves the momentum
                mins, _ = pass1(b.grads, b.exp_avgs, beta1=g["betas"][0],
                                maximize=g["maximize"], impl=b.impl)  # fmt: skip
                self._track(mins)
            hyper = Hyper(scalar_lr(g["lr"]), g["betas"][0], g["betas"][1], g["weight_decay"],
                          None, 1.0, g["maximize"], g["caution"])  # fmt: skip
            update(b.params, b.grads, b.exp_avgs, hyper, impl=b.impl)
        if self.track_stats:
            self._acc[1:].add_(1)
        return loss

    def _track(self, mins: Tensor) -> None:
        low = self._acc[:1]
        low.copy_(torch.minimum(low, mins.amin().to(low)))

    def consume_stats(self) -> dict[str, float]:
        """``{"min_abs_c": ...}``: the smallest non-zero ``abs(c)`` over the steps since the
        last call (``inf`` if every ``c`` was 0), as CLion's; empty without ``track_stats``
        or before a step. Resets. One host sync (the Trainer callback calls it per log)."""
        if not self.track_stats:
            return {}
        low, steps = self._acc.tolist()
        if steps == 0:
            return {}
        self._acc[:1].fill_(math.inf)
        self._acc[1:].zero_()
        return {"min_abs_c": low}
