"""Fused CPU path: one ``torch.compile``d pass per tensor, one graph for every shape.

Each parameter is updated by a compiled function of one flat tensor triple ``(p, g, m)``
compiled with ``dynamic=True``: the sizes are symbolic, so one graph (and one C++ kernel)
serves every tensor of the model and the one-off compile cost does not grow with the
number of parameters. Inductor fuses the whole update (direction, ``h(c)``, weight decay,
momentum, and the element/soft statistics) into one loop that reads p, g, m once and
writes p, m once (20 bytes per fp32 element). CLion's ``global``/``tensor`` modes first
run a compiled reduction pass (min non-zero ``abs(c)``, 8 bytes per element) per tensor.

The arithmetic mirrors :mod:`clion_hf.optim.functional` operation by operation, so the
results agree with the foreach path bitwise in fp32 (tested).

Hyper-parameters travel as a small tensor, not Python floats, so a learning-rate schedule
does not trigger recompilation. Each static configuration (mode, caution, maximize, stats)
gets its own copy of the function's code object, hence its own dynamo cache, so many
optimizers in one process do not exhaust dynamo's per-function recompile limit.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .functional import _as_real, _single_tensor_update, compute_dtype

_COMPILED: dict[tuple[Any, ...], Callable[..., Any]] = {}


def _update_one(
    p: Tensor, g: Tensor, m: Tensor, hp: Tensor, take: Tensor | None,
    mode: str, caution: bool, maximize: bool, stats: bool,
) -> tuple[Tensor, Tensor] | None:  # fmt: skip
    """One tensor's update in place; ``hp = [lr, 1 - lr*wd, 1 - beta1, 1 - beta2, nu]``."""
    ct = hp.dtype
    lr, decay, w1, w2, nu = hp[0], hp[1], hp[2], hp[3], hp[4]
    pc, gc, mc = p.to(ct), g.to(ct), m.to(ct)
    if maximize:
        gc = -gc
    c = torch.lerp(mc, gc, w1)
    if mode == "lion":
        h = torch.sign(c)
    elif mode in ("global", "tensor"):
        h = torch.where(take, torch.sign(c), c)
    elif mode == "element":
        h = torch.where(c.abs() >= nu, torch.sign(c), c)
    else:  # soft
        h = (c / nu).clamp(-1.0, 1.0)
    if caution:
        # As functional._caution: u * mask * (numel / (count + 1)), where Tensor.__rtruediv__
        # is reciprocal() * numel. An int count is exact where an fp32 sum may not be.
        mask = (h * gc > 0).to(ct)
        count = (h * gc > 0).sum(dtype=torch.int32).to(ct)
        h = h * mask * ((count + 1).reciprocal() * p.numel())
    p.copy_(pc * decay - h * lr)
    m.copy_(torch.lerp(mc, gc, w2))
    if not stats:
        return None
    a = c.abs()
    if mode == "lion":
        signed = torch.full((), p.numel(), dtype=torch.int32)
    else:  # element/soft: soft equals sign(c) exactly where abs(c) >= nu
        signed = (a >= nu).sum(dtype=torch.int32)
    return signed, torch.where(a == 0, math.inf, a).amin().float()


def _min_abs_one(g: Tensor, m: Tensor, hp: Tensor) -> Tensor:
    """Smallest non-zero ``abs(c)`` of one tensor (fp32, 0-d; ``inf`` if ``c == 0``)."""
    ct = hp.dtype
    a = torch.lerp(m.to(ct), g.to(ct), hp[2]).abs()
    return torch.where(a == 0, math.inf, a).amin().float()


def _compiled(fn: Callable[..., Any], key: tuple[Any, ...]) -> Callable[..., Any]:
    """``torch.compile(fn, dynamic=True)`` with a private code object (its own cache)."""
    full = (fn.__name__, *key)
    if full not in _COMPILED:
        name = f"{fn.__name__}__" + "_".join(str(k).replace("torch.", "") for k in key)
        code = fn.__code__.replace(co_name=name)
        clone = types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
        _COMPILED[full] = torch.compile(clone, dynamic=True, fullgraph=True)
    return _COMPILED[full]


