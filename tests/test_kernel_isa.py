"""The fused CPU kernel's machine code, targets and cache (clion_hf/optim/kernels/cpu.py).

A compiler report (``-fopt-info-vec``) once said "vectorised" while the function that ran
was a scalar ``.constprop`` clone. These tests read the machine code instead: they build
the kernel for every x86 target the compiler supports, disassemble it (``objdump``), find
every chunk function (``update_chunk``/``reduce_chunk``, clones included) and fail on any
loop that does scalar floating-point work or lacks vector instructions of the target's
width. A ``perf`` run checks that those functions are where a step spends its time.

The arm64 build (``armv8-a``, NEON) is checked the same way without an arm64 machine:
cross-compiled with Zig's clang (``pip install ziglang``, in the ``dev`` extra) and
disassembled with ``llvm-objdump``. It is compiled and read here, never run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, NoReturn

import pytest
import torch
from _paths import REPO as ROOT

from clion_hf.optim.kernels import cpu

X86 = [name for name, isa in cpu.ISAS.items() if isa.machine == "x86_64"]
WIDTH = {"x86-64": "xmm", "x86-64-v3": "ymm", "x86-64-v4": "zmm"}
# 10 update variants (Lion, cautious and take, each with and without the min |c|; element
# and soft with and without it) x {specialised, general} + 4 reduce variants, for 10
# dtype pairs
CHUNK_FUNCTIONS = (10 * 2 + 4) * 10

_HEAD = re.compile(r"^([0-9a-f]+) <(.*)>:$")
_INSN = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")
# Scalar SSE/AVX floating-point work (…ss / …sd arithmetic, compares, conversions to or
# from a scalar) and x87. Plain moves (movss/movsd) are not work: under register pressure
# GCC reloads a constant with movss and broadcasts it inside a vector loop.
_SCALAR = re.compile(
    r"^v?(?:add|sub|mul|div|min|max|sqrt|u?comi|cmp\w*|f?n?m(?:add|sub)\d{3}|round|rcp\d*"
    r"|rsqrt\d*|getexp|getmant|scalef|range|reduce|fixupimm|rndscale)s[sd]$"
    r"|^v?cvt\w*s[sd]2|^v?cvt\w*2s[sd]$|^f(?:ld|st|add|sub|mul|div|com|ucom)\w*$"
)
_PACKED = re.compile(r"^v?\w+p[sd]$")


def disassemble(so: Path, objdump: tuple[str, ...] | None = None,
                ) -> dict[str, list[tuple[int, str, str]]]:  # fmt: skip
    """Function name -> [(address, mnemonic, operands)] from ``objdump -d -C`` (or the
    given disassembler command, which prints the same layout: ``llvm-objdump``)."""
    cmd = objdump or ("objdump", "-d", "-C", "-w", "--no-show-raw-insn")
    text = subprocess.run([*cmd, str(so)], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    funcs: dict[str, list[tuple[int, str, str]]] = {}
    cur = None
    for line in text.splitlines():
        if m := _HEAD.match(line):
            cur = funcs.setdefault(m.group(2), [])
        elif (m := _INSN.match(line)) and cur is not None:
            cur.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return funcs


def _target(operands: str) -> int | None:
    m = re.match(r"([0-9a-f]+)\s*<", operands)
    return int(m.group(1), 16) if m else None


class Arch(NamedTuple):
    """How to read one machine's code: its branches and its floating-point work."""

    objdump: tuple[str, ...] | None  # the disassembler command (None: GNU objdump)
    jump: Callable[[str], bool]  # a branch with a target operand (conditional or not)
    stop: Callable[[str], bool]  # control does not fall through to the next instruction
    target: Callable[[str], int | None]  # a branch's target address, from its operands
    scalar: Callable[[str, str], bool]  # (mnemonic, operands): scalar floating point
    packed: Callable[[str, str, str], bool]  # (mnemonic, operands, width): packed FP


X86_64 = Arch(
    objdump=None,
    jump=lambda mn: mn.startswith("j"),
    stop=lambda mn: mn == "jmp" or mn.startswith("ret"),
    target=_target,
    scalar=lambda mn, ops: bool(_SCALAR.match(mn)),
    packed=lambda mn, ops, width: bool(_PACKED.match(mn)) and f"%{width}" in ops,
)

