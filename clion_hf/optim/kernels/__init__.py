"""The fused paths as torch custom ops: a C++ kernel on CPU, Triton kernels on CUDA.

Two operators, registered with :func:`torch.library.custom_op`:

* ``clion_hf::fused_update_``: one Lion/CLion update of a list of tensors, in place. It
  declares that it mutates ``params`` and ``exp_avgs``, so autograd's version counters
  move (stepping between a forward and its backward raises "modified by an inplace
  operation", as with torch's own optimizers), and ``torch.compile`` functionalizes it.
  Returns the per-tensor sign-branch count and min non-zero ``abs(c)``.
* ``clion_hf::fused_min_abs_c``: CLion ``global``/``tensor`` pass 1, the
  per-tensor min non-zero ``abs(c)`` (on CPU optionally stopping at the first value below
  a threshold: :func:`min_abs_c`).

The update op's scalar arguments are the fields of :class:`~clion_hf.optim._math.Hyper`,
in its order and with its names, but two: a tensor ``lr`` travels as ``lr_tensor``, and
``mode`` as ``clion_mode`` (torch's functionalization passes a ``mode`` of its own to an
op's kernel under ``torch.compile``). The op's kernel rebuilds the record (:func:`_hyper`)
and hands it to the device kernels unchanged.
These modules import the math from :mod:`.._math` only; :mod:`..functional` is the one
caller of :func:`update` and :func:`min_abs_c`.

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

from .._math import Hyper, Stats, TensorList, stat_dtype

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
    """Whether :func:`min_abs_c` honours ``below`` on ``device`` (the CPU kernel)."""
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
    clion_mode: str | None,
    nu: float,
    maximize: bool,
    caution: bool,
    want_min: bool,
) -> tuple[Tensor, Tensor]:
    device = params[0].device if params else "?"
    raise NotImplementedError(f"clion_hf::fused_update_ has no kernel for {device} tensors")


def _op_args(hyper: Hyper) -> tuple[Any, ...]:
    """``hyper`` as the op's arguments ``lr_tensor, lr, beta1, ..., caution``."""
    lr = hyper.lr
    return (lr if isinstance(lr, Tensor) else None, 0.0 if isinstance(lr, Tensor) else lr,
            hyper.beta1, hyper.beta2, hyper.weight_decay, hyper.mode, hyper.nu,
            hyper.maximize, hyper.caution)  # fmt: skip


def _hyper(lr_tensor: Tensor | None, lr: float, *fields: Any) -> Hyper:
    """The inverse of :func:`_op_args`."""
    return Hyper(lr if lr_tensor is None else lr_tensor, *fields)


@_fused_update.register_kernel(("cpu", "cuda"))
def _fused_update_kernel(params, grads, exp_avgs, take, lr_tensor, lr, *args):  # noqa: ANN001, ANN202
    *fields, want_min = args
    hyper = _hyper(lr_tensor, lr, *fields)
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


@torch.library.custom_op("clion_hf::fused_min_abs_c", mutates_args=())
def _fused_min_abs_c(
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    beta1: float,
    maximize: bool,
    clion_mode: str,
    below: float | None,
) -> Tensor:
    device = grads[0].device if grads else "?"
    raise NotImplementedError(f"clion_hf::fused_min_abs_c has no kernel for {device}")


@_fused_min_abs_c.register_kernel(("cpu", "cuda"))
def _fused_min_abs_c_kernel(grads, exp_avgs, beta1, maximize, clion_mode, below):  # noqa: ANN001, ANN202
    if grads and _is_triton(grads[0]):
        from . import cuda

        return cuda.min_abs_c(grads, exp_avgs, beta1, maximize)
    from . import cpu

    return cpu.min_abs_c(grads, exp_avgs, beta1, maximize, clion_mode, below)


@_fused_min_abs_c.register_fake
def _fused_min_abs_c_fake(grads, exp_avgs, *args):  # noqa: ANN001, ANN202
    device = grads[0].device if grads else torch.device("cpu")
    return torch.empty(len(grads), dtype=stat_dtype(device), device=device)


# ------------------------------------------------------------------- called by functional


def update(params: TensorList, grads: TensorList, exp_avgs: TensorList, hyper: Hyper,
           take: Tensor | None, stats: bool, want_min: bool) -> Stats | None:  # fmt: skip
    """The fused implementation of :func:`clion_hf.optim.functional.update` (the custom op)."""
    count, min_abs_c = torch.ops.clion_hf.fused_update_(
        params, grads, exp_avgs, take, *_op_args(hyper), stats and want_min
    )
    return Stats(count, min_abs_c) if stats else None


def min_abs_c(grads: TensorList, exp_avgs: TensorList, beta1: float, maximize: bool = False,
              mode: str = "tensor", below: float | None = None) -> Tensor:  # fmt: skip
    """CLion pass 1 on the fused path: per-tensor min non-zero ``abs(c)`` (fp64).

    With ``below``, the CPU kernel (:func:`stops_early`) stops reading a tensor
    (``mode="tensor"``) or every tensor (``mode="global"``) at the first ``abs(c)`` below
    it: such a result is a witness below ``below``, not the minimum. The Triton kernel
    always gives the minimum.
    """
    if mode not in ("global", "tensor"):
        raise ValueError(f"invalid mode={mode!r}: pass 1 runs for 'global' and 'tensor'")
    return torch.ops.clion_hf.fused_min_abs_c(grads, exp_avgs, beta1, maximize, mode, below)
