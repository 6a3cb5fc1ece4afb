"""The scale ladder's part of the report: plateau levels and ratios against width.

Plateau levels say where a run is stuck. For a language workload they are the held-out
cross-entropy, in nats per predicted token, of a model that ignores the context (unigram)
and of one that sees the previous token only (bigram), both fitted on the training split
with add-``alpha`` smoothing and scored on the held-out split's blocks exactly as the
causal-LM loss is (within a block, every token after the first is predicted). A run whose
validation loss sits at the unigram level has learnt token frequencies and nothing else.
For a classifier they are chance (1/classes) and the majority class's share of the held-out
split. The levels are computed from the same data and tokenizer the recipes use.

Why hand-written: an n-gram count over a few hundred thousand tokens is a few lines of
numpy; a language-model toolkit would be a new dependency for two numbers.

Ratios against width: for each rung (``NAME@WIDTH``) and each optimizer, its paired
difference to AdamW on the final seeds (test loss for language models, so ``exp`` of the
mean is the perplexity ratio; test accuracy in points for classifiers), with a 95% t
interval (unadjusted: the Holm-adjusted verdicts are in each rung's section).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from .render import csv_text, table
from .specs import WORKLOADS
from .stats import t_interval

ALPHA_SMOOTHING = 0.1  # add-0.1, as the reference bigram


def _pairs(blocks: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(previous token, predicted token) of every predicted position of every block."""
    prev, nxt = [], []
    for b in blocks:
        if len(b) >= 2:
            prev.append(np.asarray(b[:-1], dtype=np.int64))
            nxt.append(np.asarray(b[1:], dtype=np.int64))
    if not nxt:
        raise ValueError("no block has two tokens: nothing is predicted")
    return np.concatenate(prev), np.concatenate(nxt)


def unigram_nats(fit: Sequence[Sequence[int]], held: Sequence[Sequence[int]], vocab_size: int,
                 alpha: float = ALPHA_SMOOTHING) -> float:  # fmt: skip
    """Mean cross-entropy (nats) on ``held``'s predicted tokens of a unigram model of
    ``fit``'s predicted tokens with add-``alpha`` smoothing (``alpha=0``, ``fit=held``: the
    held-out split's own unigram entropy)."""
    _, target = _pairs(fit)
    counts = np.bincount(target, minlength=vocab_size).astype(np.float64) + alpha
    with np.errstate(divide="ignore"):  # alpha=0: an unseen token has -inf, never looked up
        logp = np.log(counts) - np.log(counts.sum())
    _, y = _pairs(held)
    return float(-logp[y].mean())


def bigram_nats(fit: Sequence[Sequence[int]], held: Sequence[Sequence[int]], vocab_size: int,
                alpha: float = ALPHA_SMOOTHING) -> float:  # fmt: skip
    """As :func:`unigram_nats` for a bigram model ``p(token | previous token)`` (pairs within
    a block only, as the causal-LM loss sees them)."""
    x, y = _pairs(fit)
    counts = np.zeros((vocab_size, vocab_size), dtype=np.float64)
    np.add.at(counts, (x, y), 1.0)
    counts += alpha
    with np.errstate(divide="ignore", invalid="ignore"):  # alpha=0: unseen pairs
        logp = np.log(counts) - np.log(counts.sum(axis=1, keepdims=True))
    hx, hy = _pairs(held)
    return float(-logp[hx, hy].mean())


def chance_levels(labels: Sequence[int]) -> dict[str, float]:
    """Chance (1/classes seen) and the majority class's share of ``labels``."""
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    return {"chance": 1 / len(values), "majority": float(counts.max() / counts.sum())}


def _blocks(tokenizer, texts: Sequence[str], block_size: int) -> list[list[int]]:
    """The recipes' grouping (``group_texts``): concatenate, cut, drop the remainder."""
    ids = [t for row in tokenizer(list(texts))["input_ids"] for t in row]
    n = len(ids) // block_size * block_size
    return [ids[i : i + block_size] for i in range(0, n, block_size)]