def _hparams(lr: float | Tensor, weight_decay: float, beta1: float, beta2: float,
             nu: float, dtype: torch.dtype) -> Tensor:  # fmt: skip
    # Scalars are rounded from Python doubles to ``dtype`` exactly as ATen rounds a
    # Python-scalar operand, so the compiled math sees the eager path's numbers.
    if isinstance(lr, Tensor):
        lr_t = lr.detach().to("cpu", dtype)
        rest = torch.tensor([1.0 - beta1, 1.0 - beta2, nu], dtype=dtype)
        decay = (1.0 - lr.detach().double().cpu() * weight_decay).to(dtype)
        return torch.cat([lr_t.reshape(1), decay.reshape(1), rest])
    return torch.tensor([lr, 1.0 - lr * weight_decay, 1.0 - beta1, 1.0 - beta2, nu], dtype=dtype)


def _flat(t: Tensor) -> Tensor:
    return _as_real(t).view(-1)


def _fusable(*ts: Tensor) -> bool:
    return all(_as_real(t).is_contiguous() for t in ts)


@torch.no_grad()
def fused_cpu_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    mode: str,
    nu: float = 1.0,
    take_sign: Tensor | None = None,
    maximize: bool = False,
    caution: bool = False,
    stats: bool = False,
) -> tuple[Tensor, Tensor] | None:
    """:func:`clion_hf.optim.functional.lion_clion_update`, fused and compiled, on CPU."""
    if not params:
        return None
    kernel_stats = stats and mode in ("lion", "element", "soft")
    takes = take_sign.unbind() if take_sign is not None else [None] * len(params)
    hps: dict[torch.dtype, Tensor] = {}
    counts: list[Tensor] = []
    mins: list[Tensor] = []
    for p, g, m, take in zip(params, grads, exp_avgs, takes, strict=True):
        if p.numel() == 0:
            if stats:
                counts.append(torch.zeros((), dtype=torch.float32))
                mins.append(torch.full((), math.inf))
            continue
        if not _fusable(p, g, m):
            # Rare (strided views as parameters): the eager math, one tensor.
            out = _single_tensor_update(
                [p], [g], [m], lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay,
                mode=mode, nu=nu, take_sign=None if take is None else take.reshape(1),
                maximize=maximize, caution=caution, stats=stats,
            )  # fmt: skip
            if out is not None:
                counts.append(out[0][0])
                mins.append(out[1][0])
            continue
        ct = compute_dtype(_as_real(p).dtype)
        if ct not in hps:
            hps[ct] = _hparams(lr, weight_decay, beta1, beta2, nu, ct)
        # One code object per dtype combination keeps each under dynamo's recompile limit.
        fn = _compiled(_update_one, (mode, caution, maximize, kernel_stats, p.dtype, g.dtype,
                                     m.dtype))
        out = fn(_flat(p), _flat(g), _flat(m), hps[ct], take, mode, caution, maximize,
                 kernel_stats)  # fmt: skip
        if kernel_stats:
            counts.append(out[0].float())
            mins.append(out[1])
        elif stats:
            n = float(_as_real(p).numel())
            counts.append(take.float() * n if take is not None else torch.tensor(n))
            mins.append(torch.full((), math.nan))
    if stats:
        return torch.stack(counts), torch.stack(mins)
    return None


@torch.no_grad()
def fused_cpu_direction_min_abs(
    grads: list[Tensor], exp_avgs: list[Tensor], *, beta1: float
) -> Tensor:
    """:func:`clion_hf.optim.functional.direction_min_abs`, compiled, on CPU."""
    out = []
    hps: dict[torch.dtype, Tensor] = {}
    for g, m in zip(grads, exp_avgs, strict=True):
        gr, mr = _as_real(g), _as_real(m)
        if gr.numel() == 0:
            out.append(torch.full((), math.inf))
            continue
        ct = compute_dtype(gr.dtype)
        if ct not in hps:
            hps[ct] = _hparams(0.0, 0.0, beta1, 0.0, 1.0, ct)
        if gr.is_contiguous() and mr.is_contiguous():
            fn = _compiled(_min_abs_one, (gr.dtype, mr.dtype))
            out.append(fn(gr.view(-1), mr.view(-1), hps[ct]))
        else:
            c = torch.lerp(mr.to(ct), gr.to(ct), 1.0 - beta1).abs()
            out.append(torch.where(c == 0, math.inf, c).amin().float())
    return torch.stack(out) if out else torch.empty(0, dtype=torch.float32)
