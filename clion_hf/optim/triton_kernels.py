"""Fused CUDA path: Triton kernels that update many tensors per launch.

Tensors of one dtype combination are described by a table (one row per tensor: the
addresses of p, g, m and the element count) and cut into chunks of ``CHUNK`` elements; a
program updates one chunk. So one launch covers the whole model:

* ``_update_kernel``: one pass, reads p, g, m once and writes p, m once (20 bytes per fp32
  element). It also produces the per-tensor diagnostics in the same pass (count of
  coordinates that took the sign branch, min non-zero ``abs(c)``) with atomics.
* ``_reduce_kernel``: CLion ``global``/``tensor`` pass 1 (min non-zero ``abs(c)`` per
  tensor, reading g and m) and, for cautious Lion, the per-tensor count of the mask.

The per-tensor minimum is an ``atomic_min`` on the int32 bit pattern of a non-negative
float (its order is the float order). Nothing is read back to the host: the CLion decision
is a device tensor that the update kernel loads, and the tables are cached by tensor
addresses, so steady-state steps launch kernels only and can be captured in a CUDA graph.

The kernels also run under ``TRITON_INTERPRET=1`` on CPU tensors (how they are tested).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from .functional import _as_real, _single_tensor_update, compute_dtype, direction_min_abs

if os.environ.get("TRITON_INTERPRET") == "1":
    # The interpreter runs programs one by one in numpy: small blocks keep it fast, and
    # small chunks make tests cover tensors that span several programs (the atomics).
    BLOCK, CHUNK = 32, 64
else:
    BLOCK, CHUNK = 1024, 16 * 1024
_MODE_ID = {"lion": 0, "global": 1, "tensor": 1, "element": 2, "soft": 3}
_INF_BITS = 0x7F800000  # +inf as int32 bits


def _tl_dtype(dt: torch.dtype) -> Any:
    return {
        torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
        torch.float64: tl.float64,
    }[dt]  # fmt: skip


@triton.jit
def _lerp(a, b, w):
    # torch.lerp's two formulas (ATen Lerp.h): exact at both ends of the weight range.
    d = b - a
    return tl.where(w < 0.5, a + w * d, b - d * (1.0 - w))


@triton.jit
def _sign(c):
    s = tl.where(c > 0, 1.0, tl.where(c < 0, -1.0, 0.0)).to(c.dtype)
    return tl.where(c != c, c, s)  # NaN stays NaN, as torch.sign


@triton.jit
def _store(ptr, x, mask, DT: tl.constexpr):
    if DT == tl.bfloat16:
        # Round to nearest even by hand: the same bits as torch on every backend (Triton's
        # interpreter truncates in .to(bfloat16); a drift of one unit per step in tests).
        b = x.to(tl.float32).to(tl.uint32, bitcast=True)
        r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        tl.store(ptr, tl.where(x != x, x.to(tl.bfloat16), r), mask=mask)
    else:
        tl.store(ptr, x.to(DT), mask=mask)


@triton.jit
def _reduce_kernel(
    table, chunk_tensor, chunk_start, out, w1,
    WHAT: tl.constexpr, MAXIMIZE: tl.constexpr, G_DT: tl.constexpr, M_DT: tl.constexpr,
    CT: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """WHAT=0: atomic_min of min non-zero abs(c) bits; WHAT=1: atomic_add of sign(c)*g > 0."""
    pid = tl.program_id(0)
    t = tl.load(chunk_tensor + pid)
    start = tl.load(chunk_start + pid)
    g_ptr = tl.load(table + t * 4 + 1).to(tl.pointer_type(G_DT))
    m_ptr = tl.load(table + t * 4 + 2).to(tl.pointer_type(M_DT))
    n = tl.load(table + t * 4 + 3)
    acc_min = tl.full([BLOCK], float("inf"), tl.float32)
    acc_cnt = tl.zeros([BLOCK], tl.int32)
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(CT)
        m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(CT)
        if MAXIMIZE:
            g = -g
        c = _lerp(m, g, w1)
        if WHAT == 0:
            a = tl.abs(c)
            a = tl.where(mask & (a != 0), a, float("inf")).to(tl.float32)
            acc_min = tl.minimum(acc_min, a)
        else:
            agree = (_sign(c) * g > 0) & mask
            acc_cnt += agree.to(tl.int32)
    if WHAT == 0:
        tl.atomic_min(out + t, tl.min(acc_min, axis=0).to(tl.int32, bitcast=True))
    else:
        tl.atomic_add(out + t, tl.sum(acc_cnt, axis=0))


@triton.jit
def _update_kernel(
    table, chunk_tensor, chunk_start, take, caution_cnt, stat_cnt, stat_min, lr_ptr,
    lr, decay, wd, w1, w2, nu,
    MODE: tl.constexpr, CAUTION: tl.constexpr, MAXIMIZE: tl.constexpr, STATS: tl.constexpr,
    LR_TENSOR: tl.constexpr, P_DT: tl.constexpr, G_DT: tl.constexpr, M_DT: tl.constexpr,
    CT: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """One pass: c, h(c), decoupled weight decay, momentum; stats with atomics."""
    pid = tl.program_id(0)
    t = tl.load(chunk_tensor + pid)
    start = tl.load(chunk_start + pid)
    p_ptr = tl.load(table + t * 4 + 0).to(tl.pointer_type(P_DT))
    g_ptr = tl.load(table + t * 4 + 1).to(tl.pointer_type(G_DT))
    m_ptr = tl.load(table + t * 4 + 2).to(tl.pointer_type(M_DT))
    n = tl.load(table + t * 4 + 3)
    if LR_TENSOR:
        # A device learning rate (schedulers under CUDA graphs): read it, no host sync.
        lr_v = tl.load(lr_ptr).to(CT)
        decay_v = 1.0 - lr_v * wd
    else:
        lr_v = lr
        decay_v = decay
    if MODE == 1:
        take_t = tl.load(take + t) != 0
    if CAUTION:
        scale = (1.0 / (tl.load(caution_cnt + t).to(CT) + 1.0)) * n.to(CT)
    acc_cnt = tl.zeros([BLOCK], tl.int32)
    acc_min = tl.full([BLOCK], float("inf"), tl.float32)
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < n
        p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(CT)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(CT)
        m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(CT)
        if MAXIMIZE:
            g = -g
        c = _lerp(m, g, w1)
        a = tl.abs(c)
        if MODE == 0:
            h = _sign(c)
        elif MODE == 1:
            h = tl.where(take_t, _sign(c), c)
        elif MODE == 2:
            h = tl.where(a >= nu, _sign(c), c)
        else:
            h = tl.clamp(c / nu, -1.0, 1.0, propagate_nan=tl.PropagateNan.ALL)
        if CAUTION:
            h = tl.where(h * g > 0, h, 0.0) * scale
        p = p * decay_v - h * lr_v
        m = _lerp(m, g, w2)
        _store(p_ptr + offs, p, mask, P_DT)
        _store(m_ptr + offs, m, mask, M_DT)
        if STATS:
            if MODE == 0:
                acc_cnt += mask.to(tl.int32)
            else:
                acc_cnt += ((a >= nu) & mask).to(tl.int32)
            acc_min = tl.minimum(acc_min, tl.where(mask & (a != 0), a, float("inf")).to(tl.float32))
    if STATS:
        tl.atomic_add(stat_cnt + t, tl.sum(acc_cnt, axis=0))
        tl.atomic_min(stat_min + t, tl.min(acc_min, axis=0).to(tl.int32, bitcast=True))


# ----------------------------------------------------------------------------- host side

_TABLES: dict[tuple[Any, ...], tuple[Tensor, Tensor, Tensor]] = {}
_MAX_TABLES = 64


def _tables(ps: list[Tensor], gs: list[Tensor], ms: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(table [n, 4] int64, chunk_tensor int32, chunk_start int64) on the device, cached.

    Cached by addresses and sizes: after the first step no host-to-device copy is made,
    which keeps the step free of syncs and capturable in a CUDA graph.
    """
    key = tuple(
        (p.data_ptr(), g.data_ptr(), m.data_ptr(), p.numel())
        for p, g, m in zip(ps, gs, ms, strict=True)
    )
    hit = _TABLES.get(key)
    if hit is not None:
        return hit
    device = ps[0].device
    rows, ct, cs = [], [], []
    for i, (p, g, m) in enumerate(zip(ps, gs, ms, strict=True)):
        n = p.numel()
        rows.append([p.data_ptr(), g.data_ptr(), m.data_ptr(), n])
        for s in range(0, n, CHUNK):
            ct.append(i)
            cs.append(s)
    out = (
        torch.tensor(rows, dtype=torch.int64).to(device),
        torch.tensor(ct, dtype=torch.int32).to(device),
        torch.tensor(cs, dtype=torch.int64).to(device),
    )
    if len(_TABLES) >= _MAX_TABLES:
        _TABLES.pop(next(iter(_TABLES)))
    _TABLES[key] = out
    return out


