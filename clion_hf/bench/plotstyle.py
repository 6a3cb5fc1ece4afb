"""The plot rules every report shares: one colour per optimizer, the same in every
plot and report; readable legends; units on the axes.

A leaf module (matplotlib is imported by the callers, inside their plot functions): the
colour of an optimizer is a function of its label alone, so the benchmark report and the
gen-gap study draw AdamW, Lion and each CLion mode in the same colour. Hand-written:
matplotlib's colour cycle colours by drawing order, not by optimizer.
"""

from __future__ import annotations

import zlib

from .specs import SpecError, parse_optimizer

# matplotlib's tab10, fixed per optimizer (colour-blind-safe enough to tell six apart)
COLOURS = {
    "adamw": "#1f77b4",  # blue
    "lion": "#ff7f0e",  # orange
    "clion:mode=global": "#2ca02c",  # green: the paper's rule
    "clion:mode=tensor": "#d62728",  # red
    "clion:mode=element": "#9467bd",  # purple
    "clion:mode=soft": "#8c564b",  # brown
}
# for any other spec (lion:caution=true, a ν-sweep point, ...): stable, not one of the above
EXTRA = ("#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31")
LEGEND_SIZE = 9
LABEL_SIZE = 10


def family(label: str) -> str:
    """``adamw`` / ``lion`` / ``clion:mode=MODE``: the key of the colour table."""
    try:
        spec = parse_optimizer(label)
    except SpecError:
        return label
    if spec.name == "clion":
        return f"clion:mode={spec.get('mode')}"
    return spec.name


def colour(label: str) -> str:
    """The colour of optimizer ``label`` in every plot."""
    try:
        spec = parse_optimizer(label)
    except SpecError:
        spec = None
    if spec is not None:
        base = family(label)
        extra = {k for k, _ in spec.options} - {"mode", "lr", "track_stats"}
        if not extra and base in COLOURS:
            return COLOURS[base]
    return EXTRA[zlib.crc32(label.encode()) % len(EXTRA)]


def loss_unit(workload: str) -> str:
    """What one unit of a workload's cross-entropy loss is per."""
    if workload.startswith(("gpt2", "bert-pretrain")):
        return "nats per token"
    if workload.startswith("bert"):
        return "nats per sentence pair"
    if workload.startswith("vit"):
        return "nats per image"
    return "nats"