# AArch64 (llvm-objdump's syntax). Branches: b, b.<cond>, cbz/cbnz, tbz/tbnz (br: to a
# register). Scalar floating point is an FP instruction on an h/s/d register (fadd s0,
# fcmp d1, fcsel, fmadd, fcvt, scvtf ...; not a lane v2.s[0] of a vector), or a load or
# store of a single s/h element. fmov (a move or a constant) is not work, as movss on
# x86; a 64-bit d load/store is not either: it moves the 4 x 16-bit lanes of a bf16/fp16
# vector. Packed work of width q (the 128-bit NEON registers): an FP instruction on
# whole .4s or .2d vectors.
_A64_REG = r"(?<![\w.])[hsd](?:[12]?[0-9]|3[01])\b"
_A64_FP = re.compile(r"^(?:f(?!mov$)[a-z0-9]+|[su]cvtf)$")
_A64_MOVE = re.compile(r"^(?:ldu?r|stu?r|ldp|stp|ldnp|stnp)$")
_A64_ELEMENT = r"(?<![\w.])[hs](?:[12]?[0-9]|3[01])\b"
_A64_LANES = {"q": r"\bv(?:[12]?[0-9]|3[01])\.(?:4s|2d)\b"}


def _a64_target(operands: str) -> int | None:
    m = re.search(r"(?:^|[\s,])(?:0x)?([0-9a-f]+)\s*<", operands)
    return int(m.group(1), 16) if m else None


AARCH64 = Arch(
    objdump=("llvm-objdump", "-d", "-C", "--no-show-raw-insn"),
    jump=lambda mn: mn in ("b", "br", "cbz", "cbnz", "tbz", "tbnz") or mn.startswith("b."),
    stop=lambda mn: mn in ("b", "br") or mn.startswith("ret"),
    target=_a64_target,
    scalar=lambda mn, ops: (
        (bool(_A64_FP.match(mn)) and re.search(_A64_REG, ops) is not None)
        or (bool(_A64_MOVE.match(mn)) and re.search(_A64_ELEMENT, ops) is not None)
    ),
    packed=lambda mn, ops, width: (
        bool(_A64_FP.match(mn)) and re.search(_A64_LANES[width], ops) is not None
    ),
)