_CONSTS: dict[tuple[Any, ...], Tensor] = {}


def _const(values: list[Any], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A cached device tensor of constants (no host-to-device copy after the first step)."""
    key = (tuple(values), dtype, device)
    if key not in _CONSTS:
        if len(_CONSTS) >= 4 * _MAX_TABLES:
            _CONSTS.pop(next(iter(_CONSTS)))
        _CONSTS[key] = torch.tensor(values, dtype=dtype).to(device)
    return _CONSTS[key]


def _flat(t: Tensor) -> Tensor:
    return _as_real(t).view(-1)


def _buckets(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor]):
    """Indices of fusable tensors grouped by dtype combination; the rest (strided) apart."""
    groups: dict[tuple[torch.dtype, ...], list[int]] = {}
    rest: list[int] = []
    for i, (p, g, m) in enumerate(zip(params, grads, exp_avgs, strict=True)):
        pr, gr, mr = _as_real(p), _as_real(g), _as_real(m)
        if pr.numel() == 0:
            continue
        if not (pr.is_contiguous() and gr.is_contiguous() and mr.is_contiguous()):
            rest.append(i)
            continue
        groups.setdefault((pr.dtype, gr.dtype, mr.dtype), []).append(i)
    return groups, rest


@torch.no_grad()
def triton_direction_min_abs(grads: list[Tensor], exp_avgs: list[Tensor], *, beta1: float,
                             maximize: bool = False) -> Tensor:  # fmt: skip
    """:func:`~clion_hf.optim.functional.direction_min_abs` with one launch per dtype combo."""
    if not grads:
        return torch.empty(0, dtype=torch.float32)
    device = grads[0].device
    bits = torch.full((len(grads),), _INF_BITS, dtype=torch.int32, device=device)
    groups, rest = _buckets(grads, grads, exp_avgs)
    for (_, gdt, mdt), idx in groups.items():
        gs = [_flat(grads[i]) for i in idx]
        ms = [_flat(exp_avgs[i]) for i in idx]
        table, ct, cs = _tables(gs, gs, ms)
        out = torch.full((len(idx),), _INF_BITS, dtype=torch.int32, device=device)
        _reduce_kernel[(ct.numel(),)](
            table, ct, cs, out, 1.0 - beta1, WHAT=0, MAXIMIZE=False, G_DT=_tl_dtype(gdt),
            M_DT=_tl_dtype(mdt), CT=_tl_dtype(compute_dtype(gdt)), BLOCK=BLOCK, CHUNK=CHUNK,
        )  # fmt: skip
        bits[_const(idx, torch.int64, device)] = out
    mins = bits.view(torch.float32)
    if rest:
        sub = direction_min_abs([grads[i] for i in rest], [exp_avgs[i] for i in rest],
                                beta1=beta1, maximize=maximize)  # fmt: skip
        mins = mins.clone()
        mins[_const(rest, torch.int64, device)] = sub.to(device)
    return mins


@torch.no_grad()
def triton_update(
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
    """:func:`~clion_hf.optim.functional.lion_clion_update` with Triton kernels."""
    if not params:
        return None
    device = params[0].device
    n_all = len(params)
    counts = torch.zeros(n_all, dtype=torch.int32, device=device) if stats else None
    min_bits = torch.full((n_all,), _INF_BITS, dtype=torch.int32, device=device) if stats else None
    lr_is_tensor = isinstance(lr, Tensor)
    lr_f = 0.0 if lr_is_tensor else float(lr)
    lr_ptr = lr.to(device=device, dtype=torch.float32).reshape(1) if lr_is_tensor else None
    groups, rest = _buckets(params, grads, exp_avgs)
    for (pdt, gdt, mdt), idx in groups.items():
        ps = [_flat(params[i]) for i in idx]
        gs = [_flat(grads[i]) for i in idx]
        ms = [_flat(exp_avgs[i]) for i in idx]
        table, ct, cs = _tables(ps, gs, ms)
        cdt = _tl_dtype(compute_dtype(pdt))
        sel = _const(idx, torch.int64, device) if len(idx) != n_all else None
        common = dict(MAXIMIZE=maximize, G_DT=_tl_dtype(gdt), M_DT=_tl_dtype(mdt), CT=cdt,
                      BLOCK=BLOCK, CHUNK=CHUNK)  # fmt: skip
        caution_cnt = None
        if caution:
            caution_cnt = torch.zeros(len(idx), dtype=torch.int32, device=device)
            _reduce_kernel[(ct.numel(),)](table, ct, cs, caution_cnt, 1.0 - beta1, WHAT=1,
                                          **common)  # fmt: skip
        take = None
        if take_sign is not None:
            take = (take_sign if sel is None else take_sign[sel]).to(torch.int8)
        cnt = torch.zeros(len(idx), dtype=torch.int32, device=device) if stats else None
        mnb = (
            torch.full((len(idx),), _INF_BITS, dtype=torch.int32, device=device) if stats else None
        )
        _update_kernel[(ct.numel(),)](
            table, ct, cs, take, caution_cnt, cnt, mnb, lr_ptr,
            lr_f, 1.0 - lr_f * weight_decay, weight_decay, 1.0 - beta1, 1.0 - beta2, nu,
            MODE=_MODE_ID[mode], CAUTION=caution, STATS=stats, LR_TENSOR=lr_is_tensor,
            P_DT=_tl_dtype(pdt), **common,
        )  # fmt: skip
        if stats:
            if sel is None:
                counts, min_bits = cnt, mnb
            else:
                counts[sel] = cnt
                min_bits[sel] = mnb
    if not stats and not rest:
        return None
    result = None
    if stats:
        assert counts is not None and min_bits is not None
        count_f = counts.float()
        mins = min_bits.view(torch.float32).clone()
        if mode in ("global", "tensor"):
            assert take_sign is not None
            numel = _const([float(_as_real(p).numel()) for p in params], torch.float32, device)
            count_f = take_sign.float() * numel
            mins = torch.full_like(mins, math.nan)
        result = (count_f, mins)
    for i in rest:  # strided tensors: the eager math, one at a time
        out = _single_tensor_update(
            [params[i]], [grads[i]], [exp_avgs[i]], lr=lr, beta1=beta1, beta2=beta2,
            weight_decay=weight_decay, mode=mode, nu=nu,
            take_sign=None if take_sign is None else take_sign[i : i + 1], maximize=maximize,
            caution=caution, stats=stats,
        )  # fmt: skip
        if result is not None and out is not None:
            result[0][i] = out[0][0]
            result[1][i] = out[1][0]
    return result
