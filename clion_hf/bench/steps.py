"""``clion-bench steps``: time one optimizer step on real model parameter shapes.

    python -m clion_hf.bench.steps --models gpt2 --repeats 7 --out steps.md

Shapes come from the Hugging Face configs of GPT-2-small, BERT-base and ViT-B/16 (models
built on the ``meta`` device, so nothing is downloaded or allocated), then real tensors are
allocated. Every optimizer steps the same parameters and gradients; steps are timed in
rounds (each optimizer once per round) so that a slow spell of a shared machine hits all
of them alike, and the ratios to torch AdamW ``fused=True`` and to lion-pytorch's foreach
Lion are medians of the per-round ratios.

The byte floor is the bytes an optimizer must move per step (p, g, state read; p, state
written; CLion global/tensor read g and m once more) over the copy bandwidth measured at
the start of the run. For CLion global/tensor it assumes the full reduction pass, which
the fused CPU path stops early once an ``abs(c)`` below nu is found: the note gives the
fraction of coordinates that took the sign branch (0%: the early exit), and the
``-fused-sign`` rows force the full pass with nu=1e-30. "compile" is the first step's
time (construction included) minus a median step: the one-off cost of compiled paths
(clion_hf's C++ kernel on CPU, Triton on CUDA).

``--isa`` (CPU) times the fused kernel of every instruction set this host runs
(``x86-64``, ``x86-64-v3``, ``x86-64-v4``, ``armv8-a``; see
:mod:`clion_hf.optim.kernels.cpu`) in nanoseconds per element, each mode against the
eager (foreach) path and torch AdamW, in interleaved rounds. ``CLION_HF_CPU_ISA`` picks
the kernel of the ordinary table.

Hand-written: ``torch.utils.benchmark`` times one statement at a time; the interleaved
rounds across optimizers, the per-round ratios and the byte floor are what this adds.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clion_hf._files import atomic_write_text, probe_writable

from .argtypes import OneLineParser, positive_int
from .progress import duration_text, quiet_optimizer_warnings
from .render import csv_text, host_facts, records_table
from .stats import ratio_interval

MODELS = ("gpt2", "bert", "vit", "tiny", "llama1b-1layer")
DEFAULT_MODELS = "gpt2,bert,vit"


def model_shapes(name: str) -> list[tuple[int, ...]]:
    """Parameter shapes (tied weights once) of a model built from its transformers config."""
    import transformers as tf

    configs: dict[str, Callable[[], Any]] = {
        # The library defaults of these configs are the published base models.
        "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config()),  # GPT-2 small, 124M
        "bert": lambda: tf.BertForMaskedLM(tf.BertConfig()),  # bert-base-uncased, 110M
        # ViT-B/16 at 224 px with the 1000-class ImageNet head, 86.6M
        "vit": lambda: tf.ViTForImageClassification(tf.ViTConfig(num_labels=1000)),
        # Llama-3.2-1B's tensor shapes (vocab 128256, hidden 2048, MLP 8192, 32/8 heads,
        # tied embedding) with 1 of its 16 decoder layers: 323M parameters, the largest
        # 1B-shaped step whose AdamW + Lion + CLion states fit in ~8 GB (CPU offload).
        "llama1b-1layer": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(
            vocab_size=128256, hidden_size=2048, intermediate_size=8192,
            num_hidden_layers=1, num_attention_heads=32, num_key_value_heads=8,
            tie_word_embeddings=True)),  # fmt: skip
        "tiny": lambda: tf.GPT2LMHeadModel(
            tf.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=64)
        ),
    }
    if name not in configs:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    with torch.device("meta"):
        model = configs[name]()
    return [tuple(p.shape) for p in model.parameters()]


@dataclass
class Candidate:
    """One optimizer implementation in the table."""

    name: str
    impl: str
    make: Callable[[list[torch.Tensor]], torch.optim.Optimizer] | None
    bytes_per_elem: Callable[[int, int], float]  # (param bytes, state bytes) -> bytes/elem
    note: str = ""
    times: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # to torch AdamW fused, per round
    peer_ratios: list[float] = field(default_factory=list)  # to lion-pytorch foreach
    first: float = float("nan")
    state: int = 0
    opt: torch.optim.Optimizer | None = None


def _lion_bytes(ps: int, ms: int) -> float:
    return 2 * ps + ps + 2 * ms  # p read+write, g read, m read+write


def _two_pass_bytes(ps: int, ms: int) -> float:
    return _lion_bytes(ps, ms) + ps + ms  # + the reduction pass reading g and m


def _adamw_bytes(ps: int, ms: int) -> float:
    return 2 * ps + ps + 4 * ps  # torch AdamW keeps exp_avg and exp_avg_sq in p's dtype


OPTIMIZERS = (
    "adamw-foreach", "adamw-fused", "lion-pytorch-foreach", "lion-pytorch-triton",
    "timm-lion", "deepspeed-cpu-lion", "lion-foreach", "lion-fused", "clion-global-foreach",
    "clion-global-fused",
    "clion-global-fused-sign", "clion-tensor-foreach", "clion-tensor-fused",
    "clion-tensor-fused-sign", "clion-element-foreach",
    "clion-element-fused", "clion-soft-foreach", "clion-soft-fused",
)  # fmt: skip


def candidates(device: str, momentum_dtype: torch.dtype | None) -> list[Candidate]:
    """Every implementation, ``make=None`` (with a note) where it cannot run here."""
    from clion_hf import CLion, Lion

    lr, wd = 1e-4, 0.1
    out = [
        Candidate("adamw-foreach", "torch", lambda ps: torch.optim.AdamW(
            ps, lr=lr, weight_decay=wd, foreach=True), _adamw_bytes),
        Candidate("adamw-fused", "torch", lambda ps: torch.optim.AdamW(
            ps, lr=lr, weight_decay=wd, fused=True), _adamw_bytes),
    ]  # fmt: skip
    try:
        from lion_pytorch import Lion as LionPT
        from lion_pytorch.foreach import Lion as LionPTForeach

        out.append(Candidate("lion-pytorch-foreach", "lion-pytorch", lambda ps: LionPTForeach(
            ps, lr=lr, weight_decay=wd), _lion_bytes))  # fmt: skip
        if device == "cuda":
            out.append(Candidate("lion-pytorch-triton", "lion-pytorch", lambda ps: LionPT(
                ps, lr=lr, weight_decay=wd, use_triton=True), _lion_bytes))  # fmt: skip
        else:
            out.append(Candidate("lion-pytorch-triton", "lion-pytorch", None, _lion_bytes,
                                 "CUDA only"))  # fmt: skip
    except ImportError:
        for n in ("lion-pytorch-foreach", "lion-pytorch-triton"):
            out.append(Candidate(n, "lion-pytorch", None, _lion_bytes, "not installed"))
    try:
        from timm.optim import Lion as TimmLion

        out.append(Candidate("timm-lion", "timm", lambda ps: TimmLion(
            ps, lr=lr, weight_decay=wd, foreach=True), _lion_bytes))  # fmt: skip
    except Exception:  # ImportError, or a timm that fails to import against this torch
        out.append(Candidate("timm-lion", "timm", None, _lion_bytes, "not installed"))
    if device == "cpu":
        # DeepSpeed's CPU Lion (explicit SIMD, the ZeRO-Offload optimizer): its op is
        # JIT-built on first use (~100 s on 2 cores; the compile column shows it).
        try:
            from deepspeed.ops.lion import DeepSpeedCPULion

            out.append(Candidate("deepspeed-cpu-lion", "deepspeed", lambda ps: DeepSpeedCPULion(
                ps, lr=lr, betas=(0.9, 0.99), weight_decay=wd), _lion_bytes))  # fmt: skip
        except Exception:  # ImportError, or a deepspeed that fails to import here
            out.append(Candidate("deepspeed-cpu-lion", "deepspeed", None, _lion_bytes,
                                 "not installed"))  # fmt: skip
    mk = dict(momentum_dtype=momentum_dtype)
    for fused in (False, True):
        tag = "fused" if fused else "foreach"
        kw: dict[str, Any] = dict(fused=True) if fused else dict(foreach=True, fused=False)
        out.append(Candidate(f"lion-{tag}", "clion_hf", lambda ps, kw=kw: Lion(
            ps, lr=lr, weight_decay=wd, **kw, **mk), _lion_bytes))  # fmt: skip
    for mode in ("global", "tensor", "element", "soft"):
        nbytes = _two_pass_bytes if mode in ("global", "tensor") else _lion_bytes
        for fused in (False, True):
            tag = "fused" if fused else "foreach"
            kw = dict(fused=True) if fused else dict(foreach=True, fused=False)
            out.append(Candidate(
                f"clion-{mode}-{tag}", "clion_hf", lambda ps, kw=kw, mode=mode: CLion(
                    ps, lr=lr, weight_decay=wd, mode=mode, nu=1e-5, **kw, **mk),
                nbytes))  # fmt: skip
        if mode in ("global", "tensor"):
            # nu so small that every tensor takes the sign branch: the reduction pass
            # cannot stop early and reads all of g and m (the worst case).
            out.append(Candidate(
                f"clion-{mode}-fused-sign", "clion_hf", lambda ps, mode=mode: CLion(
                    ps, lr=lr, weight_decay=wd, mode=mode, nu=1e-30, fused=True, **mk),
                nbytes, "nu=1e-30"))  # fmt: skip
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: str, n: int = 64 * 2**20, repeats: int = 10) -> float:
    """Measured copy bandwidth in bytes/s (read + write), fp32, median of ``repeats``."""
    a = torch.randn(n, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    ts = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        b.copy_(a)
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return 2 * a.numel() * a.element_size() / statistics.median(ts)


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        t.numel() * t.element_size()
        for s in opt.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor) and t.dim() > 0  # not AdamW's 0-d step counters
    )


def _timed_step(opt: torch.optim.Optimizer, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    opt.step()
    _sync(device)
    return time.perf_counter() - t0


def _params(model: str, device: str, dtype: torch.dtype) -> list[torch.nn.Parameter]:
    """``model``'s parameter shapes, filled (with gradients) from a fixed seed."""
    gen = torch.Generator().manual_seed(0)
    params = []
    for s in model_shapes(model):
        p = torch.nn.Parameter((torch.randn(s, generator=gen) * 0.02).to(device, dtype))
        p.grad = (torch.randn(s, generator=gen) * 1e-3).to(device, dtype)
        params.append(p)
    return params


