"""The fused CPU kernel: builder, loader and caller of ``lion_cpu.cpp``.

The kernel reads p, g, m once and writes p, m once (20 bytes per fp32 element), with the
CLion statistics (sign-branch count, min non-zero ``abs(c)``) taken in the same pass.
``global``/``tensor`` modes and cautious Lion run a reduction pass first (8 bytes per
element). OpenMP threads share chunks of all tensors, so small tensors cost no launches.

**Targets.** The source is written with explicit vectors and compiled once per
instruction set, never with ``-march=native``: ``x86-64`` (SSE2), ``x86-64-v3`` (AVX2 +
FMA), ``x86-64-v4`` (AVX-512) and ``armv8-a`` (NEON). The target is the one matching
torch's CPU capability (``torch.backends.cpu.get_cpu_capability()``, which also says
whether ATen's kernels use fma, so the bits stay the foreach path's), capped by what
``/proc/cpuinfo`` shows; ``CLION_HF_CPU_ISA=x86-64-v3`` forces one (to test and time the
AVX2 build on an AVX-512 host). On other machines a portable build still serves
``fused=True``, but it is not vectorised, so the default (``fused=None``) is then the
foreach path, said once at INFO level and recorded with the build.

**Cache.** Builds go to ``$CLION_HF_CACHE/kernels`` (default ``~/.cache/clion_hf``),
keyed by source, flags, compiler and target, written under a temporary name and renamed,
with their size and SHA-256 recorded next to them (``.json``) and checked before every
load: a truncated or foreign library is rebuilt (and said so), never loaded. The
directory is created 0700 and must belong to the user and not be group/world-writable
(else the kernel is built in a private temporary directory, with a warning); the build
lock is opened with ``O_NOFOLLOW``. The first build (seconds) is announced with a
warning-level log line, so that it shows without any logging set up. A cache that cannot
be written (read-only file system) still serves a valid library it holds; one it lacks is
built in a private temporary directory.

**Waiting.** A build runs in a background thread. The automatic choice (``fused=None``,
:func:`automatic`) waits for it once, at most ``CLION_HF_BUILD_WAIT`` seconds (60), with a
progress line every 10 s; steps that find it still building run the eager path (the same
bits) and switch to the kernel once it is built. ``fused=True`` (:func:`available`) waits
for the build, whose compiler is stopped after ``CLION_HF_BUILD_TIMEOUT`` seconds (300,
all attempts together) and when the process exits. Each reason for the eager path is said
once at WARNING level.

Why not a torch C++ extension: building against torch's headers takes a minute or more,
needs a matching compiler and headers, and is redone for every torch version; the plain
C++ builds in seconds with any compiler. What an extension would give (the dispatcher
seeing the call, version counters, FakeTensor shapes, the profiler) comes from the custom
op in :mod:`clion_hf.optim.kernels` that calls :func:`update` here. Without a working
compiler :func:`available` is False and the optimizers use the eager paths
(``fused=True`` then raises, naming the compiler error).

The arguments travel in two records, :class:`CHyper` and :class:`CLists`, the ctypes
mirrors of ``ClionHyper``/``ClionLists`` in the source; the loader compares their layout
with the library's (``clion_layout``) and refuses a mismatch. The arithmetic mirrors
:mod:`clion_hf.optim._math` operation by operation (fma where ATen's vectorised
kernels use one), so results match the foreach path bit for bit (tested).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import logging
import math
import os
import platform
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from ..._cache import cache_dir
from ..._files import sha256_file
from .._math import (
    MODE_CODE,
    Hyper,
    TensorList,
    compute_dtype,
    for_dtype,
    single_tensor_update,
)
from .._math import min_abs_c as eager_min_abs_c
from ..validate import check_update_lists

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("lion_cpu.cpp")
_DTYPES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
"""torch dtype -> the source's ``Dtype`` code (which pairs have kernels: ``clion_supported``)."""
_STOP = {"tensor": 1, "global": 2}
"""Pass 1's early stop by CLion mode (the source's ``Stop``): per tensor, or everything."""
_FLAGS = ["-O3", "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC"]
# Tried in order: with OpenMP threads, then without (Apple clang has no OpenMP).
_VARIANTS = (["-fopenmp"], [])


class Isa(NamedTuple):
    """One build target: the machine it runs on, its compiler flags, its vector width."""

    machine: str
    flags: tuple[str, ...]
    vector_bytes: int
    features: frozenset[str] = frozenset()  # /proc/cpuinfo flags the code needs


