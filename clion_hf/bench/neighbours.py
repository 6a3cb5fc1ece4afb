"""Two runs on neighbouring training sets: what the stability study's regimes share.

The arms (an optimizer row and how it is built), the pair draw (S, the replaced position
and its stand-in), the sample order both runs follow, and the per-coordinate readings of
an update (Lion/CLion's direction c and CLion's branch). :mod:`.stability` (the convex
regime, the presets, the study) and :mod:`.drift_models` (the tiny GPT-2/ViT regime)
both import them; neither imports the other's internals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .specs import SpecError

SCHEMA = 1
STUDY = "stability"
NU_BELOW_TAU = 1e-45  # rounds to fp32's smallest subnormal: every non-zero abs(c) is >= it


@dataclass(frozen=True)
class Arm:
    """One optimizer row: how it is built and where its learning rate comes from."""

    label: str
    name: str  # adamw | sgd | lion | clion
    options: tuple[tuple[str, Any], ...] = ()
    grid: tuple[float, ...] = ()  # its own lr sweep (absolute values)
    scale_of: str | None = None  # or: this arm's lr grid = chosen lr of that arm x scales
    scales: tuple[float, ...] = ()
    lr_of: str | None = None  # or: run at the chosen lr of that arm (no sweep of its own)
    n_design: bool = True  # also the N design (else the T design only)

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    @property
    def tuned(self) -> bool:
        return self.lr_of is None


def make_optimizer(arm: Arm, params: list, lr: float):  # noqa: ANN201
    """The optimizer of ``arm`` (torch's AdamW and SGD; this package's Lion and CLion)."""
    import torch

    from clion_hf.optim import CLion, Lion

    opts = dict(arm.options)
    if arm.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if arm.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=opts.get("momentum", 0.9))
    if arm.name == "lion":
        return Lion(params, lr=lr, track_stats=True)
    if arm.name == "clion":
        return CLion(params, lr=lr, mode=opts.get("mode", "global"), nu=opts.get("nu", 1e-4),
                     track_stats=True)  # fmt: skip
    raise SpecError(f"unknown optimizer {arm.name!r}; allowed: adamw, sgd, lion, clion")


@dataclass(frozen=True)
class PairDraw:
    """What pair ``seed`` draws: S's pool indices, the replaced position and its stand-in."""

    indices: np.ndarray  # S (pool indices), S' is S with indices[pos] -> replacement
    pos: int
    replacement: int


def draw_pair(seed: int, n: int, pool_size: int) -> PairDraw:
    if n >= pool_size:
        raise SpecError(f"N = {n} must be below the training pool's {pool_size} examples "
                        "(one must stay outside S to replace)")  # fmt: skip
    rng = np.random.default_rng(seed)
    perm = rng.permutation(pool_size)
    pos = int(rng.integers(n))
    return PairDraw(perm[:n], pos, int(perm[n + int(rng.integers(pool_size - n))]))


def sample_order(seed: int, n: int, steps: int, batch: int) -> np.ndarray:
    """Positions 0..n-1 taken ``batch`` at a time, epoch after epoch (a permutation each)."""
    rng = np.random.default_rng(seed + 7919)
    need = steps * batch
    epochs = [rng.permutation(n) for _ in range(-(-need // n))]
    return np.concatenate(epochs)[:need].reshape(steps, batch)


def update_direction(opt, params):  # noqa: ANN001, ANN202
    """Lion/CLion's c = beta1 * m + (1 - beta1) * g of every coordinate, concatenated."""
    import torch

    beta1 = opt.param_groups[0]["betas"][0]
    parts = []
    for p in params:
        m = opt.state[p].get("exp_avg") if p in opt.state else None
        g = p.grad.reshape(-1)
        parts.append(g * (1 - beta1) if m is None else m.reshape(-1) * beta1 + g * (1 - beta1))
    return torch.cat(parts)


def branch_taken(c, arm: Arm):  # noqa: ANN001, ANN202
    """CLion's branch of each coordinate (True: sign); None for other optimizers."""
    import torch

    if arm.name != "clion":
        return None
    nu = torch.tensor(arm.get("nu"), dtype=c.dtype)
    if arm.get("mode") == "element":
        return c.abs() >= nu
    nz = c.abs()[c != 0]
    take = bool(nz.numel() == 0 or nz.min() >= nu)
    return torch.full_like(c, take, dtype=torch.bool)


def finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