def bench_model(
    model: str, cands: list[Candidate], *, device: str, dtype: torch.dtype, repeats: int,
    log: Callable[[str], None],
) -> int:  # fmt: skip
    """Time every runnable candidate on ``model``'s shapes; returns the element count."""
    params = _params(model, device, dtype)
    numel = sum(p.numel() for p in params)
    log(f"{model}: {len(params)} tensors, {numel / 1e6:.1f}M parameters")
    runnable = [c for c in cands if c.make is not None]
    for c in runnable:
        # Construction counts into the first step: fused=True builds its kernel there.
        _sync(device)
        t0 = time.perf_counter()
        c.opt = c.make(params)
        c.first = time.perf_counter() - t0 + _timed_step(c.opt, device)  # allocates state
        c.state = _state_bytes(c.opt)
        log(f"  {c.name}: first step {c.first * 1e3:.0f} ms")
    ref = next((c for c in runnable if c.name == "adamw-fused"), None)
    peer = next((c for c in runnable if c.name == "lion-pytorch-foreach"), None)
    for _ in range(repeats):
        for c in runnable:
            c.times.append(_timed_step(c.opt, device))
        for c in runnable:
            if ref is not None:
                c.ratios.append(c.times[-1] / ref.times[-1])
            if peer is not None:
                c.peer_ratios.append(c.times[-1] / peer.times[-1])
    for c in runnable:
        stats = getattr(c.opt, "last_step_stats", None)
        if stats is not None:  # CLion: how often the sign branch was taken decides its cost
            frac = f"sign branch {stats()['sign_fraction']:.0%}"
            c.note = f"{c.note}; {frac}" if c.note else frac
        c.opt = None  # free the state before the next model
    return numel