_V3 = frozenset({"avx", "avx2", "fma", "bmi1", "bmi2", "abm", "movbe", "f16c", "xsave"})
ISAS: dict[str, Isa] = {
    "x86-64": Isa("x86_64", ("-march=x86-64", "-mtune=generic"), 16, frozenset({"sse2"})),
    "x86-64-v3": Isa("x86_64", ("-march=x86-64-v3", "-mtune=generic"), 32, _V3),
    "x86-64-v4": Isa("x86_64", ("-march=x86-64-v4", "-mtune=generic"), 64,
                     _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
    "armv8-a": Isa("aarch64", ("-march=armv8-a",), 16),
}  # fmt: skip
"""The vectorised targets, by the names GCC/Clang give them (``-march=``)."""
GENERIC = "generic"
"""Any other machine: portable code, whatever the compiler makes of it (not vectorised)."""
_GENERIC = Isa("", (), 16)
_CAPABILITY = {"AVX512": "x86-64-v4", "AVX2": "x86-64-v3"}
"""torch's CPU capability -> the target whose fma use matches ATen's kernels."""


def _machine() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def _cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where not readable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def host_isas() -> list[str]:
    """The targets this CPU can run, lowest first (x86: by its cpuinfo flags)."""
    machine, flags = _machine(), _cpu_flags()
    out = [name for name, isa in ISAS.items() if isa.machine == machine
           and (flags is None or isa.features <= flags)]  # fmt: skip
    if flags is None and machine == "x86_64":  # no cpuinfo: trust torch's capability only
        cap = torch.backends.cpu.get_cpu_capability()
        out = ["x86-64"] + [_CAPABILITY[c] for c in ("AVX2", "AVX512")
                            if c in _CAPABILITY and (c == cap or (c, cap) == ("AVX2", "AVX512"))]
    return out


def _auto_isa() -> str:
    runnable = host_isas()
    if not runnable:
        return GENERIC
    if _machine() != "x86_64":
        return runnable[-1]
    # ATen's kernels use fma from AVX2 up: the kernel follows torch's capability (and so
    # ATEN_CPU_CAPABILITY), so that fused and foreach give the same bits.
    want = _CAPABILITY.get(torch.backends.cpu.get_cpu_capability(), "x86-64")
    order = list(ISAS)
    return max((i for i in runnable if order.index(i) <= order.index(want)), key=order.index)


@functools.cache
def selected_isa() -> str:
    """The target of this process: ``CLION_HF_CPU_ISA`` if set, else the host's (see above)."""
    forced = os.environ.get("CLION_HF_CPU_ISA", "").strip()
    if not forced:
        return _auto_isa()
    allowed = host_isas() + [GENERIC]
    if forced not in allowed:
        raise ValueError(f"CLION_HF_CPU_ISA={forced!r}: this CPU runs {', '.join(allowed)}")
    return forced


def _isa(name: str) -> Isa:
    return _GENERIC if name == GENERIC else ISAS[name]


def _compiler() -> list[str] | None:
    """The C++ compiler command, split like a shell would (``CXX="ccache g++"``)."""
    cxx = os.environ.get("CXX")
    if cxx:
        return shlex.split(cxx)
    found = shutil.which("c++") or shutil.which("g++")
    return [found] if found else None


class CHyper(ctypes.Structure):
    """``ClionHyper``: the hyper-parameters of one kernel call (:class:`Hyper` as C sees it)."""

    _fields_ = [(name, ctypes.c_double) for name in ("lr", "decay", "w1", "w2", "nu", "stop_below")]
    _fields_ += [(name, ctypes.c_int32) for name in ("mode", "lr_is_tensor", "maximize", "stop")]

    @classmethod
    def of(cls, hyper: Hyper) -> CHyper:
        """The one conversion of :class:`Hyper` to the C record (of an update pass)."""
        wd = hyper.weight_decay
        if isinstance(hyper.lr, Tensor):
            # The foreach path multiplies by the tensor: its value, rounded alike.
            lr_t = hyper.lr.detach().cpu()
            lr, decay, lr_is_tensor = float(lr_t), float(1.0 - lr_t * wd), 1
        else:
            lr, decay, lr_is_tensor = float(hyper.lr), 1.0 - hyper.lr * wd, 0
        return cls(
            lr=lr, decay=1.0 if wd == 0 else decay, w1=1.0 - hyper.beta1, w2=1.0 - hyper.beta2,
            nu=hyper.nu, stop_below=-math.inf, mode=MODE_CODE[hyper.mode],
            lr_is_tensor=lr_is_tensor, maximize=int(hyper.maximize), stop=0,
        )  # fmt: skip


class CLists(ctypes.Structure):
    """``ClionLists``: the tensors of one kernel call (one dtype pair) and its outputs."""

    _fields_ = [("ntensors", ctypes.c_int64)]
    _fields_ += [(name, ctypes.c_void_p) for name in ("ps", "gs", "ms", "numel")]
    _fields_ += [(name, ctypes.c_int32) for name in ("p_dtype", "m_dtype")]
    _fields_ += [(name, ctypes.c_void_p)
                 for name in ("take", "caution_scale", "count", "agree", "min_abs_c")]  # fmt: skip


def _layout() -> list[int]:
    """What ``clion_layout`` must report for these mirrors."""
    out = []
    for rec in (CHyper, CLists):
        out.append(ctypes.sizeof(rec))
        out += [getattr(rec, name).offset for name, _ in rec._fields_]
    return out


WAIT_ENV = "CLION_HF_BUILD_WAIT"
"""Seconds the automatic choice (``fused=None``) waits for a first build (default 60);
past them CPU steps run the eager path until the build, going on in the background, ends."""
TIMEOUT_ENV = "CLION_HF_BUILD_TIMEOUT"
"""Seconds after which a build's compiler is stopped (default 300, all variants together);
``fused=True`` waits for the build up to then."""
_DEFAULT_WAIT, _DEFAULT_TIMEOUT, _PROGRESS_EVERY = 60.0, 300.0, 10.0


def _seconds(var: str, default: float) -> float:
    text = os.environ.get(var, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        logger.warning("clion_hf: %s=%r is not a number of seconds >= 0; using %g", var, text,
                       default)  # fmt: skip
        return default
    return value


_running: set[subprocess.Popen] = set()
_running_lock = threading.Lock()
_exiting = False  # set at exit: no compiler is started after the running ones are stopped


def _run(cmd: list[str], deadline: float) -> subprocess.CompletedProcess:
    """Run ``cmd`` to its end or to ``deadline`` (``time.monotonic``), whichever is first.

    In a session of its own, so that a timeout (or this process exiting) stops the
    compiler's whole process group (cc1plus, ld, a wrapper script's children), whose
    open pipes would otherwise keep the wait going.
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise subprocess.TimeoutExpired(cmd, 0)
    with _running_lock:
        if _exiting:
            raise subprocess.SubprocessError("this process is exiting")
        pipe = subprocess.PIPE
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe,
                                text=True, start_new_session=True)
        _running.add(proc)
    try:
        out, err = proc.communicate(timeout=remaining)
    except BaseException:
        _stop(proc)
        proc.communicate()
        raise
    finally:
        with _running_lock:
            _running.discard(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)


@atexit.register
def _stop_builds() -> None:
    """At exit: stop compilers still running in the background (none left behind)."""
    global _exiting
    with _running_lock:
        _exiting = True
        procs = list(_running)
    for proc in procs:
        _stop(proc)


def _compile(cxx: list[str], out: Path, flags: list[str], deadline: float) -> dict:
    """Build to ``out`` atomically (temporary name, then rename); the record to keep."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        # With -fopenmp the library links libgomp.so.1; torch (imported first) has loaded
        # its own copy under that name, so both share one OpenMP runtime and thread pool.
        cmd = [*cxx, *_FLAGS, *flags, str(SOURCE), "-o", str(tmp)]
        done = _run(cmd, deadline)
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, cmd, done.stdout, done.stderr)
        tmp.chmod(0o700)
        record = {"size": tmp.stat().st_size, "sha256": sha256_file(tmp), "flags": flags}
        os.replace(tmp, out)  # atomic: concurrent ranks may build the same file
        return record
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _build_lock(out: Path, deadline: float | None = None) -> Iterator[None]:
    """An exclusive lock on ``out``'s build (POSIX ``flock``; elsewhere none).

    The lock file is opened with ``O_NOFOLLOW``: a planted symlink fails (``OSError``)
    instead of having its target truncated or locked. Waiting for another process's build
    stops at ``deadline`` (``time.monotonic``) with :class:`TimeoutError`.
    """
    try:
        import fcntl
    except ImportError:  # Windows: concurrent builds still end in one atomic rename
        yield
        return
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(out.with_name(out.name + ".lock"), flags, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"another process has been building {out.name} for "
                                       f"longer than {TIMEOUT_ENV} allows") from None  # fmt: skip
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # releases the lock


def _clean_stale(out: Path) -> None:
    """Remove temporary files of builds that died (SIGKILL): under ``out``'s lock, every
    ``.tmp`` of ``out`` is stale; others when their process is gone."""
    for tmp in out.parent.glob(".lion_cpu-*.tmp"):  # .so and .json
        stale = tmp.name.startswith(f".{out.name}.")
        if not stale:
            try:
                os.kill(int(tmp.name.rsplit(".", 2)[-2]), 0)
            except (ValueError, ProcessLookupError):
                stale = True
            except PermissionError:
                pass
        if stale:
            tmp.unlink(missing_ok=True)


def _verify(out: Path, meta: Path) -> str | None:
    """None if ``out`` is the library its record describes; else what is wrong."""
    try:
        record = json.loads(meta.read_text())
        st = os.lstat(out)
    except FileNotFoundError as e:
        return f"{Path(e.filename).name} is missing"
    except (OSError, ValueError) as e:
        return f"its record is unreadable ({e})"
    problem = _untrusted(out, st)
    if problem:
        return problem
    if st.st_size != record.get("size"):
        return f"size {st.st_size} bytes, built {record.get('size')}"
    if sha256_file(out) != record.get("sha256"):
        return "its SHA-256 differs from the build's"
    return None


def _untrusted(path: Path, st: os.stat_result | None = None) -> str | None:
    """Why ``path`` (a cache directory or file) cannot be trusted, or None."""
    st = st or os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symlink"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"{path} is owned by uid {st.st_uid}, not by this user ({os.getuid()})"
    if st.st_mode & 0o022:
        return f"{path} is group- or world-writable (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _private_dir(path: Path) -> str | None:
    """Create ``path`` (and missing parents) 0700; None, or why it cannot be trusted."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.mkdir(mode=0o700, exist_ok=True)
        return _untrusted(path)
    except OSError as e:
        return f"{path}: {e}"


class Library(NamedTuple):
    """A loaded kernel library, or why there is none."""

    lib: ctypes.CDLL | None
    reason: str
    isa: str
    vectorised: bool


_CAUSE = re.compile(r"error|fail|no space|cannot|denied|killed|not found", re.IGNORECASE)


def _compiler_error(e: subprocess.CalledProcessError) -> str:
    """The compiler's cause in one line: its first line that names one (a full disk shows as
    "ld: final link failed: No space left on device" before collect2's summary), and the
    last line."""
    lines = [line.strip() for line in (e.stderr or "").splitlines() if line.strip()]
    if not lines:
        return f"it exited with status {e.returncode} and printed nothing"
    cause = next((line for line in lines if _CAUSE.search(line)), lines[-1])
    return cause if cause == lines[-1] else f"{cause} [...] {lines[-1]}"


def _build_into(cxx: list[str], out: Path, isa: Isa, deadline: float) -> tuple[dict | None, str]:
    """Compile ``out`` with the first variant that works: (record, "") or (None, error)."""
    errors: list[str] = []
    for extra in _VARIANTS:
        flags = [*isa.flags, *extra]
        try:
            return _compile(cxx, out, flags, deadline), ""
        except subprocess.CalledProcessError as e:
            errors.append(_compiler_error(e))
        except subprocess.TimeoutExpired:
            errors.append(f"it did not finish within {_seconds(TIMEOUT_ENV, _DEFAULT_TIMEOUT):g} "
                          f"s ({TIMEOUT_ENV}) and was stopped")  # fmt: skip
            break  # the time is spent: no second variant
        except (OSError, subprocess.SubprocessError) as e:
            errors.append(str(e))
    return None, errors[0]


def _obtain(cxx: list[str], version: str, name: str, kdir: Path,
            deadline: float | None = None) -> tuple[Path | None, str]:  # fmt: skip
    """The verified library file for target ``name`` in ``kdir``, built if needed.

    A cache that cannot be written (read-only file system, no permission for the lock
    file) still serves a valid library it holds; otherwise the ``OSError`` is raised.
    """
    if deadline is None:
        deadline = time.monotonic() + _seconds(TIMEOUT_ENV, _DEFAULT_TIMEOUT)
    isa = _isa(name)
    text = "\0".join([SOURCE.read_text(), str((_FLAGS, _VARIANTS, isa.flags)), " ".join(cxx),
                      version])
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    out = kdir / f"lion_cpu-{name}-{key}.so"
    meta = out.with_suffix(".json")
    lock = str(out.with_name(out.name + ".lock"))
    try:
        return _obtain_locked(cxx, name, isa, kdir, out, meta, deadline)
    except OSError as e:
        read_only = e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and str(e.filename) == lock
        if read_only and (out.exists() or meta.exists()) and _verify(out, meta) is None:
            return out, ""  # verified as always; nothing is written, so no lock is needed
        raise


def _obtain_locked(cxx: list[str], name: str, isa: Isa, kdir: Path, out: Path, meta: Path,
                   deadline: float) -> tuple[Path | None, str]:  # fmt: skip
    with _build_lock(out, deadline):  # the ranks of one job build once, the others wait
        _clean_stale(out)
        problem = _verify(out, meta) if out.exists() or meta.exists() else "absent"
        if problem is None:
            return out, ""
        if problem != "absent":
            logger.warning("clion_hf: the cached CPU kernel %s is not the one built (%s): "
                           "rebuilding it", out, problem)  # fmt: skip
            out.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
        logger.warning("clion_hf: building the fused CPU kernel for %s into %s (once, ~20 s)",
                       name, kdir)  # fmt: skip
        record, error = _build_into(cxx, out, isa, deadline)
        if record is None:
            return None, f"{' '.join(cxx)} could not build {SOURCE.name} for {name}: {error}"
        record.update(isa=name, vectorised=name != GENERIC)
        tmp = meta.with_name(f".{meta.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0),
                     0o600)  # fmt: skip
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, meta)
        problem = _verify(out, meta)
        if problem is not None:
            return None, f"the kernel just built at {out} does not verify: {problem}"
        return out, ""


def _build_library(name: str, deadline: float) -> Library:
    """The compiled kernel library for target ``name``, built if needed (by :class:`_Build`)."""
    isa = _isa(name)
    cxx = _compiler()
    if not cxx:
        return Library(None, "no C++ compiler found (set CXX or install g++/clang++)", name, False)
    try:
        done = _run([*cxx, "--version"], min(deadline, time.monotonic() + 60))
    except (OSError, subprocess.SubprocessError) as e:
        return Library(None, f"C++ compiler {' '.join(cxx)!r} does not run: {e}", name, False)
    if done.returncode != 0:  # e.g. CXX=false
        return Library(None, f"C++ compiler {' '.join(cxx)!r} does not run: `--version` exited "
                       f"with status {done.returncode}", name, False)  # fmt: skip
    version = done.stdout
    kdir = cache_dir() / "kernels"
    private = None
    problem = _private_dir(kdir)
    if problem is not None:
        private = Path(tempfile.mkdtemp(prefix="clion_hf-kernels-"))
        logger.warning("clion_hf: not using the kernel cache (%s); building in %s for this "
                       "process", problem, private)  # fmt: skip
        kdir = private
    try:
        try:
            out, reason = _obtain(cxx, version, name, kdir, deadline)
        except TimeoutError as e:
            out, reason = None, str(e)
        except OSError as e:
            out, reason = None, f"the kernel cache {kdir}: {e}"
            if private is None:  # e.g. read-only without this kernel: build privately
                private = Path(tempfile.mkdtemp(prefix="clion_hf-kernels-"))
                logger.warning("clion_hf: the kernel cache %s cannot be written (%s); building "
                               "in %s for this process", kdir, e, private)  # fmt: skip
                try:
                    out, reason = _obtain(cxx, version, name, private, deadline)
                except OSError as e2:
                    out, reason = None, f"{reason}; the private build in {private}: {e2}"
        if out is None:
            return Library(None, reason, name, False)
        try:
            lib = ctypes.CDLL(str(out))
        except OSError as e:
            return Library(None, f"the built kernel {out} does not load: {e}", name, False)
    finally:
        if private is not None:  # loaded (or failed): the private copy is not needed
            shutil.rmtree(private, ignore_errors=True)
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
        return Library(None, f"the built kernel {out} has another argument layout than this "
                       "loader", name, False)  # fmt: skip
    if lib.clion_vector_bytes() != isa.vector_bytes:
        return Library(None, f"the built kernel {out} has {lib.clion_vector_bytes()}-byte "
                       f"vectors, not {isa.vector_bytes} for {name}", name, False)  # fmt: skip
    return Library(lib, "", name, name != GENERIC)


class _Build:
    """One target's build, in a background thread: the steps that cannot wait for it run
    the eager path meanwhile (its results are the kernel's, bit for bit, and the
    collectives of distributed steps do not depend on the path)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.monotonic()
        self.deadline = self.started + _seconds(TIMEOUT_ENV, _DEFAULT_TIMEOUT)
        self.result: Library | None = None
        self.done = threading.Event()
        self.waited = False  # the automatic choice has had its one bounded wait
        self.passed = False  # ... and went on without the kernel (say so when it is built)
        threading.Thread(target=self._run, name=f"clion_hf-kernel-{name}", daemon=True).start()

    def _run(self) -> None:
        try:
            self.result = _build_library(self.name, self.deadline)
        except Exception as e:  # noqa: BLE001 - reported as the reason, never lost
            self.result = Library(None, f"building the kernel failed: {e!r}", self.name, False)
        finally:
            self.done.set()

    def wait(self, limit: float | None) -> bool:
        """Wait up to ``limit`` seconds (None: until the build ends); a line every 10 s."""
        end = self.deadline + 5 if limit is None else time.monotonic() + limit
        while not self.done.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            if self.done.wait(min(_PROGRESS_EVERY, left)):
                break
            if time.monotonic() >= end:
                return False
            until = (f"CPU steps run the eager path after {WAIT_ENV}={limit:g} s"
                     if limit is not None else f"the compiler is stopped after {TIMEOUT_ENV}="
                     f"{self.deadline - self.started:g} s")  # fmt: skip
            logger.warning("clion_hf: still building the fused CPU kernel for %s: %.0f s so far; "
                           "%s", self.name, time.monotonic() - self.started, until)  # fmt: skip
        return True


_builds: dict[str, _Build] = {}
_builds_lock = threading.Lock()


def _forget_unfinished() -> None:
    # A forked child (DataLoader workers) has no build thread: it would wait for nothing.
    for name in [n for n, b in _builds.items() if not b.done.is_set()]:
        del _builds[name]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_unfinished)


