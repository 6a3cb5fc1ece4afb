"""The Lion / CLion update as functions over lists of tensors (``torch.optim.adamw`` style).

Entry points: :func:`lion` and :func:`clion` take the parameters, gradients and momenta
of one param group, the hyper-parameters and (CLion ``global``/``tensor``) the branch
decision, and dispatch to one implementation chosen by :func:`choose_impl`, the one place
that picks it:

* ``"single"``: a Python loop over tensors (:func:`._math.single_tensor_update`);
* ``"foreach"``: ``torch._foreach_*`` kernels over the whole list (:func:`._math.foreach_update`);
* ``"fused"``: one multi-tensor kernel per device and dtype pair, registered as the torch
  custom op ``clion_hf::fused_update_`` (:mod:`clion_hf.optim.kernels`).

All three give the same bits on the same inputs (tested). The math, the dtype rules and
the rule for non-finite values are in :mod:`._math`; this module is the one place that
calls into :mod:`.kernels` (which import :mod:`._math`, never this module).

The optimizers call :func:`update` and :func:`pass1` with lists they built from validated
param groups and state; :func:`lion` and :func:`clion`, for callers with lists of their
own, check the mode too. The one per-step check of the lists (a momentum edited by hand
would be read past its end) runs where the tensors are visited anyway.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import kernels
from ._math import (
    Hyper,
    Impl,
    Stats,
    TensorList,
    compute_dtype,
    foreach_update,
    single_tensor_update,
    take_sign,
)
from ._math import min_abs_c as eager_min_abs_c
from .validate import LR_MAX, MODES, check_lr, check_mode, check_update_lists

__all__ = ["MODES", "Hyper", "Stats", "choose_impl", "clion", "compute_dtype", "lion",
           "pass1", "take_sign", "update"]  # fmt: skip


def choose_impl(
    params: list[Tensor], *, foreach: bool | None = None, fused: bool | None = None
) -> Impl:
    """The implementation for these tensors: the role of torch's ``_default_to_fused_or_foreach``.

    Explicit choices win (``fused=True``, else ``foreach=True``/``False``). Automatic
    (both None): the fused kernel on CPU where it builds (it gives the foreach path's bits
    at a fraction of the time), foreach on accelerators, the single-tensor loop otherwise.
    Under ``torch.compile`` the plain math is traced unless ``fused=True``: Inductor fuses
    it with the rest of the step, which an opaque custom op would prevent.
    """
    if fused:
        return "fused"  # under torch.compile too: the custom op goes into the graph
    if torch.compiler.is_compiling():
        return "foreach" if foreach else "single"
    if foreach is not None or fused is not None:
        return "foreach" if foreach else "single"
    if params and kernels.default_fused(params):
        return "fused"
    return "foreach" if params and all(p.device.type != "cpu" for p in params) else "single"


# --------------------------------------------------------------------------------------
# Pass 1 (CLion global/tensor modes): the per-tensor min |c| that decides the branch.
# --------------------------------------------------------------------------------------


def pass1(grads: TensorList, exp_avgs: TensorList, *, beta1: float, maximize: bool = False,
          impl: Impl = "foreach", mode: str = "tensor",
          below: float | None = None) -> tuple[Tensor, bool]:  # fmt: skip
    """Per-tensor smallest non-zero ``abs(c)`` (1-d, fp64; inf where ``c == 0``) and
    whether those are exact.

    ``below``: the decision only needs to know whether the minimum is below this value, so
    the fused CPU kernel stops reading a tensor (``mode="tensor"``) or every tensor
    (``mode="global"``) at the first ``abs(c)`` below it; its result is then a witness
    below it, not the minimum (``exact`` False: the update pass measures the minima).
    Without ``below``, and on every other path, the minima are exact. Not while compiling:
    reading whether it stopped would break the graph.
    """
    if not grads:
        return torch.empty(0, dtype=torch.float64), True
    if impl != "fused":
        return eager_min_abs_c(grads, exp_avgs, beta1, maximize, impl == "foreach"), True
    if not kernels.stops_early(grads[0].device):
        below = None  # the kernel gives the minima; and reading them would sync the device
    mins = kernels.min_abs_c(grads, exp_avgs, beta1, maximize, mode, below)
    return mins, below is None or not bool((mins < below).any())  # a CPU read: no sync


# --------------------------------------------------------------------------------------
# The entry points.
# --------------------------------------------------------------------------------------


def lion(params: TensorList, grads: TensorList, exp_avgs: TensorList, *, lr: float | Tensor,
         beta1: float, beta2: float, weight_decay: float = 0.0, maximize: bool = False,
         caution: bool = False, impl: Impl | None = None) -> None:  # fmt: skip
    """One Lion step in place (``caution``: the cautious mask of arXiv:2411.16085)."""
    check_update_lists(params, grads, exp_avgs)
    hyper = Hyper(scalar_lr(lr), beta1, beta2, weight_decay, None, 1.0, maximize, caution)
    update(params, grads, exp_avgs, hyper, impl=impl)


def clion(params: TensorList, grads: TensorList, exp_avgs: TensorList, *, lr: float | Tensor,
          beta1: float, beta2: float, weight_decay: float = 0.0, nu: float, mode: str,
          maximize: bool = False, take: Tensor | None = None, min_abs_c: Tensor | None = None,
          stats: bool = False, impl: Impl | None = None) -> Stats | None:  # fmt: skip
    """One CLion step in place; with ``stats``, the per-tensor :class:`Stats`.

    ``global``/``tensor`` modes: ``take`` (1-d bool, one decision per tensor) is the
    caller's when the decision spans more than these tensors (several param groups,
    sharded ranks); without it the decision is taken here over these tensors.
    ``min_abs_c``: the exact pass-1 minima that went into ``take``, if the caller has them
    (else, with ``stats``, the update pass measures them).
    """
    check_mode(mode)
    check_update_lists(params, grads, exp_avgs)
    hyper = Hyper(scalar_lr(lr), beta1, beta2, weight_decay, mode, nu, maximize)
    impl = impl or choose_impl(params)
    if mode in ("global", "tensor") and take is None and params:
        min_abs_c, _ = pass1(grads, exp_avgs, beta1=beta1, maximize=maximize, impl=impl)
        take = take_sign(min_abs_c, nu, [p.dtype for p in params], mode)
    return update(params, grads, exp_avgs, hyper, take=take, stats=stats, min_abs_c=min_abs_c,
                  impl=impl)  # fmt: skip


def scalar_lr(lr: float | Tensor) -> float | Tensor:
    """A tensor ``lr`` of any 1-element shape as a 0-d view, as torch.optim's ``_to_scalar``:
    the foreach ops take only 0-d scalar tensors, and a (1, 1) lr would broadcast a 1-d
    update to 2-d. The view follows in-place updates of ``lr``."""
    return lr.view(()) if isinstance(lr, Tensor) and lr.dim() != 0 else lr


def update(params: TensorList, grads: TensorList, exp_avgs: TensorList, hyper: Hyper, *,
           take: Tensor | None = None, stats: bool = False, min_abs_c: Tensor | None = None,
           impl: Impl | None = None) -> Stats | None:  # fmt: skip
    """One update in place; with ``stats``, :class:`Stats`.

    ``min_abs_c``: exact minima from pass 1, reported instead of measuring them again.
    """
    if not params:
        return None
    if not isinstance(hyper.lr, Tensor) and hyper.lr > LR_MAX:
        check_lr(hyper.lr)  # set after the group was checked (a scheduler): the same error
    if hyper.mode in ("global", "tensor") and take is None:
        raise ValueError(f"mode={hyper.mode!r} needs the branch decision (take)")
    impl = impl or choose_impl(params)
    want_min = stats and min_abs_c is None
    if impl == "fused":  # the kernels check the lists they read by the params' sizes
        out = kernels.update(params, grads, exp_avgs, hyper, take, stats, want_min)
    else:
        # State edited by hand: one clear line before anything is written. (On the fused
        # paths the kernels' own loop over the tensors checks it.)
        check_update_lists(params, grads, exp_avgs)
        fn = foreach_update if impl == "foreach" else single_tensor_update
        out = fn(params, grads, exp_avgs, hyper, take, stats, want_min)
    if out is not None and min_abs_c is not None:
        out = Stats(out.count, min_abs_c.to(out.min_abs_c))
    return out
