"""Dispatch of the fused paths: compiled CPU kernels or Triton kernels on CUDA.

The fused paths are opt-in (``fused=True``); ``fused=None`` (the default) keeps the
foreach/single-tensor path. On CPU the fused path is several times faster per step but
compiles C++ kernels at the first step (seconds, once per process; a C++ compiler must be
installed), the wrong surprise for small models and tests. The Triton kernels are tested
under ``TRITON_INTERPRET=1`` only: they become the CUDA default once
``benchmarks/gpu_check.sh`` has passed on a GPU.

Under ``torch.compile`` of a training step the fused paths step aside and the plain
functional math is traced instead: Inductor then fuses it into the surrounding graph,
and no host-side launch code (pointer tables, nested compiles) breaks the graph.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

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


def supported_device(device: torch.device) -> bool:
    """Whether a fused implementation exists for tensors on ``device``."""
    if device.type == "cpu":
        return True
    return device.type == "cuda" and triton_available()


def default_fused(params: list[Tensor]) -> bool:
    """The automatic choice for ``fused=None``: off everywhere for now (see the module doc).

    Not yet validated on GPU hardware, the Triton path must not be what CUDA users get
    without asking.
    """
    del params
    return False


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
