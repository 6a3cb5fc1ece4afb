"""``clion-bench throughput``: samples/s of whole Trainer steps, per ``--optim``, interleaved.

    clion-bench throughput --model gpt2 --size base --rounds 5 --out throughput.md

Where ``clion-bench steps`` times ``optimizer.step()`` alone, this times what a user of a
recipe waits for: transformers' ``Trainer`` running forward, backward, gradient clipping,
the optimizer step, the scheduler and the data loader, for ``adamw_torch_fused``,
``lion``, ``clion`` (``mode=element``) and ``clion`` (``mode=global``). The model is a
recipe's model preset (``--size tiny``: the offline recipes' model; ``base``: GPT-2 small
124M / BERT-base / ViT-B/16 from their configs, nothing downloaded), fed **synthetic
inputs** (random token ids / pixels of the recipe's shapes: throughput does not depend on
the values).

Every optimizer trains the same initial weights in every round, for ``--warmup`` untimed
steps and then ``--steps`` timed ones (the time between the end of the last warm-up step
and the end of the last step, so data loading and logging count). Within a round the
optimizers take turns, in an order rotated from round to round, so that a slow spell of a
shared machine hits them alike. The ratio to ``adamw_torch_fused`` is computed per round;
the table gives the median and a 95% interval (t interval of the per-round log ratios)
and says "no difference detected" when that interval contains 1.

Hand-written: transformers' Trainer reports samples/s per run, not interleaved rounds
across optimizers on the same weights; this drives the Trainer and keeps its numbers.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .progress import duration_text, quiet_optimizer_warnings
from .render import host_facts, table
from .stats import ratio_interval

FAMILIES = ("gpt2", "bert", "vit")
SIZES = ("tiny", "base")

# (label, --optim, --optim_args); the first is the reference of the ratios
OPTIMS: tuple[tuple[str, str, str], ...] = (
    ("adamw_torch_fused", "adamw_torch_fused", ""),
    ("lion", "lion", ""),
    ("clion element", "clion", "mode=element,nu=1e-4"),
    ("clion global", "clion", "mode=global,nu=1e-4"),
)
DEFAULT_OPTIMIZERS = "adamw_torch_fused,lion,clion:mode=element,nu=1e-4,clion:mode=global,nu=1e-4"
GOAL = 0.98  # samples/s relative to adamw_torch_fused (issue: end-to-end Trainer throughput)
TRAINER_START_S = (1.0, 3.0)
"""Seconds a Trainer takes to start and finish a run besides its steps (the estimate's)."""
STEP_OVER_FORWARD_BACKWARD = (1.3, 3.0)
"""A whole Trainer step over one forward+backward (the optimizer, clipping, the data
loader): the estimate's range; 2.8 measured on a 2-core host under a load average of 10."""


class OptimizersError(ValueError):
    """A bad ``--optimizers`` value; the message is one line."""


def parse_optimizers(text: str) -> list[tuple[str, str, str]]:
    """``--optimizers``: (label, --optim, --optim_args) per optimizer; the first is the
    reference of the ratios.

    A comma list of transformers ``--optim`` names, each optionally ``:KEY=VALUE,...``
    (its ``--optim_args``): ``adamw_torch_fused,clion:mode=element,nu=1e-5,lion``. A comma
    starts a new optimizer unless what follows is ``KEY=VALUE`` without a ``:``.
    """
    from transformers.training_args import OptimizerNames

    from ..integrations.transformers import OPTIMIZERS as OURS
    from ..integrations.transformers import OptimArgsError, parse_optim_args

    pieces: list[str] = []
    for item in (x.strip() for x in text.replace(";", ",").split(",")):
        if pieces and "=" in item and ":" not in item:
            pieces[-1] += "," + item
        elif item:
            pieces.append(item)
    names = [m.value for m in OptimizerNames]
    known = {(optim, args): label for label, optim, args in OPTIMS}
    out: list[tuple[str, str, str]] = []
    for piece in pieces:
        optim, _, optim_args = (x.strip() for x in piece.partition(":"))
        if optim not in names:
            raise OptimizersError(f"--optimizers: unknown optimizer {optim!r}; allowed: any "
                                  f"transformers --optim name: {', '.join(names)}")  # fmt: skip
        if optim in OURS:
            try:
                parse_optim_args(optim, optim_args)
            except OptimArgsError as err:
                raise OptimizersError(f"--optimizers: {err}") from None
        out.append((known.get((optim, optim_args), piece), optim, optim_args))
    if not out:
        raise OptimizersError(f"--optimizers: no optimizer in {text!r}")
    labels = [label for label, _, _ in out]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise OptimizersError(f"--optimizers: given twice: {', '.join(dupes)}")
    return out


def verdict(low: float, high: float) -> str:
    """What the interval says about the ratio."""
    if math.isnan(low):
        return "one round: no interval"
    if low <= 1.0 <= high:
        words = "no difference detected"
    else:
        words = "faster" if low > 1.0 else "slower"
    if low >= GOAL:
        return f"{words}; meets the >= {GOAL}x goal"
    if high < GOAL:
        return f"{words}; below the {GOAL}x goal"
    return f"{words}; the {GOAL}x goal neither shown nor ruled out"


# --------------------------------------------------------------------------- workload


def build_model(family: str, size: str) -> torch.nn.Module:
    """The recipe's model preset (``tiny``) or the full-size config (``base``)."""
    import transformers as tf

    from ..workloads.models import ONLINE_PRESET, TINY_PRESET, load_config

    preset = (TINY_PRESET if size == "tiny" else ONLINE_PRESET)[family]
    if family == "vit":
        config = load_config(preset, num_labels=10 if size == "tiny" else 1000)
        return tf.AutoModelForImageClassification.from_config(config)
    config = load_config(preset)
    auto = tf.AutoModelForCausalLM if family == "gpt2" else tf.AutoModelForMaskedLM
    return auto.from_config(config)


class SyntheticBatches(torch.utils.data.Dataset):
    """Synthetic examples of the recipe's shapes (random values; for timing only)."""

    def __init__(self, model: torch.nn.Module, family: str, n: int, block: int) -> None:
        g = torch.Generator().manual_seed(0)
        config = model.config
        self.items: list[dict[str, torch.Tensor]] = []
        for _ in range(n):
            if family == "vit":
                size = config.image_size
                pixels = torch.randn(config.num_channels, size, size, generator=g)
                label = torch.randint(0, config.num_labels, (), generator=g)
                self.items.append({"pixel_values": pixels, "labels": label})
                continue
            ids = torch.randint(0, config.vocab_size, (block,), generator=g)
            labels = ids.clone()
            if family == "bert":  # MLM: loss on ~15% of the positions
                labels[torch.rand(block, generator=g) > 0.15] = -100
            self.items.append({"input_ids": ids, "labels": labels})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


# --------------------------------------------------------------------------- timing


def forward_backward_seconds(model: torch.nn.Module, data: SyntheticBatches, batch: int) -> float:
    """One forward and backward pass of ``model`` on a batch (the second of two), for the
    duration estimate; on the device the Trainer will use."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    items = [data[i % len(data)] for i in range(batch)]
    inputs = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
    elapsed = 0.0
    for _ in range(2):
        t0 = time.perf_counter()
        model(**inputs).loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    return elapsed




@dataclass
class Entry:
    label: str
    optim: str
    optim_args: str
    samples_per_s: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    sign_fraction: list[float] = field(default_factory=list)


def _timer_callback(marks: list[float]) -> Any:
    from transformers import TrainerCallback

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            marks.append(time.perf_counter())

    return StepEnds()


def timed_run(entry: Entry, model: torch.nn.Module, data: SyntheticBatches, *, batch: int,
              warmup: int, steps: int, workdir: str) -> tuple[float, float | None]:
    """One Trainer run of ``warmup + steps`` steps; returns (samples/s, sign fraction)."""
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from ..integrations._callback import unwrap_optimizer

    args = TrainingArguments(
        output_dir=workdir, report_to="none", use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True, save_strategy="no", logging_strategy="no", eval_strategy="no",
        per_device_train_batch_size=batch, max_steps=warmup + steps, seed=0, data_seed=0,
        learning_rate=1e-4, weight_decay=0.1, lr_scheduler_type="constant",
        optim=entry.optim, optim_args=entry.optim_args or None, dataloader_num_workers=0,
    )  # fmt: skip
    marks: list[float] = []
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[_timer_callback(marks)])  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # stdout keeps the table only
    trainer.train()
    if len(marks) != warmup + steps:
        raise RuntimeError(f"{entry.label}: {len(marks)} steps ran, {warmup + steps} expected")
    elapsed = marks[-1] - marks[warmup - 1] if warmup else marks[-1] - marks[0]
    timed = steps if warmup else steps - 1
    opt = unwrap_optimizer(trainer.optimizer)
    fraction = None
    if hasattr(opt, "consume_stats"):
        fraction = (opt.consume_stats() or {}).get("sign_fraction")
    return timed * batch / elapsed, fraction


def run_rounds(entries: list[Entry], make_model: Callable[[], torch.nn.Module],
               data: SyntheticBatches, *, rounds: int, batch: int, warmup: int, steps: int,
               log: Callable[[str], None]) -> None:
    """Interleaved rounds; fills each entry's samples/s, ratios and sign fractions."""
    initial = make_model()
    state = copy.deepcopy(initial.state_dict())
    with tempfile.TemporaryDirectory(prefix="clion-bench-throughput-") as workdir:
        for r in range(rounds):
            order = entries[r % len(entries):] + entries[:r % len(entries)]
            got: dict[str, float] = {}
            for entry in order:
                initial.load_state_dict(state)
                sps, fraction = timed_run(entry, initial, data, batch=batch, warmup=warmup,
                                          steps=steps, workdir=workdir)  # fmt: skip
                entry.samples_per_s.append(sps)
                if fraction is not None:
                    entry.sign_fraction.append(fraction)
                got[entry.label] = sps
                log(f"round {r + 1}/{rounds}: {entry.label}: {sps:.2f} samples/s")
            for entry in entries:
                entry.ratios.append(got[entry.label] / got[entries[0].label])


def markdown(entries: list[Entry]) -> str:
    rows = []
    for i, e in enumerate(entries):
        med, low, high = ratio_interval(e.ratios)
        rows.append([e.label, f"{statistics.median(e.samples_per_s):.2f}", f"{med:.3f}",
                     "" if i == 0 or math.isnan(low) else f"{low:.3f} .. {high:.3f}",
                     "reference" if i == 0 else verdict(low, high),
                     f"{statistics.fmean(e.sign_fraction):.3f}" if e.sign_fraction else ""])
    return "\n".join(table(["optimizer", "median samples/s",
                            f"x {entries[0].label} (median of rounds)", "95% interval",
                            "verdict", "CLion sign-branch fraction"], rows))  # fmt: skip


def environment(args: argparse.Namespace, params: int) -> str:
    host = host_facts()
    return (
        f"{host['now']}; {args.family} {args.size} "
        f"({params / 1e6:.1f}M parameters), batch {args.batch}"
        + ("" if args.family == "vit" else f" x {args.block} tokens")
        + f", synthetic inputs; {args.rounds} rounds of {args.warmup} warm-up + {args.steps} "
        f"timed Trainer steps per optimizer; {host['cpu']}, {host['threads']} threads, torch "
        f"{host['torch']}, OMP_WAIT_POLICY={host['omp']}; load average at the end {host['load']}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", choices=FAMILIES, default="gpt2",
                        help="the recipe family whose model is trained (default: gpt2)")
    parser.add_argument("--size", choices=SIZES, default="tiny",
                        help="tiny: the offline recipe's model; base: the full-size config")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: 5)")
    parser.add_argument("--steps", type=int, default=20,
                        help="timed steps per optimizer and round (default: 20)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps first (default: 3)")
    parser.add_argument("--batch", type=int, default=16, help="batch size (default: 16)")
    parser.add_argument("--block", type=int, default=64,
                        help="tokens per example, gpt2/bert (default: 64, the recipes')")
    parser.add_argument("--optimizers", default=DEFAULT_OPTIMIZERS,
                        help="comma list of transformers --optim names, each optionally "
                        "with :KEY=VALUE,... (its --optim_args); the first is the reference "
                        f"of the ratios (default: {DEFAULT_OPTIMIZERS})")  # fmt: skip
    parser.add_argument("--out", help="also write the table (markdown) to this file")