ISA_MODES = ("lion", "clion-global", "clion-tensor", "clion-element", "clion-soft")


def isa_table(model: str, *, dtype: torch.dtype, repeats: int,
              log: Callable[[str], None]) -> tuple[int, list[dict[str, str]]]:  # fmt: skip
    """ns/element of each mode's fused kernel per target this CPU runs, against the eager
    (foreach) path and torch AdamW foreach/fused, in interleaved rounds."""
    from clion_hf import CLion, Lion
    from clion_hf.optim.kernels import cpu

    lr, wd = 1e-4, 0.1

    def make(mode: str, **kw: Any) -> Callable[[list[torch.Tensor]], torch.optim.Optimizer]:
        if mode == "lion":
            return lambda ps: Lion(ps, lr=lr, weight_decay=wd, **kw)
        return lambda ps: CLion(ps, lr=lr, weight_decay=wd, mode=mode[6:], nu=1e-5, **kw)

    runs: list[tuple[str, str, Callable[..., torch.optim.Optimizer], str | None]] = [
        ("torch", "adamw-fused", lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=wd,
                                                              fused=True), None),
        ("torch", "adamw-foreach", lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=wd,
                                                                foreach=True), None),
    ]  # fmt: skip
    runs += [("eager", m, make(m, foreach=True, fused=False), None) for m in ISA_MODES]
    for isa in cpu.host_isas():
        runs += [(isa, m, make(m, fused=True), isa) for m in ISA_MODES]
    params = _params(model, "cpu", dtype)
    numel = sum(p.numel() for p in params)
    log(f"{model}: {numel / 1e6:.1f}M parameters; targets {', '.join(cpu.host_isas())}")

    def step(opt: torch.optim.Optimizer, isa: str | None) -> float:
        with cpu.use_isa(isa) if isa else contextlib.nullcontext():
            return _timed_step(opt, "cpu")

    opts = []
    for _impl, _mode, mk, isa in runs:
        opt = mk(params)
        step(opt, isa)  # builds the kernel of the target, allocates the state
        opts.append(opt)
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for i, (opt, run) in enumerate(zip(opts, runs, strict=True)):
            times[i].append(step(opt, run[3]))
    ref = times[0]
    table = []
    for (impl, mode, _, _), ts, opt in zip(runs, times, opts, strict=True):
        ratio = statistics.median(t / r for t, r in zip(ts, ref, strict=True))
        stats = getattr(opt, "last_step_stats", None)
        note = f"sign branch {stats()['sign_fraction']:.0%}" if stats is not None else ""
        table.append(dict(target=impl, optimizer=mode, ns_per_elem=_fmt(
            statistics.median(ts) / numel * 1e9, ".3f"), vs_adamw_fused=_fmt(ratio, ".2f"),
            note=note))  # fmt: skip
    return numel, table