def loops(insns: list[tuple[int, str, str]], arch: Arch = X86_64,
          ) -> list[list[tuple[int, str, str]]]:  # fmt: skip
    """The instructions of each cycle of the function's control-flow graph (its strongly
    connected components), so that a backward jump that is not a loop is not one."""
    if not insns:
        return []
    index = {a: i for i, (a, _, _) in enumerate(insns)}
    leaders = {0}
    for i, (_, mn, ops) in enumerate(insns):
        if arch.jump(mn) or arch.stop(mn):
            leaders.add(i + 1)
            if arch.jump(mn) and arch.target(ops) in index:
                leaders.add(index[arch.target(ops)])
    starts = sorted(x for x in leaders if x < len(insns))
    bounds = list(zip(starts, starts[1:] + [len(insns)], strict=True))
    block = {i: b for b, (s, e) in enumerate(bounds) for i in range(s, e)}
    succ: list[list[int]] = [[] for _ in bounds]
    for b, (_, e) in enumerate(bounds):
        _, mn, ops = insns[e - 1]
        if arch.jump(mn) and arch.target(ops) in index:
            succ[b].append(block[index[arch.target(ops)]])
        if not arch.stop(mn) and e < len(insns):
            succ[b].append(block[e])
    # Tarjan's strongly connected components, iteratively.
    order: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on: set[int] = set()
    comps: list[list[int]] = []
    for root in range(len(bounds)):
        if root in order:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                order[v] = low[v] = len(order)
                stack.append(v)
                on.add(v)
            if i < len(succ[v]):
                work.append((v, i + 1))
                w = succ[v][i]
                if w not in order:
                    work.append((w, 0))
                elif w in on:
                    low[v] = min(low[v], order[w])
                continue
            if low[v] == order[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                comps.append(comp)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return [[insns[i] for b in sorted(c) for i in range(*bounds[b])]
            for c in comps if len(c) > 1 or c[0] in succ[c[0]]]  # fmt: skip


def hot_loop_problems(so: Path, width: str, arch: Arch = X86_64,
                      loop_count: list[int] | None = None) -> list[str]:  # fmt: skip
    """What is wrong with the chunk functions of ``so``: scalar floating point in a loop,
    a chunk function without a loop of ``width`` (xmm/ymm/zmm; q on AArch64) packed
    instructions. ``loop_count`` (if given) receives the number of loops inspected."""
    funcs = disassemble(so, arch.objdump)
    chunk = {n: ins for n, ins in funcs.items() if re.search(r"(update|reduce)_chunk<", n)}
    problems = []
    if len(chunk) < CHUNK_FUNCTIONS:
        problems.append(f"{len(chunk)} chunk functions, expected {CHUNK_FUNCTIONS}")
    for name, ins in chunk.items():
        found = loops(ins, arch)
        if loop_count is not None:
            loop_count.append(len(found))
        scalar = [f"{mn} {ops}" for body in found for _, mn, ops in body
                  if arch.scalar(mn, ops)]  # fmt: skip
        packed = [mn for body in found for _, mn, ops in body if arch.packed(mn, ops, width)]
        if scalar:
            problems.append(f"{name}: scalar loop ({'; '.join(scalar[:3])})")
        if not packed:
            problems.append(f"{name}: no loop of packed {width} instructions")
    return problems


def _missing(reason: str) -> NoReturn:
    """Skip for a missing tool, or fail where CI says every tool must be there: .ci/run
    sets CLION_HF_REQUIRE_KERNEL_TOOLS=1, so these checks cannot silently not run there."""
    if os.environ.get("CLION_HF_REQUIRE_KERNEL_TOOLS") == "1":
        pytest.fail(f"{reason} (CLION_HF_REQUIRE_KERNEL_TOOLS=1: CI needs this tool)")
    pytest.skip(reason)


def _tools() -> None:
    if not shutil.which("objdump"):
        _missing("objdump not installed")
    if cpu._compiler() is None:
        _missing("no C++ compiler")


def _built(name: str) -> Path:
    """The kernel library for target ``name`` as the loader builds it (cached)."""
    cxx = cpu._compiler()
    version = subprocess.run([*cxx, "--version"], capture_output=True, text=True).stdout
    kdir = cpu.cache_dir() / "kernels"
    assert cpu._private_dir(kdir) is None
    out, reason = cpu._obtain(cxx, version, name, kdir)
    if out is None:
        if "-march" in reason or "unrecognized" in reason or "bad value" in reason:
            _missing(f"the compiler does not support {name}: {reason}")
        raise AssertionError(reason)
    return out


SCALAR_CHUNK = (
    "template <typename T> __attribute__((noinline)) void update_chunk(T* p, const T* g,\n"
    "    long n) { for (long i = 0; i < n; ++i) p[i] = g[i] > 0 ? p[i] - g[i] : p[i]; }\n"
    "template void update_chunk<float>(float*, const float*, long);\n"
)


def test_the_check_fails_on_a_scalar_loop(tmp_path):
    # The check itself must be able to fail: a chunk function compiled without vectors.
    _tools()
    src = tmp_path / "scalar.cpp"
    src.write_text(SCALAR_CHUNK)
    so = tmp_path / "scalar.so"
    subprocess.run([*cpu._compiler(), "-O2", "-fno-tree-vectorize", "-shared", "-fPIC",
                    str(src), "-o", str(so)], check=True)  # fmt: skip
    problems = hot_loop_problems(so, "xmm")
    assert any("scalar loop" in p for p in problems), problems
    assert any("no loop of packed xmm" in p for p in problems), problems


@pytest.mark.slow
@pytest.mark.parametrize("name", X86)
def test_hot_loops_are_vectorised_on_every_x86_target(name):
    # Every target is built and inspected, whatever this host can run.
    _tools()
    problems = hot_loop_problems(_built(name), WIDTH[name])
    assert not problems, "\n".join(problems[:20])


# ------------------------------------------------------------------ x86 with Clang

def _zig_cxx(target: str) -> list[str]:
    """Zig's clang as a C++ compiler for ``target`` (a Zig triple), or a skip."""
    if importlib.util.find_spec("ziglang") is None:
        _missing("ziglang not installed (pip install ziglang; it is in the dev extra)")
    return [sys.executable, "-m", "ziglang", "c++", "-target", target]


# Zig reads -march= as a CPU name and has no -mtune; its CPUs of the same names
_ZIG_X86 = {"x86-64": "-mcpu=x86_64", "x86-64-v3": "-mcpu=x86_64_v3",
            "x86-64-v4": "-mcpu=x86_64_v4"}  # fmt: skip


@pytest.mark.parametrize("name", X86)
def test_x86_kernel_compiles_with_clang_and_is_vectorised(name, tmp_path):
    # Users with CXX=clang++ (or Apple clang on an Intel Mac) build the kernel with Clang:
    # it once failed there wherever the unsigned min/max path is on (x86-64-v3/v4), which
    # only the arm64 cross-compile revealed. Zig's clang, an object (no libc++ link), no
    # OpenMP (Zig ships no omp.h: the builder's fallback).
    _tools()
    cxx = _zig_cxx("x86_64-linux-gnu")
    flags = [f for f in cpu._FLAGS if f != "-shared"] + [_ZIG_X86[name], "-Wall", "-Wextra"]
    obj = tmp_path / f"lion_cpu-{name}-clang.o"
    proc = subprocess.run([*cxx, *flags, "-c", str(cpu.SOURCE), "-o", str(obj)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0 and "warning:" not in proc.stderr, proc.stderr[-3000:]
    counts: list[int] = []
    problems = hot_loop_problems(obj, WIDTH[name], X86_64, counts)
    assert not problems, "\n".join(problems[:20])
    assert len(counts) == CHUNK_FUNCTIONS and min(counts) >= 1, counts


# ------------------------------------------------------------------ arm64, cross-compiled

A64 = "armv8-a"
# Zig reads -march= as a CPU name: its `generic` AArch64 CPU is the armv8-a baseline
# (fp-armv8 + neon, no v8.1 or later feature; _a64_compiler checks the predefined macros).
_ZIG_SPELLING = {"-march=armv8-a": "-mcpu=generic"}


def _a64_tools() -> tuple[list[str], str]:
    """Zig's C++ cross compiler for aarch64-linux-gnu and an llvm-objdump that reads
    AArch64, or a skip naming what is missing."""
    cxx = _zig_cxx("aarch64-linux-gnu")
    objdump = shutil.which("llvm-objdump")
    if objdump is None:
        _missing("llvm-objdump not installed (it reads the AArch64 code)")
    targets = subprocess.run([objdump, "--version"], capture_output=True, text=True).stdout
    if "aarch64" not in targets:
        _missing(f"{objdump} was built without the AArch64 target")
    return cxx, objdump


def _a64_compile(cxx: list[str], src: Path, out: Path, flags: list[str]) -> str:
    """Compile ``src`` to the object ``out``; the compiler's messages."""
    proc = subprocess.run([*cxx, *flags, "-c", str(src), "-o", str(out)], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc.stderr


@pytest.fixture(scope="module")
def a64_kernel(tmp_path_factory) -> tuple[Path, list[str], str]:
    """The arm64 kernel, built as cpu.py builds ``armv8-a`` (its flags, -fopenmp first and
    then without, as _build_into), with -Wall -Wextra: (object, flags used, messages).

    An object (-c), not the -shared library: linking makes Zig build libc++ for aarch64
    first (80 s on a cold cache), and the chunk functions' code is the same (checked
    once by hand: only relocated addresses differ)."""
    cxx, _ = _a64_tools()
    isa = cpu.ISAS[A64]
    assert isa.machine == "aarch64" and isa.vector_bytes == 16
    march = [_ZIG_SPELLING.get(f, f) for f in isa.flags]
    macros = subprocess.run([*cxx, *march, "-dM", "-E", "-x", "c++", "-"], input="",
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "#define __ARM_ARCH 8\n" in macros and "#define __ARM_NEON 1\n" in macros, macros
    for later in ("__ARM_FEATURE_ATOMICS", "__ARM_FEATURE_SVE", "__ARM_FEATURE_DOTPROD"):
        assert later not in macros, f"{march} is not the armv8-a baseline: {later}"
    out = tmp_path_factory.mktemp("a64") / "lion_cpu-armv8-a.o"
    base = [f for f in cpu._FLAGS if f != "-shared"] + march + ["-Wall", "-Wextra"]
    errors = []
    for extra in cpu._VARIANTS:
        try:
            return out, [*base, *extra], _a64_compile(cxx, cpu.SOURCE, out, [*base, *extra])
        except subprocess.CalledProcessError as e:
            errors.append(e.stderr.strip()[-2000:])
    raise AssertionError("the arm64 kernel does not compile:\n" + "\n".join(errors))


def test_the_arm64_kernel_compiles_without_warnings(a64_kernel):
    _, flags, messages = a64_kernel
    assert "warning:" not in messages and "error:" not in messages, messages[-3000:]
    assert {"-O3", "-ffp-contract=off", "-fPIC", "-mcpu=generic"} <= set(flags)


def test_hot_loops_are_vectorised_on_arm64(a64_kernel):
    # Compiled and read, not run (there is no arm64 machine here).
    obj, _, _ = a64_kernel
    counts: list[int] = []
    problems = hot_loop_problems(obj, "q", AARCH64, counts)
    assert not problems, "\n".join(problems[:20])
    assert len(counts) == CHUNK_FUNCTIONS and min(counts) >= 1, counts


def test_the_arm64_check_fails_on_a_scalar_loop(tmp_path):
    # The same chunk function as the x86 control, compiled for arm64 without vectors.
    cxx, _ = _a64_tools()
    src = tmp_path / "scalar.cpp"
    src.write_text(SCALAR_CHUNK)
    obj = tmp_path / "scalar.o"
    _a64_compile(cxx, src, obj, ["-O2", "-fPIC", "-mcpu=generic", "-fno-vectorize",
                                 "-fno-slp-vectorize"])  # fmt: skip
    counts: list[int] = []
    problems = hot_loop_problems(obj, "q", AARCH64, counts)
    assert counts == [1], counts  # the loop is found (the branch is read)
    scalar = [p for p in problems if "update_chunk<float>" in p and "scalar loop" in p]
    assert scalar and re.search(r"\bf(?:sub|cmp|csel)\w* s[0-9]", scalar[0]), problems
    assert any("no loop of packed q" in p for p in problems), problems
    # ... and in the auto-vectorised build of the same loop, the packed loop is seen (its
    # scalar remainder loop is still reported: why the kernel pads its tails instead).
    _a64_compile(cxx, src, obj, ["-O2", "-fPIC", "-mcpu=generic"])
    problems = hot_loop_problems(obj, "q", AARCH64)
    assert not any("no loop of packed q" in p for p in problems), problems


PERF_STEP = """
import torch
from clion_hf import CLion, Lion
torch.set_num_threads(1)
ps = [torch.nn.Parameter(torch.randn(3_000_000)) for _ in range(2)]
for p in ps:
    p.grad = torch.randn_like(p)
opts = [Lion(ps, fused=True), CLion(ps, mode="element", nu=1e-3, fused=True)]
for _ in range(40):
    for o in opts:
        o.step()
"""


@pytest.mark.slow
def test_a_step_spends_its_kernel_time_in_the_inspected_functions(tmp_path):
    # The functions the check above inspects are the ones that run: perf's samples in the
    # kernel library fall in update_chunk/reduce_chunk (not in a clone or an inlined copy).
    if not shutil.which("perf"):
        _missing("perf not installed")
    data = tmp_path / "perf.data"
    # --no-buildid-cache: perf would otherwise copy every sampled library (libtorch_cpu.so
    # and the rest, about 700 MB per virtual environment) into ~/.debug, once per run.
    rec = subprocess.run(["perf", "record", "-q", "--no-buildid-cache", "-o", str(data),
                          sys.executable, "-c", PERF_STEP],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    if rec.returncode != 0 or not data.exists():
        _missing(f"perf record does not run here: {rec.stderr.strip()[-300:]}")
    rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--sort", "dso,sym"],
                         capture_output=True, text=True, timeout=600).stdout  # fmt: skip
    rows = [ln for ln in rep.splitlines() if "lion_cpu-" in ln and "%" in ln]
    share = {"chunk": 0.0, "other": 0.0}
    for ln in rows:
        pct = float(ln.split("%")[0].strip())
        share["chunk" if re.search(r"(update|reduce)_chunk<", ln) else "other"] += pct
    assert share["chunk"] > 0, rep[:3000]
    assert share["chunk"] >= 0.9 * (share["chunk"] + share["other"]), rows


# ------------------------------------------------------------------ choosing the target


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)  # fmt: skip


@pytest.mark.skipif(cpu._machine() != "x86_64", reason="x86 targets")
def test_the_target_follows_torch_capability_and_can_be_forced():
    code = "from clion_hf.optim.kernels import cpu; print(cpu.selected_isa())"
    cap = torch.backends.cpu.get_cpu_capability()
    want = {"AVX512": "x86-64-v4", "AVX2": "x86-64-v3"}.get(cap, "x86-64")
    assert _python(code).stdout.strip() == want
    # ATen without fma (its DEFAULT kernels): the kernel without fma, so the bits agree.
    assert _python(code, ATEN_CPU_CAPABILITY="default").stdout.strip() == "x86-64"
    assert _python(code, CLION_HF_CPU_ISA="x86-64").stdout.strip() == "x86-64"
    bad = _python("from clion_hf.optim.kernels import cpu; print(cpu.unavailable_reason())",
                  CLION_HF_CPU_ISA="pentium4")  # fmt: skip
    assert "CLION_HF_CPU_ISA='pentium4': this CPU runs x86-64" in bad.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "env", [{"CLION_HF_CPU_ISA": "x86-64-v3"}, {"ATEN_CPU_CAPABILITY": "default"}],
    ids=["forced-avx2", "sse2-with-aten-default"],
)
def test_other_targets_equal_foreach_bitwise(env):
    # The bitwise tests of test_fused.py, run with the AVX2 build and with the SSE2 build
    # (chosen automatically when ATen runs its DEFAULT, fma-free kernels).
    if cpu._machine() != "x86_64" or (env.get("CLION_HF_CPU_ISA", "x86-64") not in
                                      cpu.host_isas()):  # fmt: skip
        pytest.skip("needs an x86 host that runs the target")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "test_fused.py"), "-k", "equals_foreach"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=1800, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def test_default_is_foreach_where_the_kernel_is_not_vectorised(tmp_path):
    # An unknown machine gets the portable build: fused=True runs it, the default does not.
    code = ("import logging, torch; logging.basicConfig(level=logging.INFO)\n"
            "from clion_hf.optim import kernels\n"
            "from clion_hf.optim.kernels import cpu\n"
            "ok = kernels.default_fused([torch.ones(2)])\n"
            "print(cpu.selected_isa(), cpu.available(), ok)")  # fmt: skip
    proc = _python(code, CLION_HF_CPU_ISA="generic", CLION_HF_CACHE=str(tmp_path))
    assert proc.stdout.split() == ["generic", "True", "False"], proc.stderr[-2000:]
    assert "no vectorised CPU kernel" in proc.stderr and "the default is the foreach" in proc.stderr
    meta = next((tmp_path / "kernels").glob("lion_cpu-generic-*.json")).read_text()
    assert '"vectorised": false' in meta


# ------------------------------------------------------------------------------ the cache

LOAD = ("from clion_hf.optim.kernels import cpu; lib, why = cpu._load(); "
        "print(lib._name if lib else 'NONE ' + why)")  # fmt: skip


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    """A kernel cache in ``tmp_path`` holding this host's built library and its record
    (copied from the session's cache, so no test here pays for a build it does not test)."""
    lib, why = cpu._load()
    assert lib is not None, why
    src = Path(lib._name)
    kdir = tmp_path / "kernels"
    kdir.mkdir(mode=0o700)
    for f in (src, src.with_suffix(".json")):
        shutil.copy2(f, kdir / f.name)
    return kdir / src.name


def _args() -> tuple[list[str], str]:
    cxx = cpu._compiler()
    return cxx, subprocess.run([*cxx, "--version"], capture_output=True, text=True).stdout


@pytest.mark.slow
def test_a_truncated_cached_kernel_is_rebuilt_not_loaded(seeded, tmp_path):
    # A truncated library used to kill every later process with SIGBUS, never rebuilt.
    good = seeded.read_bytes()
    seeded.write_bytes(good[: len(good) // 2])
    proc = _python(LOAD, CLION_HF_CACHE=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip()) == seeded and seeded.read_bytes() == good
    assert "is not the one built" in proc.stderr and "rebuilding" in proc.stderr
    assert "building the fused CPU kernel" in proc.stderr  # shown without logging set up


@pytest.mark.parametrize("damage", ["truncate", "garbage", "same-size", "record"])
def test_a_damaged_cached_kernel_fails_verification(seeded, damage):
    meta = seeded.with_suffix(".json")
    assert cpu._verify(seeded, meta) is None
    good = seeded.read_bytes()
    if damage == "truncate":
        seeded.write_bytes(good[:4096])
    elif damage == "garbage":
        seeded.write_bytes(b"\0" * len(good))
    elif damage == "same-size":  # a planted library of the same size: only the hash tells
        seeded.write_bytes(good[:-64] + b"X" * 64)
    else:
        meta.write_text("{")
    problem = cpu._verify(seeded, meta)
    assert problem and any(w in problem for w in ("size", "SHA-256", "unreadable")), problem


def test_cache_directories_are_created_private():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        old = os.umask(0)  # world-writable by default: the cache must not follow
        try:
            assert cpu._private_dir(Path(d) / "c" / "kernels") is None
        finally:
            os.umask(old)
        assert stat.S_IMODE((Path(d) / "c").stat().st_mode) == 0o700
        assert stat.S_IMODE((Path(d) / "c" / "kernels").stat().st_mode) == 0o700


def test_the_build_lock_does_not_follow_a_symlink(seeded, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    seeded.with_name(seeded.name + ".lock").symlink_to(victim)
    with pytest.raises(OSError), cpu._build_lock(seeded):
        pass
    assert victim.read_text() == "keep me"
    cxx, version = _args()
    with pytest.raises(OSError):
        cpu._obtain(cxx, version, cpu.selected_isa(), seeded.parent)


def test_an_untrusted_cache_directory_or_file_is_refused(seeded):
    kdir = seeded.parent
    assert cpu._untrusted(kdir) is None and cpu._verify(seeded, seeded.with_suffix(".json")) is None
    seeded.chmod(0o722)
    assert "group- or world-writable" in cpu._verify(seeded, seeded.with_suffix(".json"))
    kdir.chmod(0o777)  # anyone could plant a library here
    assert "world-writable" in cpu._private_dir(kdir)


@pytest.mark.slow
def test_an_untrusted_cache_directory_makes_a_private_build(tmp_path):
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    kernels.chmod(0o777)
    proc = _python(LOAD, CLION_HF_CACHE=str(tmp_path))
    assert proc.returncode == 0 and not proc.stdout.startswith("NONE"), proc.stderr[-2000:]
    assert "not using the kernel cache" in proc.stderr and "world-writable" in proc.stderr
    assert not list(kernels.iterdir())  # built privately, nothing written there


def test_cxx_with_a_launcher_is_split_like_a_shell(monkeypatch):
    # CXX="ccache g++": a launcher and the compiler (here `env`, always installed).
    real = cpu._compiler()
    monkeypatch.setenv("CXX", f"env {' '.join(real)}")
    cxx = cpu._compiler()
    assert cxx == ["env", *real]
    assert subprocess.run([*cxx, "--version"], capture_output=True).returncode == 0


def test_temporary_files_of_a_killed_build_are_removed(seeded):
    dead = 2**22 + 12345  # above Linux's largest pid: not a running process
    stale = [seeded.with_name(f".{seeded.name}.{dead}.tmp"),
             seeded.with_name(f".lion_cpu-x86-64-0000.so.{dead}.tmp"),
             seeded.with_name(f".{seeded.with_suffix('.json').name}.{dead}.tmp")]  # fmt: skip
    live = seeded.with_name(f".lion_cpu-x86-64-0000.so.{os.getpid()}.tmp")
    for s in [*stale, live]:
        s.write_bytes(b"partial")
    cxx, version = _args()
    out, why = cpu._obtain(cxx, version, cpu.selected_isa(), seeded.parent)
    assert out == seeded, why
    assert not [s for s in stale if s.exists()] and live.exists()


# ------------------------------------------------------------- building and falling back


@pytest.fixture
def fresh_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's kernel loader as at start-up (no build started, nothing said yet),
    with a cache of its own; the session's loader is put back afterwards."""
    monkeypatch.setattr(cpu, "_builds", {})
    monkeypatch.setattr(cpu, "_said", set())
    monkeypatch.setenv("CLION_HF_CACHE", str(tmp_path))
    cpu.selected_isa.cache_clear()
    yield tmp_path
    for build in cpu._builds.values():  # this test's builds only: ended, not left behind
        assert build.done.wait(60), f"the build for {build.name} is still running"
    cpu.selected_isa.cache_clear()


def _fake_compiler(tmp_path: Path, body: str) -> Path:
    """A C++ compiler that answers ``--version`` and does ``body`` when asked to build."""
    cxx = tmp_path / "fake-c++"
    cxx.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then echo "fake 1.0"; exit 0; fi\n'
                   f"{body}\n")  # fmt: skip
    cxx.chmod(0o755)
    return cxx


def _eager_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "run the eager path" in r.getMessage()]


def _cpu_param() -> torch.Tensor:
    p = torch.zeros(8, requires_grad=True)
    p.grad = torch.ones(8)
    return p


def test_a_hanging_compiler_delays_the_first_step_boundedly(
    fresh_loader: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Such a compiler used to block the first step for 2 x 600 s, then the step fell back
    # silently. Now the automatic choice waits CLION_HF_BUILD_WAIT once and trains on
    # the eager path meanwhile; the compiler is stopped after CLION_HF_BUILD_TIMEOUT.
    import threading
    import time

    from clion_hf import CLion
    from clion_hf.optim.functional import choose_impl

    pid = fresh_loader / "compiler.pid"
    cxx = _fake_compiler(fresh_loader, f'echo $$ > "{pid}"; exec sleep 60')
    for var, value in (("CXX", str(cxx)), ("CLION_HF_BUILD_WAIT", "0.5"),
                       ("CLION_HF_BUILD_TIMEOUT", "4")):  # fmt: skip
        monkeypatch.setenv(var, value)
    caplog.set_level("WARNING")
    p = _cpu_param()
    got: list[str] = []
    start = time.monotonic()
    first = threading.Thread(target=lambda: got.append(choose_impl([p])), daemon=True)
    first.start()
    first.join(30)
    assert not first.is_alive(), "the first step waits for a hanging compiler"
    assert got == ["single"] and time.monotonic() - start < 3  # the eager path, at once
    assert choose_impl([p]) == "single"  # no second wait
    (line,) = _eager_lines(caplog)  # said once
    assert "still being built after CLION_HF_BUILD_WAIT=0.5 s" in line
    opt = CLion([p], lr=0.1, mode="element")
    opt.step()  # trains meanwhile
    assert torch.equal(p.detach(), torch.full((8,), -0.1))
    # fused=True waits for the build: stopped at the timeout, with the reason.
    with pytest.raises(ValueError, match=r"did not finish within 4 s \(CLION_HF_BUILD_TIMEOUT\)"):
        CLion([p], fused=True)
    assert time.monotonic() - start < 15
    with pytest.raises(ProcessLookupError):  # stopped, not left running
        os.kill(int(pid.read_text()), 0)
    assert choose_impl([p]) == "single"
    lines = _eager_lines(caplog)
    assert len(lines) == 2 and "did not finish within 4 s" in lines[1]


def test_steps_switch_to_the_kernel_when_a_slow_build_ends(
    seeded: Path, fresh_loader: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    # A build slower than CLION_HF_BUILD_WAIT: the first steps run the eager path, later
    # ones the kernel, and the parameters are those of a run on either path throughout.
    # The slow "compiler" delivers this host's built library (no second real build).
    from clion_hf import CLion
    from clion_hf.optim.functional import choose_impl

    cxx = _fake_compiler(fresh_loader, f'for a; do out="$a"; done; sleep 2; cp "{seeded}" "$out"')
    monkeypatch.setenv("CXX", str(cxx))
    monkeypatch.setenv("CLION_HF_BUILD_WAIT", "0.2")
    caplog.set_level("WARNING")
    torch.manual_seed(0)
    grads = [torch.randn(300) for _ in range(4)]
    p, ref = torch.zeros(300, requires_grad=True), torch.zeros(300, requires_grad=True)
    opt = CLion([p], lr=0.1, mode="element", nu=0.5)
    eager = CLion([ref], lr=0.1, mode="element", nu=0.5, foreach=False)
    impls = []
    for i, g in enumerate(grads):
        if i == 2:
            assert cpu.available()  # wait for the build to end
        p.grad, ref.grad = g.clone(), g.clone()
        impls.append(choose_impl([p]))
        opt.step()
        eager.step()
        assert torch.equal(p, ref), i
    assert impls == ["single", "single", "fused", "fused"]
    assert len(_eager_lines(caplog)) == 1
    assert any("is built" in r.getMessage() and "from now on" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_a_read_only_cache_still_serves_its_valid_kernel(
    seeded: Path, fresh_loader: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    # The lock file cannot be created on a read-only file system (EROFS): the kernel
    # there used to be given up (eager path, silently). Root ignores a 0500 directory,
    # so the file system's answer is given to the lock's open() as it would come.
    import errno

    assert seeded.parent == fresh_loader / "kernels"
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):  # noqa: ANN001, ANN202
        if str(path).endswith(".lock") and flags & (os.O_CREAT | os.O_RDWR | os.O_WRONLY):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *args, **kwargs)

    before = sorted(seeded.parent.iterdir())
    seeded.parent.chmod(0o500)
    monkeypatch.setattr(os, "open", read_only_open)
    caplog.set_level("WARNING")
    try:
        lib, why = cpu._load()
    finally:
        seeded.parent.chmod(0o700)
    assert lib is not None and Path(lib._name) == seeded, why
    assert sorted(seeded.parent.iterdir()) == before  # nothing written there
    assert not _eager_lines(caplog) and "cannot be written" not in caplog.text


_STDERR = "/usr/bin/ld: final link failed: No space left on device\\n" \
          "collect2: error: ld returned 1 exit status"  # fmt: skip


@pytest.mark.parametrize(("case", "expected"), [
    ("full disk", "final link failed: No space left on device"),
    ("CXX=false", "'false' does not run: `--version` exited with status 1"),
    ("CLION_HF_CPU_ISA=bogus", "CLION_HF_CPU_ISA='bogus': this CPU runs"),
])  # fmt: skip
def test_the_eager_fallback_is_said_once_with_its_reason(
    fresh_loader: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    case: str, expected: str,
) -> None:  # fmt: skip
    # Each used to fall back to the eager path (several times slower) without a word.
    from clion_hf.optim.functional import choose_impl

    if case == "full disk":  # what g++ prints when the cache's disk is full
        cxx = _fake_compiler(fresh_loader, f'printf "{_STDERR}\\n" >&2; exit 1')
        monkeypatch.setenv("CXX", str(cxx))
    elif case == "CXX=false":
        monkeypatch.setenv("CXX", "false")
    else:
        monkeypatch.setenv("CLION_HF_CPU_ISA", "bogus")
    caplog.set_level("WARNING")
    p = _cpu_param()
    assert choose_impl([p]) == "single"
    assert choose_impl([p]) == "single"
    (line,) = _eager_lines(caplog)  # once, at WARNING
    assert expected in line, line
    assert all(r.levelname == "WARNING" for r in caplog.records if "eager path" in r.message)
