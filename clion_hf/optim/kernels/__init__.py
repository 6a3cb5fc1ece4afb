"""The fused paths as torch custom ops: a C++ kernel on CPU, Triton kernels on CUDA.

Two operators, registered with :func:`torch.library.custom_op`:

* ``clion_hf::fused_update_``: one Lion/CLion update of a list of tensors, in place. It
  declares that it mutates ``params`` and ``exp_avgs``, so autograd's version counters
  move (stepping between a forward and its backward raises "modified by an inplace
  operation", as with torch's own optimizers), and ``torch.compile`` functionalizes it.
  Returns the per-tensor sign-branch count and min non-zero ``abs(c)``.
* ``clion_hf::fused_direction_min_abs``: CLion ``global``/``tensor`` pass 1, the
  per-tensor min non-zero ``abs(c)`` (optionally stopping at the first value below nu).

Each has a CPU kernel (:mod:`.cpu`, the C++ source called through ctypes), a CUDA kernel
(:mod:`.cuda`, Triton) and a fake kernel (shapes only), so FakeTensor/meta tracing and the
profiler see them like any torch op. Why a Python custom op around ctypes rather than a
C++ torch extension: see :mod:`.cpu` (build time and portability); the dispatcher sees
the same operator either way.

When the fused path runs: ``fused=True``, or by default on CPU where the C++ kernel
builds vectorised (:func:`default_fused`): it gives the foreach path's results bit for bit. On CUDA
it is opt-in: the Triton kernels are tested under ``TRITON_INTERPRET=1`` only so far.
Inside a compiled step the optimizers trace the plain math unless ``fused=True`` is set
(then this op is called from the graph): Inductor fuses traced math with the rest of the
step, which an opaque op prevents.

``CLION_HF_FORCE_TRITON=1`` (tests) sends CPU tensors through the Triton kernels too, so
that they run under Triton's interpreter through these same operators.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from torch import Tensor

from ..functional import Hyper, Stats, TensorList, stat_dtype

_FORCE_TRITON = os.environ.get("CLION_HF_FORCE_TRITON") == "1"


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (it is needed for the fused CUDA path)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install that fails at import
        return False
    return True


def unavailable_reason(device: torch.device) -> str | None:
    """Why ``fused=True`` cannot run on ``device``, or None if it can."""
    from . import cpu

    if device.type == "cpu" and not _FORCE_TRITON:
        return None if cpu.available() else cpu.unavailable_reason()
    if device.type in ("cuda", "cpu"):
        return None if triton_available() else "the fused CUDA path needs triton"
    return f"there is no fused path for {device.type} tensors (only cpu and cuda)"


def default_fused(params: list[Tensor]) -> bool:
    """The automatic choice (``fused=None``, ``foreach=None``): CPU, where the kernel builds
    vectorised (elsewhere the foreach path is faster; :func:`.cpu.vectorised` says so)."""
    from . import cpu

    return (
        bool(params)
        and not _FORCE_TRITON
        and all(p.device.type == "cpu" for p in params)
        and cpu.automatic()  # a bounded wait for a first build; says why not, once
        and cpu.vectorised()
    )


def stops_early(device: torch.device) -> bool:
    """Whether :func:`direction_min_abs` honours ``stop`` on ``device`` (the CPU kernel)."""
    return device.type == "cpu" and not _FORCE_TRITON


def _is_triton(t: Tensor) -> bool:
    return t.device.type == "cuda" or _FORCE_TRITON


# ------------------------------------------------------------------------- the operators


@torch.library.custom_op("clion_hf::fused_update_", mutates_args=("params", "exp_avgs"))
def _fused_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    take: Tensor | None,
    lr_tensor: Tensor | None,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    nu: float,
    rule: str,
    maximize: bool,
    caution: bool,
    want_min: bool,
) -> tuple[Tensor, Tensor]:
    device = params[0].device if params else "?"
    raise NotImplementedError(f"clion_hf::fused_update_ has no kernel for {device} tensors")


def _hyper(lr_tensor: Tensor | None, args: tuple[Any, ...]) -> Hyper:
    lr, beta1, beta2, weight_decay, nu, rule, maximize, caution = args
    return Hyper(lr if lr_tensor is None else lr_tensor, beta1, beta2, weight_decay, rule, nu,
                 maximize, caution)  # fmt: skip


@_fused_update.register_kernel(("cpu", "cuda"))
def _fused_update_kernel(params, grads, exp_avgs, take, lr_tensor, *args):  # noqa: ANN001, ANN202
    *hyper_args, want_min = args
    hyper = _hyper(lr_tensor, tuple(hyper_args))
    if params and _is_triton(params[0]):
        from . import cuda

        return cuda.update(params, grads, exp_avgs, hyper, take, want_min)
    from . import cpu

    return cpu.update(params, grads, exp_avgs, hyper, take, want_min)


@_fused_update.register_fake
def _fused_update_fake(params, grads, exp_avgs, *args):  # noqa: ANN001, ANN202
    device = params[0].device if params else torch.device("cpu")
    n = len(params)
    return (torch.empty(n, dtype=torch.float32, device=device),
            torch.empty(n, dtype=stat_dtype(device), device=device))  # fmt: skip


@torch.library.custom_op("clion_hf::fused_direction_min_abs", mutates_args=())
def _fused_direction_min_abs(
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    beta1: float,
    maximize: bool,
    stop: str,
    stop_below: float,
) -> Tensor:
    device = grads[0].device if grads else "?"
    raise NotImplementedError(f"clion_hf::fused_direction_min_abs has no kernel for {device}")


@_fused_direction_min_abs.register_kernel(("cpu", "cuda"))
def _fused_direction_min_abs_kernel(grads, exp_avgs, beta1, maximize, stop, stop_below):  # noqa: ANN001, ANN202
    if grads and _is_triton(grads[0]):
        from . import cuda

        return cuda.direction_min_abs(grads, exp_avgs, beta1, maximize)
    from . import cpu

    return cpu.direction_min_abs(grads, exp_avgs, beta1, maximize, stop or None,
                                 None if stop == "" else stop_below)  # fmt: skip


@_fused_direction_min_abs.register_fake
def _fused_direction_min_abs_fake(grads, exp_avgs, *args):  # noqa: ANN001, ANN202
    device = grads[0].device if grads else torch.device("cpu")
    return torch.empty(len(grads), dtype=stat_dtype(device), device=device)


# ------------------------------------------------------------------- called by functional


def update(params: TensorList, grads: TensorList, exp_avgs: TensorList, hyper: Hyper,
           take: Tensor | None, stats: bool, want_min: bool) -> Stats | None:  # fmt: skip
    """:func:`clion_hf.optim.functional.clion`'s fused implementation (the custom op)."""
    lr_tensor = hyper.lr if isinstance(hyper.lr, Tensor) else None
    count, min_abs = torch.ops.clion_hf.fused_update_(
        params, grads, exp_avgs, take, lr_tensor, 0.0 if lr_tensor is not None else hyper.lr,
        hyper.beta1, hyper.beta2, hyper.weight_decay, hyper.nu, hyper.mode, hyper.maximize,
        hyper.caution, stats and want_min,
    )  # fmt: skip
    return Stats(count, min_abs) if stats else None


def direction_min_abs(grads: TensorList, exp_avgs: TensorList, beta1: float,
                      maximize: bool = False, stop: str | None = None,
                      stop_below: float | None = None) -> Tensor:  # fmt: skip
    """CLion pass 1 on the fused path (see :func:`.cpu.direction_min_abs` for ``stop``)."""
    if stop is not None and stop not in ("tensor", "all"):
        raise ValueError(f"invalid stop={stop!r}: allowed are None, 'tensor', 'all'")
    return torch.ops.clion_hf.fused_direction_min_abs(
        grads, exp_avgs, beta1, maximize, stop or "", 0.0 if stop_below is None else stop_below
    )