# For the duration estimate printed before a run: step time over the byte floor (measured
# in docs/benchmarks/steps-cpu-native-2026-11-29.md, 2 vCPU: eager/foreach paths reached
# 0.28..0.35 of the floor, fused ones 1.4..2.2, i.e. beat the copy-bandwidth floor thanks to
# caches) and the cold build of clion_hf's CPU kernel (20 s quiet .. 50 s on a loaded 2-core
# host) and of DeepSpeed's CPU Lion (~100 s).
_FLOOR_FRACTION = {"fused": (2.2, 1.4), "other": (0.35, 0.28)}
_BUILD_S = {"clion_hf": (20.0, 50.0), "deepspeed": (100.0, 100.0)}


def estimate_seconds(models: list[str], cands: list[Candidate], *, bw: float,
                     dtype: torch.dtype, momentum_dtype: torch.dtype | None, repeats: int,
                     cold: bool, isas: int = 1) -> tuple[float, float]:  # fmt: skip
    """(low, high) wall seconds of the run on a quiet host, from the byte floor at the
    measured bandwidth (a busy host can take several times longer)."""
    ps = torch.empty((), dtype=dtype).element_size()
    ms = torch.empty((), dtype=momentum_dtype or torch.float32).element_size()
    low = high = 0.0
    for model in models:
        numel = sum(math.prod(s) for s in model_shapes(model))
        low, high = low + 1.0, high + 5.0  # the model's shapes, allocation, freeing
        low += 2 * numel / 1.5e8  # drawing the parameters and gradients (randn)
        high += 2 * numel / 0.4e8
        for c in cands:
            if c.make is None:
                continue
            kind = "fused" if ("fused" in c.name or c.impl == "deepspeed") else "other"
            state_ps = ps if c.impl != "clion_hf" else ms
            floor = c.bytes_per_elem(ps, state_ps) * numel / bw
            fast, slow = _FLOOR_FRACTION[kind]
            # + 1: the first step, which also allocates (and first touches) the state
            low += (repeats + 2) * floor / fast
            high += (repeats + 2) * floor / slow
    if cold:
        for impl, (b_low, b_high) in _BUILD_S.items():
            if any(c.make is not None and c.impl == impl and "foreach" not in c.name
                   for c in cands):  # fmt: skip
                n = isas if impl == "clion_hf" else 1
                low, high = low + n * b_low, high + n * b_high
    return low, high


