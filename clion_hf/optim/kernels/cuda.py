"""The fused CUDA kernels: Triton kernels that update many tensors per launch.

Called from the custom op ``clion_hf::fused_update_`` (:mod:`clion_hf.optim.kernels`).

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

from .._math import (
    MODE_CODE,
    Hyper,
    TensorList,
    as_real,
    compute_dtype,
    for_dtype,
    single_tensor_update,
)
from .._math import min_abs_c as eager_min_abs_c
from ..validate import check_update_lists

if os.environ.get("TRITON_INTERPRET") == "1":
    # The interpreter runs programs one by one in numpy: small blocks keep it fast, and
    # small chunks make tests cover tensors that span several programs (the atomics).
    BLOCK, CHUNK = 32, 64
else:
    BLOCK, CHUNK = 1024, 16 * 1024
_INF_BITS = 0x7F800000  # +inf as int32 bits


def _tl_dtype(dt: torch.dtype) -> Any:
    return {
        torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
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
def _finite_or_nan(h, c):
    # h where c is finite, NaN where it is not (the rule of every path)
    return tl.where(c - c == 0, h, float("nan")).to(h.dtype)


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
def _chunk_of(table, chunk_tensor, chunk_start, G_DT: tl.constexpr, M_DT: tl.constexpr):
    """This program's tensor (index, element count), chunk start, and g/m pointers."""
    pid = tl.program_id(0)
    t = tl.load(chunk_tensor + pid)
    g_ptr = tl.load(table + t * 4 + 1).to(tl.pointer_type(G_DT))
    m_ptr = tl.load(table + t * 4 + 2).to(tl.pointer_type(M_DT))
    return t, tl.load(table + t * 4 + 3), tl.load(chunk_start + pid), g_ptr, m_ptr


@triton.jit
def _direction_at(g_ptr, m_ptr, offs, mask, w1, MAXIMIZE: tl.constexpr, CT: tl.constexpr):
    """g (negated for maximize), m and c = lerp(m, g, w1) at ``offs``, in the compute dtype."""
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(CT)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(CT)
    if MAXIMIZE:
        g = -g
    return g, m, _lerp(m, g, w1)


@triton.jit
def _reduce_kernel(
    table, chunk_tensor, chunk_start, out, w1,
    WHAT: tl.constexpr, MAXIMIZE: tl.constexpr, G_DT: tl.constexpr, M_DT: tl.constexpr,
    CT: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """WHAT=0: atomic_min of min non-zero abs(c) bits; WHAT=1: atomic_add of sign(c)*g > 0."""
    t, n, start, g_ptr, m_ptr = _chunk_of(table, chunk_tensor, chunk_start, G_DT, M_DT)
    acc_min = tl.full([BLOCK], float("inf"), tl.float32)
    acc_cnt = tl.zeros([BLOCK], tl.int32)
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < n
        g, m, c = _direction_at(g_ptr, m_ptr, offs, mask, w1, MAXIMIZE, CT)
        if WHAT == 0:
            a = tl.abs(c)
            a = tl.where(mask & (a != 0), a, float("inf")).to(tl.float32)
            acc_min = tl.minimum(acc_min, a)
        else:
            agree = (_finite_or_nan(_sign(c), c) * g > 0) & mask
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
    t, n, start, g_ptr, m_ptr = _chunk_of(table, chunk_tensor, chunk_start, G_DT, M_DT)
    p_ptr = tl.load(table + t * 4 + 0).to(tl.pointer_type(P_DT))
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
        g, m, c = _direction_at(g_ptr, m_ptr, offs, mask, w1, MAXIMIZE, CT)
        a = tl.abs(c)
        if MODE == 0:
            h = _sign(c)
        elif MODE == 1:
            h = tl.where(take_t, _sign(c), c)
        elif MODE == 2:
            h = tl.where(a >= nu, _sign(c), c)
        else:
            h = tl.clamp(c / nu, -1.0, 1.0, propagate_nan=tl.PropagateNan.ALL)
        h = _finite_or_nan(h, c)
        if CAUTION:
            # (h * mask) * scale as the eager path: a NaN h stays NaN
            h = (h * (h * g > 0).to(CT)) * scale
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
    return as_real(t).view(-1)


def _buckets(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor]):
    """Indices of fusable tensors grouped by dtype combination; the rest (strided, fp64)."""
    groups: dict[tuple[torch.dtype, ...], list[int]] = {}
    rest: list[int] = []
    for i, (p, g, m) in enumerate(zip(params, grads, exp_avgs, strict=True)):
        pr, gr, mr = as_real(p), as_real(g), as_real(m)
        if gr.shape != pr.shape or mr.shape != pr.shape or not (g.device == m.device == p.device):
            # the kernel reads and writes g and m by p's element count (state edited by hand)
            check_update_lists(params, grads, exp_avgs)  # names the tensor and the problem
            raise ValueError(f"params[{i}]: its gradient or momentum does not match it")
        if pr.numel() == 0:
            continue
        if not (pr.is_contiguous() and gr.is_contiguous() and mr.is_contiguous()) or (
            compute_dtype(pr.dtype) == torch.float64
        ):
            # strided views: the eager math; so are fp64 tensors, because Triton passes
            # Python floats (lr, nu, ...) to a kernel as fp32
            rest.append(i)
            continue
        groups.setdefault((pr.dtype, gr.dtype, mr.dtype), []).append(i)
    return groups, rest