def _load_isa(name: str, wait: float | None = None) -> Library:
    """The kernel library for target ``name``, its build started on first use.

    ``wait=None``: until the build ends (``fused=True``; the compiler is stopped after
    ``CLION_HF_BUILD_TIMEOUT``). A number: the automatic choice, which waits that long
    once and then never again: until the build ends, the library is "still being built".
    """
    with _builds_lock:
        build = _builds.get(name)
        if build is None:
            build = _builds[name] = _Build(name)
    if not build.done.is_set():
        if wait is None:
            build.wait(None)
        elif not build.waited:
            build.waited = True
            build.passed = not build.wait(wait)
    if not build.done.is_set() or build.result is None:
        waited = f"{WAIT_ENV}={wait:g} s" if wait is not None else TIMEOUT_ENV
        return Library(None, f"the fused CPU kernel for {name} is still being built after "
                       f"{waited} (CPU steps switch to it when it is ready)", name,
                       False)  # fmt: skip
    if build.passed and build.result.lib is not None:
        build.passed = False
        logger.warning("clion_hf: the fused CPU kernel for %s is built (%.0f s): CPU steps use "
                       "it from now on", name, time.monotonic() - build.started)  # fmt: skip
    return build.result


_override: str | None = None


@contextlib.contextmanager
def use_isa(name: str) -> Iterator[None]:
    """Run the kernel built for target ``name`` inside the block (benchmarks, tests)."""
    global _override
    if name not in host_isas() + [GENERIC]:
        raise ValueError(f"target {name!r}: this CPU runs {', '.join(host_isas() + [GENERIC])}")
    before, _override = _override, name
    try:
        yield
    finally:
        _override = before