ISA_HEADERS = {"target": "target", "optimizer": "optimizer", "ns_per_elem": "ns/element",
               "vs_adamw_fused": "× AdamW fused", "note": "note"}  # fmt: skip


def _fmt(x: float, spec: str) -> str:
    return "–" if x != x else format(x, spec)  # NaN -> dash


def rows(model: str, numel: int, cands: list[Candidate], bw: float, dtype: torch.dtype,
         momentum_dtype: torch.dtype | None) -> list[dict[str, str]]:  # fmt: skip
    ps = torch.empty((), dtype=dtype).element_size()
    ms = torch.empty((), dtype=momentum_dtype or torch.float32).element_size()
    out = []
    for c in cands:
        state_ps = ps if c.name.startswith(("adamw", "lion-pytorch", "timm", "deepspeed")) else ms
        floor = c.bytes_per_elem(ps, state_ps) * numel / bw
        if c.make is None:
            out.append(dict(
                model=model, optimizer=c.name, impl=c.impl, median_ms="–",
                vs_adamw_fused="–", vs_adamw_fused_ci="–", vs_lion_pytorch="–",
                floor_ms=_fmt(floor * 1e3, ".1f"),
                floor_fraction="–",
                state_mb="–", compile_s="–", note=c.note,
            ))  # fmt: skip
            continue
        med = statistics.median(c.times)
        ratio, low, high = ratio_interval(c.ratios) if c.ratios else (float("nan"),) * 3
        peer_ratio = statistics.median(c.peer_ratios) if c.peer_ratios else float("nan")
        compile_s = max(c.first - med, 0.0)
        out.append(dict(
            model=model, optimizer=c.name, impl=c.impl, median_ms=_fmt(med * 1e3, ".1f"),
            vs_adamw_fused=_fmt(ratio, ".2f"),
            vs_adamw_fused_ci="–" if low != low else f"[{low:.2f}, {high:.2f}]",
            vs_lion_pytorch=_fmt(peer_ratio, ".2f"), floor_ms=_fmt(floor * 1e3, ".1f"),
            floor_fraction=_fmt(floor / med, ".2f"), state_mb=_fmt(c.state / 2**20, ".0f"),
            compile_s=_fmt(compile_s, ".1f") if any(
                k in c.name for k in ("fused", "triton", "deepspeed")) else "–",
            note=c.note,
        ))  # fmt: skip
    return out


