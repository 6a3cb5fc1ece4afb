"""The fused CPU kernel: builder, loader and caller of ``lion_cpu.cpp``.

The kernel reads p, g, m once and writes p, m once (20 bytes per fp32 element), with the
CLion statistics (sign-branch count, min non-zero ``abs(c)``) taken in the same pass.
``global``/``tensor`` modes and cautious Lion run a reduction pass first (8 bytes per
element). OpenMP threads share chunks of all tensors, so small tensors cost no launches.

The source is compiled on first use with the system C++ compiler (a few seconds, no
torch headers) and cached under ``$CLION_HF_CACHE/kernels`` (default
``~/.cache/clion_hf/kernels``), keyed by source, compiler and CPU, and loaded with
``ctypes``. Why not a torch C++ extension: building against torch's headers takes a
minute or more, needs a matching compiler and headers, and is redone for every torch
version; the plain C++ builds in seconds with any compiler. What an extension would give
(the dispatcher seeing the call, version counters, FakeTensor shapes, the profiler) comes
from the custom op in :mod:`clion_hf.optim.kernels` that calls :func:`update` here.
Without a working compiler :func:`available` is False and the optimizers use the eager
paths (``fused=True`` then raises, naming the compiler error).

The arguments travel in two records, :class:`CHyper` and :class:`CLists`, the ctypes
mirrors of ``ClionHyper``/``ClionLists`` in the source; the loader compares their layout
with the library's (``clion_layout``) and refuses a mismatch. The arithmetic mirrors
:mod:`clion_hf.optim.functional` operation by operation (fma where ATen's vectorised
kernels use one), so results match the foreach path bit for bit (tested).
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

from ..._cache import cache_dir
from ..functional import Hyper, TensorList, _as_real, _single_tensor_update, compute_dtype
from ..functional import direction_min_abs as eager_direction_min_abs

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("lion_cpu.cpp")
_DTYPES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
"""torch dtype -> the source's ``Dtype`` code (which pairs have kernels: ``clion_supported``)."""
_RULES = {"lion": 0, "global": 1, "tensor": 1, "element": 2, "soft": 3}
_STOP = {None: 0, "tensor": 1, "all": 2}
_FLAGS = ["-O3", "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC"]
# Tried in order: OpenMP threads and this CPU's vector units; then without OpenMP (Apple
# clang has none); then portable code (compilers without -march=native).
_VARIANTS = (["-march=native", "-fopenmp"], ["-march=native"], [])


class CHyper(ctypes.Structure):
    """``ClionHyper``: the hyper-parameters of one kernel call (:class:`Hyper` as C sees it)."""

    _fields_ = [(name, ctypes.c_double) for name in ("lr", "decay", "w1", "w2", "nu", "stop_below")]
    _fields_ += [(name, ctypes.c_int32) for name in ("rule", "lr_is_tensor", "maximize", "stop")]

    @classmethod
    def of(cls, hyper: Hyper, stop: str | None = None, stop_below: float | None = None) -> CHyper:
        wd = hyper.weight_decay
        if isinstance(hyper.lr, Tensor):
            # The foreach path multiplies by the tensor: its value, rounded alike.
            lr_t = hyper.lr.detach().cpu()
            lr, decay, lr_is_tensor = float(lr_t), float(1.0 - lr_t * wd), 1
        else:
            lr, decay, lr_is_tensor = float(hyper.lr), 1.0 - hyper.lr * wd, 0
        return cls(
            lr=lr, decay=1.0 if wd == 0 else decay, w1=1.0 - hyper.beta1, w2=1.0 - hyper.beta2,
            nu=hyper.nu, stop_below=-math.inf if stop_below is None else stop_below,
            rule=_RULES[hyper.mode], lr_is_tensor=lr_is_tensor, maximize=int(hyper.maximize),
            stop=_STOP[stop],
        )  # fmt: skip


class CLists(ctypes.Structure):
    """``ClionLists``: the tensors of one kernel call (one dtype pair) and its outputs."""

    _fields_ = [("ntensors", ctypes.c_int64)]
    _fields_ += [(name, ctypes.c_void_p) for name in ("ps", "gs", "ms", "numel")]
    _fields_ += [(name, ctypes.c_int32) for name in ("p_dtype", "m_dtype")]
    _fields_ += [(name, ctypes.c_void_p)
                 for name in ("take", "caution_scale", "count", "agree", "min_abs")]  # fmt: skip


