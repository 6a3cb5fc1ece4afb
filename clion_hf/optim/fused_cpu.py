"""Fused CPU path: one multi-tensor C++ kernel (``csrc/lion_cpu.cpp``) per param group.

The kernel reads p, g, m once and writes p, m once (20 bytes per fp32 element), with the
CLion statistics (sign-branch count, min non-zero ``abs(c)``) taken in the same pass.
``global``/``tensor`` modes and cautious Lion run a reduction pass first (8 bytes per
element). OpenMP threads share chunks of all tensors, so small tensors cost no launches.

The source is compiled on first use with the system C++ compiler (a few seconds, no
torch headers) and cached under ``$CLION_HF_CACHE/kernels`` (default
``~/.cache/clion_hf/kernels``), keyed by source, compiler and CPU; it is called through
``ctypes``. Without a working compiler :func:`available` is False and the optimizers use
the eager paths (``fused=True`` then raises, naming the compiler error).

The arithmetic mirrors :mod:`clion_hf.optim.functional` operation by operation (fma
where ATen's vectorised kernels use one), so results match the foreach path (tested).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from .._cache import cache_dir
from .functional import _as_real, _single_tensor_update, compute_dtype, direction_min_abs

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "lion_cpu.cpp"
_DTYPES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
_MODES = {"lion": 0, "global": 1, "tensor": 1, "element": 2, "soft": 3}
_FLAGS = ["-O3", "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC"]
# Tried in order: OpenMP threads and this CPU's vector units; then without OpenMP (Apple
# clang has none); then portable code (compilers without -march=native).
_VARIANTS = (["-march=native", "-fopenmp"], ["-march=native"], [])

_p = ctypes.c_void_p
_i64 = ctypes.c_int64
_f64 = ctypes.c_double
_int = ctypes.c_int


def _cpu_id() -> str:
    # -march=native code must not be reused on a different CPU (shared home directories).
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor() + platform.machine()


def _compile(cxx: str, out: Path, flags: list[str]) -> None:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        # With -fopenmp the library links libgomp.so.1; torch (imported first) has loaded
        # its own copy under that name, so both share one OpenMP runtime and thread pool.
        subprocess.run([cxx, *_FLAGS, *flags, str(SOURCE), "-o", str(tmp)], check=True,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
        os.replace(tmp, out)  # atomic: concurrent ranks may build the same file
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _build_lock(out: Path) -> Iterator[None]:
    """An exclusive lock on ``out``'s build (POSIX ``flock``; elsewhere none)."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent builds still end in one atomic rename
        yield
        return
    with open(out.with_name(out.name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(cxx: str, out: Path) -> str | None:
    """Compile to ``out`` with the first flag variant that works; None, or the first error."""
    errors: list[str] = []
    for flags in _VARIANTS:
        try:
            _compile(cxx, out, flags)
            return None
        except subprocess.CalledProcessError as e:
            errors.append((e.stderr.strip().splitlines() or ["failed"])[-1])
        except (OSError, subprocess.SubprocessError) as e:
            errors.append(str(e))
    return errors[0]


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """The compiled kernel library, or ``(None, reason)`` if it cannot be built."""
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        return None, "no C++ compiler found (set CXX or install g++/clang++)"
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                 timeout=60).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"C++ compiler {cxx!r} does not run: {e}"
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), str((_FLAGS, _VARIANTS)), version, _cpu_id()]).encode()
    ).hexdigest()[:16]
    out = cache_dir() / "kernels" / f"lion_cpu-{key}.so"
    if not out.exists():
        logger.info("building clion_hf's CPU kernel into %s (once per machine)", out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with _build_lock(out):  # the ranks of one job build once, the others wait
                error = None if out.exists() else _build(cxx, out)
        except OSError as e:
            error = str(e)
        if error is not None:
            return None, f"{cxx} could not build {SOURCE.name}: {error}"
    try:
        lib = ctypes.CDLL(str(out))
    except OSError as e:
        return None, f"the built kernel {out} does not load: {e}"
    lib.clion_update.argtypes = [
        _i64, _p, _p, _p, _p, _int, _int, _int, _f64, _f64, _f64, _f64, _f64, _int, _int,
        _p, _p, _p, _p, _int,
    ]  # fmt: skip
    lib.clion_reduce.argtypes = [
        _i64, _p, _p, _p, _int, _int, _f64, _int, _int, _f64, _p, _p, _int,
    ]  # fmt: skip
    lib.clion_supported.argtypes = [_int, _int]
    return lib, ""


def available() -> bool:
    """Whether the fused CPU kernel is built (compiling it on the first call)."""
    return _load()[0] is not None


def unavailable_reason() -> str:
    """Why the kernel could not be built ("" if it was)."""
    return _load()[1]


def _library() -> ctypes.CDLL:
    lib, reason = _load()
    if lib is None:
        raise RuntimeError(f"fused=True on CPU needs the C++ kernel, but {reason}")
    return lib


def _flat(t: Tensor) -> Tensor:
    return _as_real(t).view(-1)


def _kernel_ok(lib: ctypes.CDLL, p: Tensor, g: Tensor, m: Tensor) -> bool:
    p, g, m = _as_real(p), _as_real(g), _as_real(m)
    return (
        p.dtype == g.dtype
        and p.dtype in _DTYPES
        and m.dtype in _DTYPES
        and lib.clion_supported(_DTYPES[p.dtype], _DTYPES[m.dtype]) == 0
        and p.is_contiguous() and g.is_contiguous() and m.is_contiguous()
    )  # fmt: skip


def _pointers(ts: list[Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * len(ts))(*[t.data_ptr() for t in ts])


def _batches(lib, params, grads, exp_avgs):
    """Indices of kernel-eligible tensors grouped by (param, momentum) dtype; the rest."""
    batches: dict[tuple[torch.dtype, torch.dtype], list[int]] = {}
    rest = []
    for i, (p, g, m) in enumerate(zip(params, grads, exp_avgs, strict=True)):
        if _as_real(p).numel() == 0:
            continue
        if _kernel_ok(lib, p, g, m):
            batches.setdefault((_as_real(p).dtype, _as_real(m).dtype), []).append(i)
        else:
            rest.append(i)
    return batches, rest


def _caution_scale(agree: Tensor, numel: list[int], dtype: torch.dtype) -> Tensor:
    # As functional._caution: numel / (mask.sum() + 1) in the compute dtype, which
    # Tensor.__rtruediv__ evaluates as reciprocal() * numel.
    counts = agree.to(dtype)
    return torch.stack([(c + 1).reciprocal() * n for c, n in zip(counts, numel, strict=True)])


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
    min_stats: bool = False,
) -> tuple[Tensor, Tensor] | None:
    """:func:`clion_hf.optim.functional.lion_clion_update` as one fused C++ pass on CPU.

    ``min_stats``: also take the exact per-tensor min ``abs(c)`` in global/tensor modes
    (wanted after a pass 1 that stopped early); otherwise, as on the other paths, those
    modes report NaN there, since their caller has the min from pass 1.
    """
    if not params:
        return None
    lib = _library()
    n = len(params)
    two_pass = mode in ("global", "tensor")
    counts = torch.zeros(n, dtype=torch.float32)
    mins = torch.full((n,), math.nan if two_pass and not min_stats else math.inf)
    if isinstance(lr, Tensor):
        # The foreach path multiplies by these tensors; their values, rounded alike.
        lr_t = lr.detach().cpu()
        lr_value, decay, lr_is_tensor = float(lr_t), float(1.0 - lr_t * weight_decay), 1
    else:
        lr_value, decay, lr_is_tensor = lr, 1.0 - lr * weight_decay, 0
    if weight_decay == 0:
        decay = 1.0
    take_np = take_sign.to("cpu", torch.uint8) if take_sign is not None else None
    batches, rest = _batches(lib, params, grads, exp_avgs)
    threads = torch.get_num_threads()
    want_min = stats and (min_stats or not two_pass)
    for (pdt, mdt), idx in batches.items():
        ps = [_flat(params[i]) for i in idx]
        gs = [_flat(grads[i]) for i in idx]
        ms = [_flat(exp_avgs[i]) for i in idx]
        numel = torch.tensor([t.numel() for t in ps], dtype=torch.int64)
        k = len(idx)
        count = torch.zeros(k, dtype=torch.int64)
        min_abs = torch.empty(k, dtype=torch.float64)
        p_ptr, g_ptr, m_ptr = _pointers(ps), _pointers(gs), _pointers(ms)
        take = take_np[idx].contiguous() if take_np is not None else None
        scale = None
        if caution:
            agree = torch.empty(k, dtype=torch.int64)
            rc = lib.clion_reduce(k, g_ptr, m_ptr, numel.data_ptr(), _DTYPES[pdt], _DTYPES[mdt],
                                  1.0 - beta1, int(maximize), 0, 0.0, agree.data_ptr(), None,
                                  threads)  # fmt: skip
            assert rc == 0
            scale = _caution_scale(agree, numel.tolist(), compute_dtype(pdt)).double()
        rc = lib.clion_update(
            k, p_ptr, g_ptr, m_ptr, numel.data_ptr(), _DTYPES[pdt], _DTYPES[mdt], _MODES[mode],
            lr_value, decay, 1.0 - beta1, 1.0 - beta2, nu, lr_is_tensor, int(maximize),
            None if take is None else take.data_ptr(),
            None if scale is None else scale.data_ptr(),
            count.data_ptr(), min_abs.data_ptr() if want_min else None, threads,
        )  # fmt: skip
        assert rc == 0, "dtype pair was checked by clion_supported"
        at = torch.tensor(idx)
        counts[at] = count.float()
        if want_min:
            mins[at] = min_abs.float()
    for i in rest:
        # Rare (strided views, mixed grad dtype): the eager math, one tensor.
        if stats and two_pass and min_stats:  # its exact min, before m changes
            mins[i] = direction_min_abs([grads[i]], [exp_avgs[i]], beta1=beta1,
                                        maximize=maximize)[0]  # fmt: skip
        out = _single_tensor_update(
            [params[i]], [grads[i]], [exp_avgs[i]], lr=lr, beta1=beta1, beta2=beta2,
            weight_decay=weight_decay, mode=mode, nu=nu,
            take_sign=None if take_sign is None else take_sign[i].reshape(1),
            maximize=maximize, caution=caution, stats=True,
        )  # fmt: skip
        counts[i] = out[0][0]
        if not two_pass:
            mins[i] = out[1][0]
    return (counts, mins) if stats else None


_STOP = {None: 0, "tensor": 1, "all": 2}


@torch.no_grad()
def fused_cpu_direction_min_abs(
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    beta1: float,
    stop_below: float | None = None,
    stop: str | None = None,
) -> Tensor:
    """:func:`clion_hf.optim.functional.direction_min_abs` as one fused pass on CPU.

    With ``stop="tensor"`` (or ``"all"``) and ``stop_below=nu`` the pass stops reading a
    tensor (or every tensor) once it has found a non-zero ``abs(c)`` below ``nu``: the
    result is then only good for the comparison with ``nu`` (a witness below it, ``inf``
    for skipped tensors), and the exact min must come from the update pass.
    """
    if stop not in _STOP:
        raise ValueError(f"invalid stop={stop!r}: allowed are None, 'tensor', 'all'")
    lib = _library()
    n = len(grads)
    out = torch.full((n,), math.inf)
    batches, rest = _batches(lib, grads, grads, exp_avgs)
    threads = torch.get_num_threads()
    for (gdt, mdt), idx in batches.items():
        gs = [_flat(grads[i]) for i in idx]
        ms = [_flat(exp_avgs[i]) for i in idx]
        numel = torch.tensor([t.numel() for t in gs], dtype=torch.int64)
        min_abs = torch.empty(len(idx), dtype=torch.float64)
        rc = lib.clion_reduce(len(idx), _pointers(gs), _pointers(ms), numel.data_ptr(),
                              _DTYPES[gdt], _DTYPES[mdt], 1.0 - beta1, 0, _STOP[stop],
                              -math.inf if stop_below is None else stop_below, None,
                              min_abs.data_ptr(), threads)  # fmt: skip
        assert rc == 0
        out[torch.tensor(idx)] = min_abs.float()
    if rest:  # strided or mixed-dtype tensors: the eager reduction
        out[torch.tensor(rest)] = direction_min_abs(
            [grads[i] for i in rest], [exp_avgs[i] for i in rest], beta1=beta1,
            maximize=False,
        ).cpu()  # fmt: skip
    return out