HEADERS = {
    "model": "model", "optimizer": "optimizer", "impl": "from", "median_ms": "median ms",
    "vs_adamw_fused": "× AdamW fused",
    "vs_adamw_fused_ci": "95% interval",  # of the per-round ratios' mean, on a log scale
    "vs_lion_pytorch": "× lion-pytorch foreach",
    "floor_ms": "byte floor ms",
    "floor_fraction": "floor / time", "state_mb": "state MiB", "compile_s": "compile s",
    "note": "note",
}  # fmt: skip


FACTS = ("when", "device", "target", "rounds", "load_before", "load_after")
"""The run's facts, in every row of the CSV (what :mod:`.steps_readme` cites)."""


def markdown(table: list[dict[str, str]], headers: dict[str, str] = HEADERS) -> str:
    return records_table(table, headers)


def table_csv(table: list[dict[str, str]], headers: dict[str, str],
              facts: dict[str, str]) -> str:  # fmt: skip
    """The table as CSV, one row per (model, optimizer), the run's :data:`FACTS` in each."""
    return csv_text(({**r, **facts} for r in table), [*headers, *FACTS])


def _load() -> str:
    """The 1-minute load average now ("n/a" where /proc/loadavg is missing)."""
    return host_facts()["load"].split()[0]


def run_facts(device: str, repeats: int, load_before: str) -> dict[str, str]:
    target = ""
    if device == "cpu":
        from clion_hf.optim.kernels import cpu

        with contextlib.suppress(ValueError):
            target = cpu.selected_isa()
    return {"when": host_facts()["now"], "device": device, "target": target,
            "rounds": str(repeats), "load_before": load_before, "load_after": _load()}


def environment(device: str, bw: float, dtype: torch.dtype, repeats: int) -> str:
    try:
        import triton

        tv = triton.__version__
    except Exception:
        tv = "not installed"
    host = host_facts()
    if device == "cuda":
        dev = torch.cuda.get_device_name()
    else:
        dev = f"{host['cpu']}, {host['threads']} threads"
    if device == "cpu":
        from clion_hf.optim.kernels import cpu

        try:
            isa = cpu.selected_isa()
        except ValueError as e:
            isa = str(e)
        dev += f"; clion_hf kernel target {isa} (torch capability " \
               f"{torch.backends.cpu.get_cpu_capability()})"
    return (f"{host['now']}; {device}: {dev}; torch {host['torch']}, triton {tv}, python "
            f"{host['python']}; dtype {str(dtype).replace('torch.', '')}; "
            f"median of {repeats} rounds; measured copy bandwidth {bw / 1e9:.1f} GB/s; "
            f"OMP_WAIT_POLICY={host['omp']}")  # fmt: skip