def _load(wait: float | None = None) -> tuple[ctypes.CDLL | None, str]:
    """The kernel library of :func:`selected_isa` (or :func:`use_isa`'s), or ``(None, reason)``."""
    try:
        name = _override or selected_isa()
    except ValueError as e:
        return None, str(e)
    loaded = _load_isa(name, wait)
    return loaded.lib, loaded.reason


_said: set[str] = set()


def automatic() -> bool:
    """Whether the automatic choice (``fused=None``) can run the kernel now.

    Its first build is waited for up to ``CLION_HF_BUILD_WAIT`` seconds, once; a step that
    finds it still building runs the eager path. Each reason for the eager path is said
    once, at WARNING level (the eager path is several times slower).
    """
    lib, reason = _load(_seconds(WAIT_ENV, _DEFAULT_WAIT))
    if lib is None and reason not in _said:
        _said.add(reason)
        logger.warning("clion_hf: CPU steps run the eager path (same results, several times "
                       "slower) because %s", reason)  # fmt: skip
    return lib is not None


@functools.cache
def vectorised() -> bool:
    """Whether the kernel of this process is vectorised (then it is the CPU default)."""
    lib, _ = _load()
    if lib is None:
        return False
    loaded = _load_isa(selected_isa())
    if not loaded.vectorised:
        logger.info("clion_hf: no vectorised CPU kernel for this %s machine: the default "
                    "is the foreach path (fused=True runs the portable build)", _machine())
    return loaded.vectorised


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


