"""Lion (Chen et al., 2023, arXiv:2302.06675), optionally "cautious" (arXiv:2411.16085)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import functional as F
from ._base import LionFamily, ParamsT, run_closure


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
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, weight_decay=weight_decay, caution=caution, maximize=maximize,
            foreach=foreach, momentum_dtype=momentum_dtype, fused=fused,
        )  # fmt: skip
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step."""
        loss = run_closure(closure)
        for b in map(self._gather, self.param_groups):
            g = b.group
            F.lion(b.params, b.grads, b.exp_avgs, lr=g["lr"], beta1=g["betas"][0],
                   beta2=g["betas"][1], weight_decay=g["weight_decay"], maximize=g["maximize"],
                   caution=g["caution"], impl=b.impl)  # fmt: skip
        return loss