def plateau_levels(base: str, block_size: int = 64) -> dict[str, float]:
    """Plateau levels of a pretraining workload on its offline data (see the module doc):
    ``unigram``/``bigram`` (nats per token) for gpt2-pretrain, ``chance``/``majority``
    (accuracy) for vit-pretrain; ``{}`` for a workload without levels defined here (BERT's
    masked-token loss has no bigram counterpart). ``block_size``: the recipe's (64)."""
    if base == "gpt2-pretrain":
        from clion_hf.workloads.offline import offline_text_dataset
        from clion_hf.workloads.tokenizer import train_tokenizer

        raw = offline_text_dataset("pretrain")
        tokenizer = train_tokenizer("gpt2", raw["train"]["text"])
        train = _blocks(tokenizer, raw["train"]["text"], block_size)
        held = _blocks(tokenizer, raw["validation"]["text"], block_size)
        vocab = len(tokenizer)
        return {"unigram": unigram_nats(train, held, vocab),
                "bigram": bigram_nats(train, held, vocab)}  # fmt: skip
    if base == "vit-pretrain":
        from clion_hf.workloads.offline import offline_image_dataset

        return chance_levels(offline_image_dataset("pretrain")["validation"]["label"])
    return {}


# ------------------------------------------------------------------------------ the report


def ladder_points(an: Any) -> list[dict[str, Any]]:
    """Per rung and optimizer other than AdamW: the paired difference to AdamW on the final
    seeds, its 95% t interval and the ratio (perplexity) or points (accuracy) it means."""
    out = []
    for wa in an.workloads:
        w = WORKLOADS[wa.name]
        if not w.width or "adamw" not in wa.rows:
            continue
        for t in [*wa.tests, *wa.estimates]:
            if "adamw" not in (t.a, t.b) or t.n < 2:
                continue
            sign = 1.0 if t.b == "adamw" else -1.0  # always (optimizer − AdamW)
            diffs = [sign * d for d in t.diffs]
            mean = statistics.fmean(diffs)
            lo, hi = t_interval(diffs, 0.95)
            lm = w.metric == "perplexity"
            scale = (lambda v: math.exp(v)) if lm else (lambda v: 100 * v)
            out.append({"base": w.base, "width": w.width, "steps": wa.max_steps,
                        "optimizer": t.a if t.b == "adamw" else t.b, "n": len(diffs),
                        "measure": "perplexity ratio" if lm else "accuracy difference (pp)",
                        "value": scale(mean), "lo": scale(lo), "hi": scale(hi)})  # fmt: skip
    return sorted(out, key=lambda p: (p["base"], p["optimizer"], p["width"]))


PLATEAU_MARGIN = 0.05  # "left the plateau": 5% below its level, as the gen-gap study's rule


def plateau_exits(an: Any, eval_curves: dict[str, list[tuple[int, float]]],
                  levels: dict[str, dict[str, float]]) -> list[dict[str, Any]]:  # fmt: skip
    """Per language-model rung and optimizer: each final seed's first evaluated step whose
    validation loss is 5% below the unigram level (None: it never got there), from each
    run's ``(step, eval_loss)`` curve by run id. A mean curve or a final ratio can hide
    seeds that leave the plateau late or never; this shows them."""
    out = []
    for wa in an.workloads:
        w = WORKLOADS[wa.name]
        unigram = levels.get(w.base, {}).get("unigram")
        if not w.width or unigram is None:
            continue
        target = (1 - PLATEAU_MARGIN) * unigram
        for opt, row in sorted(wa.rows.items()):
            curves = [eval_curves[r["run_id"]] for r in row.finals
                      if r["status"] == "ok" and r["run_id"] in eval_curves]  # fmt: skip
            if not curves:
                continue
            steps = [next((s for s, v in c if v <= target), None) for c in curves]
            out.append({"base": w.base, "width": w.width, "optimizer": opt,
                        "target": target, "steps": steps})  # fmt: skip
    return out