def _bad_argument(args: argparse.Namespace) -> str | None:
    for name in ("rounds", "steps", "batch", "block"):
        if getattr(args, name) < 1:
            return f"--{name} {getattr(args, name)} must be >= 1"
    if args.warmup < 0:
        return f"--warmup {args.warmup} must be >= 0"
    if args.warmup == 0 and args.steps < 2:
        return f"--steps {args.steps} must be >= 2 with --warmup 0"
    return None


def run(args: argparse.Namespace) -> int:
    """Run the rounds; print the table (and write ``--out``). Returns the exit status."""
    bad = _bad_argument(args)
    if bad:
        print(f"clion-bench throughput: error: {bad}", file=sys.stderr)
        return 2
    from pathlib import Path

    import clion_hf  # noqa: F401 - registers --optim clion / lion
    from clion_hf._files import atomic_write_text

    try:
        optims = parse_optimizers(args.optimizers)
    except OptimizersError as err:
        print(f"clion-bench throughput: error: {err}", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if not torch.cuda.is_available() and "OMP_WAIT_POLICY" not in os.environ:
        log("throughput: note: OMP_WAIT_POLICY is unset; on a busy or shared machine "
            "OpenMP's spinning can stall every parallel region (compare with "
            "OMP_WAIT_POLICY=PASSIVE)")  # fmt: skip

    def make_model() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model(args.family, args.size)

    probe = make_model()
    params = sum(p.numel() for p in probe.parameters())
    block = min(args.block, getattr(probe.config, "max_position_embeddings", None)
                or getattr(probe.config, "n_positions", args.block))  # fmt: skip
    args.block = block
    data = SyntheticBatches(probe, args.family, (args.warmup + args.steps) * args.batch, block)
    step_s = forward_backward_seconds(probe, data, args.batch)
    del probe
    entries = [Entry(label, optim, optim_args) for label, optim, optim_args in optims]
    low, high = (args.rounds * len(entries) * (start + (args.warmup + args.steps) * step_s * k)
                 for start, k in zip(TRAINER_START_S, STEP_OVER_FORWARD_BACKWARD,
                                     strict=True))  # fmt: skip
    log(f"throughput: estimated duration {duration_text(low, high)} ({args.rounds} rounds x "
        f"{len(entries)} optimizers x {args.warmup + args.steps} steps; one forward+backward "
        f"took {step_s * 1e3:.0f} ms here)")  # fmt: skip
    with quiet_optimizer_warnings():  # the table has CLion's sign-branch fraction
        run_rounds(entries, make_model, data, rounds=args.rounds, batch=args.batch,
                   warmup=args.warmup, steps=args.steps, log=log)  # fmt: skip
    text = f"{environment(args, params)}\n\n{markdown(entries)}\n"
    print(text)
    if args.out:
        atomic_write_text(Path(args.out), text)
    return 0


__all__ = ["OPTIMS", "add_arguments", "parse_optimizers", "ratio_interval", "run", "verdict"]