_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}
"""Complex dtypes are updated as pairs of reals (_math.as_real): their real dtype."""


class _Batch(NamedTuple):
    """The kernel-eligible tensors of one (parameter, momentum) dtype pair."""

    idx: list[int]  # positions in the caller's lists
    numel: list[int]  # real elements (twice the complex ones)


def _pointers(ts: list[Tensor]) -> ctypes.Array:
    # A complex tensor's data_ptr is its view_as_real's: no view is made per step.
    return (ctypes.c_void_p * len(ts))(*[t.data_ptr() for t in ts])


def _batches(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor]
) -> tuple[dict[tuple[torch.dtype, torch.dtype], _Batch], list[int]]:
    """Kernel-eligible tensors by (param, momentum) dtype pair; the indices of the rest.

    Refuses (:class:`ValueError`, before anything is written) a gradient or momentum that
    does not match its parameter: the kernel reads and writes them by the parameter's
    element count. The lists the optimizers pass were checked when built; this guards
    state edited by hand, at the cost of a shape comparison.
    """
    pairs = dtype_pairs()
    batches: dict[tuple[torch.dtype, torch.dtype], _Batch] = {}
    rest = []
    for i, (p, g, m) in enumerate(zip(params, grads, exp_avgs, strict=True)):
        shape, pdt, gdt, mdt = p.shape, p.dtype, g.dtype, m.dtype
        cplx = pdt in _REAL
        if (g.shape != shape or m.shape != shape or not (g.is_cpu and m.is_cpu)
                or (gdt in _REAL) != cplx or (mdt in _REAL) != cplx):  # fmt: skip
            check_update_lists(params, grads, exp_avgs)  # names the tensor and the problem
            raise ValueError(f"params[{i}]: its gradient or momentum does not match it")
        n = p.numel()
        if n == 0:
            continue
        if cplx:
            pdt, gdt, mdt, n = _REAL[pdt], _REAL.get(gdt, gdt), _REAL.get(mdt, mdt), 2 * n
        if (
            pdt == gdt and (pdt, mdt) in pairs
            and p.is_contiguous() and g.is_contiguous() and m.is_contiguous()
        ):  # fmt: skip
            batch = batches.setdefault((pdt, mdt), _Batch([], []))
            batch.idx.append(i)
            batch.numel.append(n)
        else:  # strided views, a gradient of another dtype, an unsupported pair
            rest.append(i)
    return batches, rest