def exits_markdown(exits: Sequence[dict[str, Any]], base: str) -> list[str]:
    """The table of :func:`plateau_exits` for one base (``[]`` when it has none)."""
    mine = [e for e in exits if e["base"] == base]
    if not mine:
        return []
    widths = sorted({e["width"] for e in mine})

    def cell(e: dict[str, Any] | None) -> str:
        if e is None:
            return "–"
        left = [s for s in e["steps"] if s is not None]
        never = len(e["steps"]) - len(left)
        if not left:
            return f"never ({never} of {never})"
        text = f"{statistics.median(left):g} [{min(left)}, {max(left)}]"
        return text + (f"; {never} of {len(e['steps'])} never" if never else "")

    rows = [[opt, *[cell(next((e for e in mine if e["optimizer"] == opt and e["width"] == w),
                              None)) for w in widths]]
            for opt in sorted({e["optimizer"] for e in mine})]  # fmt: skip
    return [f"Leaving the unigram plateau: the first evaluated step at which a final seed's "
            f"validation loss is {100 * PLATEAU_MARGIN:g}% below the unigram level "
            f"({mine[0]['target']:.3f} nats); median [first, last] over the final seeds, and "
            "how many never got there. A late or missing exit is a seed stuck on token "
            "frequencies, whatever its final ratio says.", "",
            *table(["optimizer", *[f"width {w}" for w in widths]], rows), ""]  # fmt: skip


def ladder_csv(points: list[dict[str, Any]], levels: dict[str, dict[str, float]]) -> str:
    """``ladder.csv``: the points, then each base's plateau levels (optimizer ``plateau``)."""
    plateaus = [{"base": base, "optimizer": "plateau", "measure": name, "value": value}
                for base, lv in sorted(levels.items()) for name, value in lv.items()]
    return csv_text([*points, *plateaus], ["base", "width", "steps", "optimizer", "n",
                                           "measure", "value", "lo", "hi"])


def ladder_markdown(points: list[dict[str, Any]], levels: dict[str, dict[str, float]],
                    plots: dict[str, str], exits: Sequence[dict[str, Any]] = ()
                    ) -> list[str]:  # fmt: skip
    """The report's ladder section (``[]`` when the results hold no rung)."""
    if not points and not levels:
        return []
    lines = ["## The scale ladder", "",
             "Each optimizer against tuned AdamW at every width (paired by final seed; 95% t "
             "intervals, not adjusted: the tested verdicts are in each rung's section). "
             "Ratios of test perplexity for language models (below 1: better than AdamW), "
             "differences in test accuracy for classifiers (above 0: better).", ""]  # fmt: skip
    for base in sorted({p["base"] for p in points} | set(levels)):
        mine = [p for p in points if p["base"] == base]
        lv = levels.get(base, {})
        lines += [f"### {base}", ""]
        if lv:
            unit = "nats per token" if "unigram" in lv else "accuracy"
            lines += ["Plateau levels of the held-out split (" + unit + "): " + ", ".join(
                f"{k} {v:.4g}" for k, v in lv.items()) + ".", ""]  # fmt: skip
        widths = sorted({p["width"] for p in mine})
        if widths:
            header = ["optimizer vs AdamW", *[f"width {w}" for w in widths]]
            rows = []
            for opt in sorted({p["optimizer"] for p in mine}):
                cells = {p["width"]: p for p in mine if p["optimizer"] == opt}
                rows.append([opt, *[(f"{c['value']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}] "
                                     f"(n={c['n']})" if (c := cells.get(w)) else "–")
                                    for w in widths]])  # fmt: skip
            lines += [*table(header, rows), ""]
        if f"ladder-{base}" in plots:
            lines += [f"![{base}: ratio to AdamW against width]({plots[f'ladder-{base}']})", ""]
        if f"ladder-curves-{base}" in plots:
            lines += [f"![{base}: validation curves with the plateau levels]"
                      f"({plots[f'ladder-curves-{base}']})", ""]  # fmt: skip
        lines += exits_markdown(exits, base)
    return lines


def ladder_levels(an: Any) -> dict[str, dict[str, float]]:
    """Plateau levels of every ladder base in the analysis (a failure leaves a base out)."""
    bases = sorted({WORKLOADS[wa.name].base for wa in an.workloads if WORKLOADS[wa.name].width})
    out = {}
    for base in bases:
        try:
            levels = plateau_levels(base)
        except (OSError, ValueError):  # the data cannot be built here (missing, unreadable)
            continue
        if levels:
            out[base] = levels
    return out