def _min_bits(n: int, device: torch.device) -> Tensor:
    return torch.full((n,), _INF_BITS, dtype=torch.int32, device=device)


def _bits_to_float64(bits: Tensor) -> Tensor:
    return bits.view(torch.float32).to(torch.float64)


def min_abs_c(
    grads: list[Tensor], exp_avgs: list[Tensor], beta1: float, maximize: bool = False
) -> Tensor:
    """Per-tensor min non-zero ``abs(c)`` (fp64) with one launch per dtype combination."""
    if not grads:
        return torch.empty(0, dtype=torch.float64)
    device = grads[0].device
    mins = torch.full((len(grads),), math.inf, dtype=torch.float64, device=device)
    groups, rest = _buckets(grads, grads, exp_avgs)
    for (_, gdt, mdt), idx in groups.items():
        gs = [_flat(grads[i]) for i in idx]
        ms = [_flat(exp_avgs[i]) for i in idx]
        table, ct, cs = _tables(gs, gs, ms)
        out = _min_bits(len(idx), device)
        _reduce_kernel[(ct.numel(),)](
            table, ct, cs, out, 1.0 - beta1, WHAT=0, MAXIMIZE=maximize, G_DT=_tl_dtype(gdt),
            M_DT=_tl_dtype(mdt), CT=_tl_dtype(compute_dtype(gdt)), BLOCK=BLOCK, CHUNK=CHUNK,
        )  # fmt: skip
        mins[_const(idx, torch.int64, device)] = _bits_to_float64(out)
    if rest:
        sub = eager_min_abs_c([grads[i] for i in rest], [exp_avgs[i] for i in rest], beta1,
                              maximize, False)  # fmt: skip
        mins[_const(rest, torch.int64, device)] = sub.to(mins)
    return mins


def update(params: TensorList, grads: TensorList, exp_avgs: TensorList, hyper: Hyper,
           take: Tensor | None, want_min: bool) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One fused update in place: per-tensor (sign-branch count fp32, min abs(c) fp64).

    Statistics only with ``want_min`` (the min is NaN otherwise), except the counts of
    global/tensor modes, which follow from ``take``.
    """
    device = params[0].device
    n_all = len(params)
    two_pass = hyper.mode in ("global", "tensor")
    counts = torch.zeros(n_all, dtype=torch.float32, device=device)
    mins = torch.full((n_all,), math.inf if want_min else math.nan, dtype=torch.float64,
                      device=device)  # fmt: skip
    lr, wd = hyper.lr, hyper.weight_decay
    lr_is_tensor = isinstance(lr, Tensor)
    lr_f = 0.0 if lr_is_tensor else float(lr)
    lr_ptr = lr.to(device=device, dtype=torch.float32).reshape(1) if lr_is_tensor else None
    groups, rest = _buckets(params, grads, exp_avgs)
    for (pdt, gdt, mdt), idx in groups.items():
        ps = [_flat(params[i]) for i in idx]
        gs = [_flat(grads[i]) for i in idx]
        ms = [_flat(exp_avgs[i]) for i in idx]
        table, ct, cs = _tables(ps, gs, ms)
        sel = _const(idx, torch.int64, device)
        common = dict(MAXIMIZE=hyper.maximize, G_DT=_tl_dtype(gdt), M_DT=_tl_dtype(mdt),
                      CT=_tl_dtype(compute_dtype(pdt)), BLOCK=BLOCK, CHUNK=CHUNK)  # fmt: skip
        caution_cnt = None
        if hyper.caution:
            caution_cnt = torch.zeros(len(idx), dtype=torch.int32, device=device)
            _reduce_kernel[(ct.numel(),)](table, ct, cs, caution_cnt, 1.0 - hyper.beta1,
                                          WHAT=1, **common)  # fmt: skip
        take_i8 = None if take is None else take[sel].to(torch.int8)
        cnt = torch.zeros(len(idx), dtype=torch.int32, device=device)
        mnb = _min_bits(len(idx), device)
        _update_kernel[(ct.numel(),)](
            table, ct, cs, take_i8, caution_cnt, cnt, mnb, lr_ptr,
            lr_f, 1.0 - lr_f * wd, wd, 1.0 - hyper.beta1, 1.0 - hyper.beta2, hyper.nu,
            MODE=MODE_CODE[for_dtype(hyper, pdt).mode], CAUTION=hyper.caution, STATS=want_min,
            LR_TENSOR=lr_is_tensor, P_DT=_tl_dtype(pdt), **common,
        )  # fmt: skip
        counts[sel] = cnt.float()
        if want_min:
            mins[sel] = _bits_to_float64(mnb)
    if two_pass:
        assert take is not None
        numel = _const([float(as_real(p).numel()) for p in params], torch.float32, device)
        counts = take.float() * numel
    for i in rest:  # strided tensors: the eager math, one at a time
        out = single_tensor_update(
            [params[i]], [grads[i]], [exp_avgs[i]], hyper,
            None if take is None else take[i : i + 1], True, want_min,
        )  # fmt: skip
        counts[i] = out.count[0]
        mins[i] = out.min_abs_c[0]
    return counts, mins