def _lists(ps, gs, ms, numel, pdt, mdt, *, take=None, scale=None, count=None, agree=None,
           min_abs_c=None) -> tuple[CLists, list]:  # fmt: skip
    """A :class:`CLists` and the objects its pointers point into (keep them alive)."""
    keep = [_pointers(ps) if ps else None, _pointers(gs), _pointers(ms),
            (ctypes.c_int64 * len(numel))(*numel)]  # fmt: skip
    ptr = [None if t is None else t.data_ptr() for t in (take, scale, count, agree, min_abs_c)]
    lists = CLists(
        ntensors=len(gs), ps=ctypes.addressof(keep[0]) if ps else None,
        gs=ctypes.addressof(keep[1]), ms=ctypes.addressof(keep[2]),
        numel=ctypes.addressof(keep[3]), p_dtype=_DTYPES[pdt], m_dtype=_DTYPES[mdt],
        take=ptr[0], caution_scale=ptr[1], count=ptr[2], agree=ptr[3], min_abs_c=ptr[4],
    )  # fmt: skip
    return lists, keep


def _caution_scale(agree: Tensor, numel: list[int], dtype: torch.dtype) -> Tensor:
    # As _math._caution: numel / (mask.sum() + 1) in the compute dtype, which
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
    take_u8 = take.to("cpu", torch.uint8).contiguous() if take is not None else None
    batches, rest = _batches(params, grads, exp_avgs)
    threads = torch.get_num_threads()
    for (pdt, mdt), (idx, numel) in batches.items():
        k = len(idx)
        if k == n:  # the usual case: one batch holds every tensor, in order
            ps, gs, ms, sub_take = params, grads, exp_avgs, take_u8
        else:
            ps = [params[i] for i in idx]
            gs = [grads[i] for i in idx]
            ms = [exp_avgs[i] for i in idx]
            sub_take = None if take_u8 is None else take_u8[idx].contiguous()
        count = torch.zeros(k, dtype=torch.int64)
        min_abs_c = torch.empty(k, dtype=torch.float64) if want_min else None
        scale = None
        if hyper.caution:
            agree = torch.empty(k, dtype=torch.int64)
            lists, keep = _lists(None, gs, ms, numel, pdt, mdt, agree=agree)
            rc = lib.clion_reduce(ctypes.byref(chyper), ctypes.byref(lists), threads)
            assert rc == 0, "dtype pair was checked by clion_supported"
            scale = _caution_scale(agree, numel, compute_dtype(pdt)).double()
        lists, keep = _lists(ps, gs, ms, numel, pdt, mdt, take=sub_take, scale=scale,
                             count=count, min_abs_c=min_abs_c)  # fmt: skip
        own = for_dtype(hyper, pdt)  # soft with an nu that is 0 in fp32: element's rule
        rc = lib.clion_update(ctypes.byref(chyper if own is hyper else CHyper.of(own)),
                              ctypes.byref(lists), threads)  # fmt: skip
        assert rc == 0, "dtype pair was checked by clion_supported"
        if k == n:
            counts = count.float()
            mins = mins if min_abs_c is None else min_abs_c
        else:
            at = torch.tensor(idx)
            counts[at] = count.float()
            if min_abs_c is not None:
                mins[at] = min_abs_c
    for i in rest:  # rare (strided views, mixed dtypes): the eager math, one tensor
        out = single_tensor_update(
            [params[i]], [grads[i]], [exp_avgs[i]], hyper,
            None if take is None else take[i].reshape(1), True, want_min,
        )  # fmt: skip
        counts[i] = out.count[0]
        if want_min:
            mins[i] = out.min_abs_c[0]
    return counts, mins


