#!/usr/bin/env python
"""Per-step cost of CLion/Lion against torch AdamW on a small model, where Python dominates.

    PYTHONPATH=$PWD python benchmarks/step_overhead.py [--rounds 7] [--steps 200] [--threads 1]

A 2-layer GPT-2's parameter shapes (d=256, vocab 6400: 3.3M parameters in 28 tensors),
fp32 on CPU, fixed random gradients; ``--tiny``: 28 tensors of 16 elements, where a step
is its Python and dispatch alone. Every optimizer steps its own copy of the same
parameters; the optimizers take turns in each round (the order rotates between rounds), so
that a slow spell of a shared machine hits all of them alike. Each round times ``--steps``
steps per optimizer; the printed ratios are the medians over rounds of the per-round
ratios to torch AdamW ``fused=True``, ``foreach=True`` and this package's Lion.

Where the installed version still has the early stop of CLion's pass 1 (fused CPU path,
``kernels.stops_early``), ``clion-global-nostop`` times global mode with it switched off,
so both sides of that measurement come from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import torch

import clion_hf
from clion_hf import CLion, Lion

D, VOCAB, POSITIONS, LAYERS = 256, 6400, 128, 2


def shapes() -> list[tuple[int, ...]]:
    """GPT-2's parameter shapes (tied embedding once) for D, VOCAB, POSITIONS, LAYERS."""
    layer = [(D,), (D,), (D, 3 * D), (3 * D,), (D, D), (D,),  # ln_1, attn c_attn, c_proj
             (D,), (D,), (D, 4 * D), (4 * D,), (4 * D, D), (D,)]  # ln_2, mlp c_fc, c_proj
    return [(VOCAB, D), (POSITIONS, D)] + layer * LAYERS + [(D,), (D,)]


@contextlib.contextmanager
def no_early_stop() -> Iterator[None]:
    """Switch off pass 1's early stop of versions that have it (for the comparison)."""
    from clion_hf.optim import kernels

    before = kernels.stops_early
    kernels.stops_early = lambda device: False  # type: ignore[assignment]
    try:
        yield
    finally:
        kernels.stops_early = before  # type: ignore[assignment]


def candidates() -> dict[str, tuple[Callable[[list[torch.Tensor]], torch.optim.Optimizer],
                                    Callable[[], contextlib.AbstractContextManager]]]:  # fmt: skip
    lr, wd = 1e-4, 0.1
    plain = contextlib.nullcontext
    out = {
        "adamw-fused": (lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=wd, fused=True),
                        plain),
        "adamw-foreach": (lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=wd,
                                                       foreach=True), plain),
        "lion": (lambda ps: Lion(ps, lr=lr, weight_decay=wd), plain),
        "clion-global": (lambda ps: CLion(ps, lr=lr, weight_decay=wd), plain),
        "clion-element": (lambda ps: CLion(ps, lr=lr, weight_decay=wd, mode="element",
                                           nu=1e-5), plain),
    }  # fmt: skip
    from clion_hf.optim import kernels

    if hasattr(kernels, "stops_early"):
        out["clion-global-nostop"] = (out["clion-global"][0], no_early_stop)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tiny", action="store_true",
                    help="28 tensors of 16 elements: the per-step Python alone")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("clion_hf").setLevel(logging.ERROR)  # global mode's first-step warning
    torch.manual_seed(0)
    sizes = [(16,)] * len(shapes()) if args.tiny else shapes()
    base = [torch.randn(s) * 0.02 for s in sizes]
    grads = [torch.randn(s) * 1e-3 for s in sizes]
    cands = candidates()
    opts: dict[str, tuple[torch.optim.Optimizer, Callable[[], contextlib.AbstractContextManager]]]
    opts = {}
    for name, (make, ctx) in cands.items():
        ps = [b.clone().requires_grad_() for b in base]
        for p, g in zip(ps, grads, strict=True):
            p.grad = g.clone()
        opt = make(ps)
        with ctx():
            for _ in range(args.warmup):  # builds/loads the kernel, allocates state
                opt.step()
        opts[name] = (opt, ctx)
    names = list(opts)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            opt, ctx = opts[name]
            with ctx():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    opt.step()
                times[name].append((time.perf_counter() - t0) / args.steps)
    numel = sum(b.numel() for b in base)
    print(f"clion_hf {clion_hf.__file__}; torch {torch.__version__}; {numel / 1e6:.6g}M "
          f"parameters in {len(base)} tensors, fp32, CPU, {args.threads} thread(s); "
          f"{args.rounds} interleaved rounds x {args.steps} steps; medians of per-round "
          "ratios")  # fmt: skip
    refs = [n for n in ("adamw-fused", "adamw-foreach", "lion") if n in times]
    print(f"{'optimizer':<22}{'median ms/step':>15}" + "".join(f"{'/ ' + n:>17}" for n in refs))
    for name in names:
        row = f"{name:<22}{1e3 * statistics.median(times[name]):>15.3f}"
        for ref in refs:
            ratios = [a / b for a, b in zip(times[name], times[ref], strict=True)]
            row += f"{statistics.median(ratios):>17.3f}"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