def _dtype(text: str) -> torch.dtype:
    allowed = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
               "bf16": torch.bfloat16}  # fmt: skip
    if text not in allowed:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed are float32, bfloat16")
    return allowed[text]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``steps`` options (shared by ``clion-bench steps`` and ``python -m``)."""
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help=f"comma list of {', '.join(MODELS)} (default: {DEFAULT_MODELS})")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="timed rounds after the first step (default: 5)")
    parser.add_argument("--dtype", type=_dtype, default=torch.float32,
                        help="parameter and gradient dtype: float32 or bfloat16")
    parser.add_argument("--momentum_dtype", type=_dtype, default=None,
                        help="momentum dtype of our optimizers (default: fp32)")
    parser.add_argument("--optimizers", default="all",
                        help=f"comma list (default: all): {', '.join(OPTIMIZERS)}")
    parser.add_argument("--out", help="also write the table here (markdown) and, next to it "
                        "with the suffix .csv, as CSV with the run's facts; a .csv --out "
                        "writes the CSV alone")  # fmt: skip
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch/OpenMP threads (default: torch's); 1 is the least "
                             "disturbed on a shared machine")  # fmt: skip
    parser.add_argument("--isa", action="store_true",
                        help="CPU: ns/element of the fused kernel of every instruction "
                             "set this host runs, against eager and torch AdamW")  # fmt: skip
    parser.add_argument("--warm_cache", action="store_true",
                        help="reuse the on-disk caches of clion_hf's CPU kernel and of "
                             "Triton (default: fresh ones, so the compile column is the cold "
                             "one-off cost)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; print the table (and write ``--out``). Returns the exit status."""
    device = args.device
    if device not in ("cpu", "cuda"):
        print(f"steps: error: --device {device!r}: allowed are cpu, cuda", file=sys.stderr)
        return 2
    if device == "cuda" and not torch.cuda.is_available():
        print("steps: error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    wanted = None if args.optimizers == "all" else [o.strip() for o in args.optimizers.split(",")]
    bad += [o for o in wanted or [] if o not in OPTIMIZERS]
    if bad or not models:
        print(f"steps: error: unknown models/optimizers {bad}; models: {', '.join(MODELS)}; "
              f"optimizers: {', '.join(OPTIMIZERS)}", file=sys.stderr)  # fmt: skip
        return 2
    if args.isa and device != "cpu":
        print("steps: error: --isa times the CPU kernel: use it with --device cpu",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.out:
        # before minutes of timing: a read-only or full disk is said now, in one line
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            probe_writable(Path(args.out).parent)
        except OSError as err:
            print(f"steps: error: --out {args.out} is not writable: {err.strerror or err}",
                  file=sys.stderr)  # fmt: skip
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    with contextlib.ExitStack() as stack:
        if not args.warm_cache:
            # Fresh caches (clion_hf's built CPU kernel, Triton's kernels): the compile
            # column is then the honest first-run cost. Removed at the end.
            for var, prefix in (("CLION_HF_CACHE", "clion-bench-cache-"),
                                ("TRITON_CACHE_DIR", "clion-bench-triton-")):  # fmt: skip
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix))
                stack.enter_context(_env(var, tmp))
        # The table's note gives each CLion's sign-branch fraction; the optimizers' own
        # first-step warning about global mode would only repeat it for every model.
        stack.enter_context(quiet_optimizer_warnings())
        return _run(args, device, models, wanted)


@contextlib.contextmanager
def _env(var: str, value: str) -> Any:
    before = os.environ.get(var)
    os.environ[var] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = before


