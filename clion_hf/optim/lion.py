"""Lion (Chen et al., 2023, arXiv:2302.06675), optionally "cautious" (arXiv:2411.16085)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._base import (
    LionFamily,
    ParamsT,
    check_betas,
    check_fused,
    check_lr,
    check_momentum_dtype,
    check_weight_decay,
)
from .functional import lion_clion_update
from .fused import fused_update


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
            ``torch.compile`` of the training step the plain math is traced instead.
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
        check_lr(lr)
        check_fused(fused, foreach)
        check_betas(betas)
        check_weight_decay(weight_decay)
        check_momentum_dtype(momentum_dtype)
        defaults = dict(
            lr=lr, betas=tuple(betas), weight_decay=weight_decay, caution=bool(caution),
            maximize=bool(maximize), foreach=foreach, momentum_dtype=momentum_dtype,
            fused=fused,
        )  # fmt: skip
        super().__init__(params, defaults)
        self._check_fused_devices()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            _, params, grads, exp_avgs = self._gather(group)
            if not params:
                continue
            beta1, beta2 = group["betas"]
            kw = dict(
                lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                mode="lion", maximize=group["maximize"], caution=group["caution"],
            )  # fmt: skip
            if self._use_fused(group, params):
                fused_update(params, grads, exp_avgs, **kw)
            else:
                lion_clion_update(
                    params, grads, exp_avgs, foreach=self._use_foreach(group, params), **kw
                )
        return loss
