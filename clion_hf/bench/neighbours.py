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




class PairReadings:
    """What one logged step records of the pair: the two runs' updates compared coordinate
    by coordinate at every step (averaged over the steps since the last log), and the
    parameters' distance and the held-out loss difference at the log."""

    def __init__(self, arm: Arm) -> None:
        self.clion = arm.name == "clion"
        self.reset()

    def reset(self) -> None:
        self.sign = self.branch = self.any = 0.0
        self.n = 0

    def add(self, before: list, after: list, branches: list) -> None:
        """One step: ``before``/``after`` each run's flat parameters, ``branches`` each
        run's CLion branch (or nothing)."""
        import torch

        d0, d1 = after[0] - before[0], after[1] - before[1]
        sign_diff = torch.sign(d0) != torch.sign(d1)
        any_diff = sign_diff
        if branches and branches[0] is not None:
            branch_diff = branches[0] != branches[1]
            any_diff = sign_diff | branch_diff
            self.branch += float(branch_diff.float().mean())
        self.sign += float(sign_diff.float().mean())
        self.any += float(any_diff.float().mean())
        self.n += 1

    def log(self, entry: dict[str, Any], theta: Any, theta2: Any, test_loss_prime: float
            ) -> None:  # fmt: skip
        """Fill ``entry`` (which has the first run's ``test_loss``) and start over."""
        import torch

        drift = float(torch.linalg.vector_norm(theta - theta2))
        norm = float(torch.linalg.vector_norm(theta))
        n = max(self.n, 1)
        entry.update(
            drift=drift, norm=norm, rel_drift=drift / norm if norm > 0 else math.nan,
            test_loss_prime=test_loss_prime,
            sign_diff=self.sign / n, any_diff=self.any / n,
            branch_diff=self.branch / n if self.clion else None,
        )  # fmt: skip
        entry["loss_diff"] = entry["test_loss"] - entry["test_loss_prime"]
        self.reset()


def add_optimizer_stats(entry: dict[str, Any], opt: Any) -> None:
    """τ (the smallest non-zero abs(c)) and CLion's sign fraction since the last log."""
    stats = opt.consume_stats() if hasattr(opt, "consume_stats") else {}
    if "min_abs_c" in stats:
        entry["tau"] = stats["min_abs_c"]
    if "sign_fraction" in stats:
        entry["sign_fraction"] = stats["sign_fraction"]


def diverged(entry: dict[str, Any]) -> bool:
    return not finite(*(v for k, v in entry.items() if k.endswith("loss") or k == "drift"))


def run_result(run: Any, status: str, reason: str, position: int, replacement: int,
               history: list[dict[str, Any]], started: float, **extra: Any
               ) -> dict[str, Any]:  # fmt: skip
    """The result file of ``run`` (a tuning run or a pair) in either regime; ``extra``:
    what a regime adds (e.g. the model's parameter count)."""
    import time
    from dataclasses import asdict
    from datetime import datetime, timezone

    result = {
        "schema": SCHEMA, "study": STUDY, "run_id": run.run_id, "status": status,
        "reason": reason, **asdict(run), "log_at": list(run.log_at),
        "replaced_position": position, "replacement": replacement, **extra,
        "history": history, "wall_s": round(time.time() - started, 3),
        "finished_at": datetime.now(timezone.utc).isoformat(),
    }  # fmt: skip
    if run.stage == "tune" and status == "ok":
        result["val_loss"] = history[-1]["val_loss"]
    return result