def _layout() -> list[int]:
    """What ``clion_layout`` must report for these mirrors."""
    out = []
    for rec in (CHyper, CLists):
        out.append(ctypes.sizeof(rec))
        out += [getattr(rec, name).offset for name, _ in rec._fields_]
    return out


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
    hyper_p, lists_p = ctypes.POINTER(CHyper), ctypes.POINTER(CLists)
    lib.clion_update.argtypes = [hyper_p, lists_p, ctypes.c_int]
    lib.clion_reduce.argtypes = [hyper_p, lists_p, ctypes.c_int]
    lib.clion_supported.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.clion_layout.argtypes = [ctypes.POINTER(ctypes.c_int64), ctypes.c_int64]
    lib.clion_layout.restype = ctypes.c_int64
    expected = _layout()
    got = (ctypes.c_int64 * 64)()
    n = lib.clion_layout(got, 64)
    if list(got[:n]) != expected:
        return None, f"the built kernel {out} has another argument layout than this loader"
    return lib, ""


@functools.cache
def dtype_pairs() -> frozenset[tuple[torch.dtype, torch.dtype]]:
    """The (parameter, momentum) dtype pairs the kernel has, as the library reports them."""
    lib = _library()
    return frozenset((p, m) for p in _DTYPES for m in _DTYPES
                     if lib.clion_supported(_DTYPES[p], _DTYPES[m]) == 0)  # fmt: skip


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


def _pointers(ts: list[Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * len(ts))(*[t.data_ptr() for t in ts])


def _batches(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor]
) -> tuple[dict[tuple[torch.dtype, torch.dtype], list[int]], list[int]]:
    """Indices of kernel-eligible tensors by (param, momentum) dtype pair; the rest."""
    batches: dict[tuple[torch.dtype, torch.dtype], list[int]] = {}
    rest = []
    for i, (p, g, m) in enumerate(zip(params, grads, exp_avgs, strict=True)):
        p, g, m = _as_real(p), _as_real(g), _as_real(m)
        if p.numel() == 0:
            continue
        if (
            p.dtype == g.dtype and p.dtype in _DTYPES and m.dtype in _DTYPES
            and (p.dtype, m.dtype) in dtype_pairs()
            and p.is_contiguous() and g.is_contiguous() and m.is_contiguous()
        ):  # fmt: skip
            batches.setdefault((p.dtype, m.dtype), []).append(i)
        else:  # strided views, a gradient of another dtype, an unsupported pair
            rest.append(i)
    return batches, rest


def _lists(ps, gs, ms, pdt, mdt, *, take=None, scale=None, count=None, agree=None,
           min_abs=None) -> tuple[CLists, list]:  # fmt: skip
    """A :class:`CLists` and the objects its pointers point into (keep them alive)."""
    keep = [_pointers(ps) if ps else None, _pointers(gs), _pointers(ms),
            torch.tensor([t.numel() for t in gs], dtype=torch.int64)]  # fmt: skip
    ptr = [None if t is None else t.data_ptr() for t in (take, scale, count, agree, min_abs)]
    lists = CLists(
        ntensors=len(gs), ps=ctypes.addressof(keep[0]) if ps else None,
        gs=ctypes.addressof(keep[1]), ms=ctypes.addressof(keep[2]),
        numel=keep[3].data_ptr(), p_dtype=_DTYPES[pdt], m_dtype=_DTYPES[mdt], take=ptr[0],
        caution_scale=ptr[1], count=ptr[2], agree=ptr[3], min_abs=ptr[4],
    )  # fmt: skip
    return lists, keep


def _caution_scale(agree: Tensor, numel: list[int], dtype: torch.dtype) -> Tensor:
    # As functional._caution: numel / (mask.sum() + 1) in the compute dtype, which
    # Tensor.__rtruediv__ evaluates as reciprocal() * numel.
    counts = agree.to(dtype)
    return torch.stack([(c + 1).reciprocal() * n for c, n in zip(counts, numel, strict=True)])