def min_abs_c(grads: TensorList, exp_avgs: TensorList, beta1: float, maximize: bool = False,
              mode: str = "tensor", below: float | None = None) -> Tensor:  # fmt: skip
    """Per-tensor min non-zero ``abs(c)`` (fp64) in one fused pass.

    With ``below``, the pass stops reading a tensor (``mode="tensor"``) or every tensor
    (``mode="global"``) once it has found a non-zero ``abs(c)`` below ``below``: the result
    is then only good for the comparison (a witness below it, ``inf`` for skipped tensors),
    and the exact min must come from the update pass.
    """
    if mode not in _STOP:
        raise ValueError(f"invalid mode={mode!r}: pass 1 runs for 'global' and 'tensor'")
    lib = _library()
    out = torch.full((len(grads),), math.inf, dtype=torch.float64)
    chyper = CHyper(w1=1.0 - beta1, maximize=int(maximize),
                    stop=0 if below is None else _STOP[mode],
                    stop_below=-math.inf if below is None else below)  # fmt: skip
    batches, rest = _batches(grads, grads, exp_avgs)
    threads = torch.get_num_threads()
    for (gdt, mdt), (idx, numel) in batches.items():
        gs = [grads[i] for i in idx]
        ms = [exp_avgs[i] for i in idx]
        min_abs_c = torch.empty(len(idx), dtype=torch.float64)
        lists, keep = _lists(None, gs, ms, numel, gdt, mdt, min_abs_c=min_abs_c)
        rc = lib.clion_reduce(ctypes.byref(chyper), ctypes.byref(lists), threads)
        assert rc == 0, "dtype pair was checked by clion_supported"
        out[torch.tensor(idx)] = min_abs_c
    if rest:  # strided or mixed-dtype tensors: the eager reduction
        out[torch.tensor(rest)] = eager_min_abs_c(
            [grads[i] for i in rest], [exp_avgs[i] for i in rest], beta1, maximize, False
        ).to(out)
    return out