def _run(args: argparse.Namespace, device: str, models: list[str],
         wanted: list[str] | None) -> int:  # fmt: skip
    if device == "cpu" and "OMP_WAIT_POLICY" not in os.environ:
        print("steps: note: OMP_WAIT_POLICY is unset; on some VMs OpenMP's default spinning "
              "makes parallel regions stall for a scheduler tick (~4-8 ms each). Compare with "
              "OMP_WAIT_POLICY=PASSIVE.", file=sys.stderr)  # fmt: skip

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    load_before = _load()
    bw = copy_bandwidth(device)
    if args.isa:
        from clion_hf.optim.kernels import cpu

        isas = cpu.host_isas()
        every = candidates(device, None)
        eager = [c for c in every if c.impl == "clion_hf" and c.name.endswith("-foreach")]
        fused = [c for c in every if c.impl == "clion_hf" and c.name.endswith("-fused")]
        cands = [c for c in every if c.name in ("adamw-fused", "adamw-foreach")]
        cands += eager + fused * len(isas)  # the runs of isa_table
        low, high = estimate_seconds(models[:1], cands, bw=bw, dtype=args.dtype,
                                     momentum_dtype=None, repeats=args.repeats,
                                     cold=not args.warm_cache, isas=len(isas))  # fmt: skip
        log(f"steps: estimated duration {duration_text(low, high)} if the host is quiet "
            f"({models[0]}, {len(isas)} kernel targets, {args.repeats} rounds)")  # fmt: skip
        numel, isa_rows = isa_table(models[0], dtype=args.dtype, repeats=args.repeats, log=log)
        env = environment(device, bw, args.dtype, args.repeats)
        text = (f"{env}\n\nns/element of one step on {models[0]}'s shapes ({numel / 1e6:.1f}M "
                f"elements); ratios are medians of per-round ratios\n\n"
                f"{markdown(isa_rows, ISA_HEADERS)}\n")  # fmt: skip
        print(text)
        facts = run_facts(device, args.repeats, load_before)
        return _write_outs(args.out, text, table_csv(isa_rows, ISA_HEADERS, facts))
    table: list[dict[str, str]] = []
    planned = [c for c in candidates(device, args.momentum_dtype)
               if wanted is None or c.name in wanted]  # fmt: skip
    low, high = estimate_seconds(models, planned, bw=bw, dtype=args.dtype,
                                 momentum_dtype=args.momentum_dtype, repeats=args.repeats,
                                 cold=not args.warm_cache)  # fmt: skip
    log(f"steps: estimated duration {duration_text(low, high)} if the host is quiet "
        f"({len(models)} model(s) x "
        f"{sum(c.make is not None for c in planned)} optimizers x {args.repeats + 1} steps"
        f"{'' if args.warm_cache else ', kernels built fresh (--warm_cache reuses them)'})")
    for model in models:
        cands = [c for c in candidates(device, args.momentum_dtype)
                 if wanted is None or c.name in wanted]  # fmt: skip
        numel = bench_model(model, cands, device=device, dtype=args.dtype,
                            repeats=args.repeats, log=log)  # fmt: skip
        table += rows(model, numel, cands, bw, args.dtype, args.momentum_dtype)
    env = environment(device, bw, args.dtype, args.repeats)
    text = f"{env}\n\n{markdown(table)}\n"
    print(text)
    facts = run_facts(device, args.repeats, load_before)
    return _write_outs(args.out, text, table_csv(table, HEADERS, facts))


def _write_outs(out: str | None, text: str, csv_text: str) -> int:
    """``--out`` (the markdown) and the CSV next to it; only the CSV for a ``.csv`` --out."""
    if not out:
        return 0
    code = 0 if out.endswith(".csv") else _write_out(out, text)
    return code or _write_out(str(Path(out).with_suffix(".csv")), csv_text)


def _write_out(out: str, text: str) -> int:
    """Write ``--out``; if that fails (the disk filled up while timing), keep the results:
    they are on stdout already, and go to a file in the temporary directory if one can be
    written. One line on stderr, exit status 1."""
    try:
        atomic_write_text(Path(out), text)
        return 0
    except OSError as err:
        reason = err.strerror or str(err)
    kept = "they are printed above"
    spare = Path(tempfile.gettempdir()) / f"clion-bench-steps-{os.getpid()}{Path(out).suffix}"
    with contextlib.suppress(OSError):  # often the same full disk: then stdout it is
        atomic_write_text(spare, text)
        kept += f" and saved in {spare}"
    print(f"steps: error: cannot write --out {out}: {reason}; the timing results are kept: "
          f"{kept}", file=sys.stderr)  # fmt: skip
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m clion_hf.bench.steps",
                           description=__doc__.split("\n\n")[0])  # fmt: skip
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