def update(params: TensorList, grads: TensorList, exp_avgs: TensorList, hyper: Hyper,
           take: Tensor | None, want_min: bool) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One fused update of CPU tensors in place: per-tensor (sign-branch count, min abs(c)).

    The min is NaN unless ``want_min`` (global/tensor callers have it from pass 1, unless
    pass 1 stopped early; Lion keeps no statistics).
    """
    lib = _library()
    n = len(params)
    counts = torch.zeros(n, dtype=torch.float32)
    mins = torch.full((n,), math.inf if want_min else math.nan, dtype=torch.float64)
    chyper = CHyper.of(hyper)
    take_u8 = take.to("cpu", torch.uint8) if take is not None else None
    batches, rest = _batches(params, grads, exp_avgs)
    threads = torch.get_num_threads()
    for (pdt, mdt), idx in batches.items():
        ps = [_flat(params[i]) for i in idx]
        gs = [_flat(grads[i]) for i in idx]
        ms = [_flat(exp_avgs[i]) for i in idx]
        k = len(idx)
        count = torch.zeros(k, dtype=torch.int64)
        min_abs = torch.empty(k, dtype=torch.float64) if want_min else None
        scale = None
        if hyper.caution:
            agree = torch.empty(k, dtype=torch.int64)
            lists, keep = _lists(None, gs, ms, pdt, mdt, agree=agree)
            rc = lib.clion_reduce(ctypes.byref(chyper), ctypes.byref(lists), threads)
            assert rc == 0, "dtype pair was checked by clion_supported"
            scale = _caution_scale(agree, [t.numel() for t in gs], compute_dtype(pdt)).double()
        sub_take = None if take_u8 is None else take_u8[idx].contiguous()
        lists, keep = _lists(ps, gs, ms, pdt, mdt, take=sub_take, scale=scale, count=count,
                             min_abs=min_abs)  # fmt: skip
        rc = lib.clion_update(ctypes.byref(chyper), ctypes.byref(lists), threads)
        assert rc == 0, "dtype pair was checked by clion_supported"
        at = torch.tensor(idx)
        counts[at] = count.float()
        if min_abs is not None:
            mins[at] = min_abs
    for i in rest:  # rare (strided views, mixed dtypes): the eager math, one tensor
        out = _single_tensor_update(
            [params[i]], [grads[i]], [exp_avgs[i]], hyper,
            None if take is None else take[i].reshape(1), True, want_min,
        )  # fmt: skip
        counts[i] = out.count[0]
        if want_min:
            mins[i] = out.min_abs[0]
    return counts, mins


def direction_min_abs(grads: TensorList, exp_avgs: TensorList, beta1: float,
                      maximize: bool = False, stop: str | None = None,
                      stop_below: float | None = None) -> Tensor:  # fmt: skip
    """Per-tensor min non-zero ``abs(c)`` (fp64) in one fused pass.

    With ``stop="tensor"`` (or ``"all"``) and ``stop_below=nu`` the pass stops reading a
    tensor (or every tensor) once it has found a non-zero ``abs(c)`` below ``nu``: the
    result is then only good for the comparison with ``nu`` (a witness below it, ``inf``
    for skipped tensors), and the exact min must come from the update pass.
    """
    if stop not in _STOP:
        raise ValueError(f"invalid stop={stop!r}: allowed are None, 'tensor', 'all'")
    lib = _library()
    out = torch.full((len(grads),), math.inf, dtype=torch.float64)
    chyper = CHyper(w1=1.0 - beta1, maximize=int(maximize), stop=_STOP[stop],
                    stop_below=-math.inf if stop_below is None else stop_below)  # fmt: skip
    batches, rest = _batches(grads, grads, exp_avgs)
    threads = torch.get_num_threads()
    for (gdt, mdt), idx in batches.items():
        gs = [_flat(grads[i]) for i in idx]
        ms = [_flat(exp_avgs[i]) for i in idx]
        min_abs = torch.empty(len(idx), dtype=torch.float64)
        lists, keep = _lists(None, gs, ms, gdt, mdt, min_abs=min_abs)
        rc = lib.clion_reduce(ctypes.byref(chyper), ctypes.byref(lists), threads)
        assert rc == 0, "dtype pair was checked by clion_supported"
        out[torch.tensor(idx)] = min_abs
    if rest:  # strided or mixed-dtype tensors: the eager reduction
        out[torch.tensor(rest)] = eager_direction_min_abs(
            [grads[i] for i in rest], [exp_avgs[i] for i in rest], beta1=beta1,
            maximize=maximize, impl="single",
        ).to(out)
    return out
