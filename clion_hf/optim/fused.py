"""Dispatch of the fused paths: a C++ kernel on CPU, Triton kernels on CUDA.

On CPU the fused path is the default (``fused=None``) wherever its kernel builds: it
gives the foreach path's results bit for bit at a fraction of the time, and costs a
one-off compilation of a few seconds per machine (cached on disk). Without a C++
compiler the default falls back to the eager paths. On CUDA the fused path is opt-in
(``fused=True``): the Triton kernels are tested under ``TRITON_INTERPRET=1`` only, and
become the CUDA default once ``benchmarks/gpu_check.sh`` has passed on a GPU.

Under ``torch.compile`` of a training step the fused paths step aside and the plain
functional math is traced instead: Inductor then fuses it into the surrounding graph,
and no host-side launch code (pointer tables, foreign calls) breaks the graph.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from . import fused_cpu
from .functional import direction_min_abs

# Testing only: route the fused path through the Triton kernels even for CPU tensors, so
# that they run under ``TRITON_INTERPRET=1`` through the optimizer classes.
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
    if device.type == "cpu" and not _FORCE_TRITON:
        return None if fused_cpu.available() else fused_cpu.unavailable_reason()
    if device.type in ("cuda", "cpu"):
        return None if triton_available() else "the fused CUDA path needs triton"
    return f"there is no fused path for {device.type} tensors (only cpu and cuda)"


def default_fused(params: list[Tensor]) -> bool:
    """The automatic choice for ``fused=None`` (and ``foreach=None``): CPU only, see above."""
    return (
        bool(params)
        and not _FORCE_TRITON
        and all(p.device.type == "cpu" for p in params)
        and fused_cpu.available()
    )


def compiling() -> bool:
    """True while dynamo traces (a compiled training step): the fused paths step aside."""
    return torch.compiler.is_compiling()


def fused_update(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], **kw):
    """:func:`~clion_hf.optim.functional.lion_clion_update` on the fused path of the device."""
    if not params:
        return None
    if params[0].device.type == "cuda" or _FORCE_TRITON:
        from .triton_kernels import triton_update

        return triton_update(params, grads, exp_avgs, **kw)
    from .fused_cpu import fused_cpu_update

    return fused_cpu_update(params, grads, exp_avgs, **kw)


def stops_early(params: list[Tensor]) -> bool:
    """Whether :func:`fused_direction_min_abs` honours ``stop`` for these tensors (CPU)."""
    return bool(params) and params[0].device.type == "cpu" and not _FORCE_TRITON


def fused_direction_min_abs(
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    beta1: float,
    maximize: bool,
    stop_below: float | None = None,
    stop: str | None = None,
) -> Tensor:
    """:func:`~clion_hf.optim.functional.direction_min_abs` on the fused path.

    ``stop``/``stop_below``: see :func:`~clion_hf.optim.fused_cpu.fused_cpu_direction_min_abs`;
    honoured where :func:`stops_early` (the result is exact elsewhere).
    """
    if not grads:
        return direction_min_abs(grads, exp_avgs, beta1=beta1, maximize=maximize)
    if grads[0].device.type == "cuda" or _FORCE_TRITON:
        from .triton_kernels import triton_direction_min_abs

        return triton_direction_min_abs(grads, exp_avgs, beta1=beta1)
    from .fused_cpu import fused_cpu_direction_min_abs

    return fused_cpu_direction_min_abs(
        grads, exp_avgs, beta1=beta1, stop_below=stop_below, stop=stop
    )
