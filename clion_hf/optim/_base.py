"""What Lion and CLion share: validation, state, grouping of tensors, step statistics."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .fused import compiling, default_fused, unavailable_reason

try:  # FSDP2 shards parameters as DTensors; the update runs on the local shards.
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - torch built without distributed
    DTensor = ()  # type: ignore[assignment,misc]

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]


def check_lr(lr: float | Tensor) -> None:
    value = lr.item() if isinstance(lr, Tensor) else lr
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"invalid lr={lr!r}: must be a finite number >= 0")


def check_betas(betas: tuple[float, float]) -> None:
    if not (isinstance(betas, tuple | list) and len(betas) == 2):
        raise ValueError(f"invalid betas={betas!r}: must be a pair (beta1, beta2) in [0, 1)")
    for i, b in enumerate(betas):
        if not (isinstance(b, int | float) and 0.0 <= b < 1.0):
            raise ValueError(f"invalid betas[{i}]={b!r}: each beta must be in [0, 1)")


def check_weight_decay(weight_decay: float) -> None:
    if not (
        isinstance(weight_decay, int | float)
        and math.isfinite(weight_decay)
        and weight_decay >= 0
    ):
        raise ValueError(f"invalid weight_decay={weight_decay!r}: must be a finite number >= 0")


def check_momentum_dtype(momentum_dtype: torch.dtype | None) -> None:
    allowed = (None, torch.float32, torch.bfloat16, torch.float16, torch.float64)
    if momentum_dtype not in allowed:
        raise ValueError(
            f"invalid momentum_dtype={momentum_dtype!r}: allowed are None (fp32, or the "
            "parameter's dtype if wider), torch.float32, torch.bfloat16, torch.float16, "
            "torch.float64"
        )


def check_fused(fused: bool | None, foreach: bool | None) -> None:
    if fused not in (None, True, False):
        raise ValueError(f"invalid fused={fused!r}: allowed are None (automatic), True, False")
    if fused and foreach:
        raise ValueError("fused=True and foreach=True are exclusive; set at most one of them")


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2), or the tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


class LionFamily(Optimizer):
    """Base class: one momentum buffer ``exp_avg`` per parameter, sign-like updates."""

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def _momentum_dtype(self, p: Tensor, group: dict[str, Any]) -> torch.dtype:
        if group["momentum_dtype"] is not None:
            return group["momentum_dtype"]
        # Momentum is never stored coarser than fp32 unless asked for: bf16 momentum
        # drops small gradients (1 - beta2 = 0.01 of them) to nothing.
        return torch.float64 if p.dtype in (torch.float64, torch.complex128) else torch.float32

    def _gather(
        self, group: dict[str, Any]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Parameters with a gradient, their (local) tensors, grads and momenta."""
        owners, params, grads, exp_avgs = [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients; "
                    "use a dense embedding (sparse=False)"
                )
            state = self.state[p]
            if len(state) == 0:
                dt = self._momentum_dtype(p, group)
                if p.is_complex():
                    dt = {torch.float32: torch.complex64, torch.float64: torch.complex128}.get(
                        dt, torch.complex64
                    )
                state["exp_avg"] = torch.zeros_like(
                    p, dtype=dt, memory_format=torch.preserve_format
                )
            owners.append(p)
            params.append(local(p))
            grads.append(local(p.grad))
            exp_avgs.append(local(state["exp_avg"]))
        return owners, params, grads, exp_avgs

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch.optim, but the momentum keeps its saved dtype.

        torch.optim casts loaded floating state to each parameter's dtype, which would turn
        the fp32 momentum of bf16 parameters into bf16 on resume (and lose precision).
        """
        saved = {k: v.get("exp_avg") for k, v in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, params, strict=True):
            m, state = saved.get(i), self.state.get(p)
            if isinstance(m, Tensor) and state and state["exp_avg"].dtype != m.dtype:
                state["exp_avg"] = m.to(device=state["exp_avg"].device, copy=True)

    def _check_fused_devices(self) -> None:
        """``fused=True`` needs a fused implementation for every parameter's device."""
        for group in self.param_groups:
            if not group.get("fused"):
                continue
            for p in group["params"]:
                reason = unavailable_reason(p.device)
                if reason is not None:
                    raise ValueError(
                        f"fused=True is not available for parameters on {p.device}: "
                        f"{reason}; use fused=None or fused=False"
                    )

    @staticmethod
    def _use_fused(group: dict[str, Any], params: list[Tensor]) -> bool:
        if compiling() or not params:
            # Inside a compiled step the functional math is traced and fused by Inductor.
            return False
        if group.get("fused") is not None:
            return bool(group["fused"])
        if group.get("foreach") is not None:  # an explicit foreach=True/False choice
            return False
        return default_fused(params)

    @staticmethod
    def _use_foreach(group: dict[str, Any], params: list[Tensor]) -> bool:
        if group["foreach"] is not None:
            return bool(group["foreach"])
        # Like torch.optim: foreach by default on accelerators, where it saves launches;
        # on CPU the foreach kernels are loops and gain nothing.
        return bool(params) and all(p.device.type != "cpu" for p in params)

    def state_bytes(self) -> int:
        """Bytes held in optimizer state tensors (momentum buffers)."""
        return sum(
            t.numel() * t.element_size()
            for s in self.state.values()
            for t in s.values()
            if isinstance(t, Tensor)
        )
