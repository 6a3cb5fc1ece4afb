"""``clion-bench study stability``: the quantity the paper bounds, measured directly.

The paper's generalization bounds are algorithmic-stability bounds (arXiv:2604.14587):
train the same algorithm on two training sets S and S' of size N that differ in
one example, from the same initialization and in the same sample order, and bound how far
the outputs drift apart. Lion's bound grows as 1/τ^T (τ: the smallest non-zero ``abs(c)``),
CLion's does not. This study measures that drift.

Design (the ``convex`` preset; all in-process, no recipe):

* Model and data: multinomial logistic regression (a linear softmax model, 10 x 64 weights
  and 10 biases) on scikit-learn's digits, features scaled by 1/16 (a fixed map, so S and
  S' see the same features), fp32. A fixed split: a held-out test set (the loss difference),
  a validation set (the learning-rate sweep) and a pool from which training sets are drawn.
* A pair ``k``: S = N examples drawn from the pool with seed ``k``; S' = S with position
  ``i*`` replaced by a pool example outside S (replaced, not removed). Both runs start
  from the same initialization and take the same mini-batch positions at every step (an
  epoch is a permutation of the positions 0..N-1), so the replaced example enters both
  runs at the same steps. The two runs are stepped in lockstep in one process, so every
  per-step comparison is exact.
* Logged at log-spaced steps: ``||θ_t − θ'_t||_2``, the same relative to ``||θ_t||``, the
  fraction of coordinates whose update differed in sign or in branch (CLion's sign vs
  identity) between the runs (mean over the steps since the last log), the held-out
  loss of both runs, and τ_t of the S run (Lion's ``track_stats``; CLion's statistics),
  with CLion's sign-branch fraction.
* Designs: T at fixed N (one long run per pair, constant learning rate: the drift at t
  of a run of length T >= t is the drift at step t of the long run, read at every logged
  step), and N at fixed T (N in the preset's sizes, the same pairs' seeds).
* Learning rates: a declared validation sweep in the same command, one run per grid
  point on a tuning draw (seed 0, not one of the pairs), chosen by the lowest
  validation loss at the fixed T. Lion's grid is AdamW's chosen lr divided by 3, 5, 10
  (the Lion paper's advice); CLion global's grid is SGD-sized (its identity branch is
  momentum SGD). Every CLion element ν point and the global control (ν below every τ
  representable in fp32: it is Lion) run at Lion's chosen lr, so the ν sweep changes
  ν alone. No weight decay anywhere: the convex stability argument is about the update
  map itself.

The runs go through :class:`~clion_hf.bench.runner.Runner`'s scheduler (re-planned after
each result: the pairs wait for their row's learning rate), its lock on the output
directory, its atomic result files and resumption by run id; they execute in the
runner's own process (:class:`InProcessRunner`), as they are milliseconds per step.
:mod:`clion_hf.bench.stability_report` analyses them.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .neighbours import (
    NU_BELOW_TAU,
    SCHEMA,
    STUDY,
    Arm,
    PairReadings,
    add_optimizer_stats,
    branch_taken,
    diverged,
    draw_pair,
    make_optimizer,
    run_result,
    sample_order,
    update_direction,
)
from .specs import SpecError

WORKLOAD = "digits-softmax"
TUNE_SEED = 0
PAIR_SEED_BASE = 1000  # pair k draws S, i*, the replacement, init and order from 1000 + k


# ------------------------------------------------------------------------------ arms


def _element(nu: float) -> Arm:
    return Arm(f"clion:mode=element,nu={nu:g}", "clion", (("mode", "element"), ("nu", nu)),
               lr_of="lion", n_design=False)  # fmt: skip


def default_arms(nus: Iterable[float]) -> tuple[Arm, ...]:
    return (
        Arm("adamw", "adamw", grid=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)),
        Arm("sgd:momentum=0.9", "sgd", (("momentum", 0.9),),
            grid=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)),
        Arm("lion", "lion", scale_of="adamw", scales=(1 / 3, 1 / 5, 1 / 10)),
        Arm("clion", "clion", (("mode", "global"), ("nu", 1e-4)),
            grid=(1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0)),
        Arm(f"clion:nu={NU_BELOW_TAU:g}", "clion", (("mode", "global"), ("nu", NU_BELOW_TAU)),
            lr_of="lion", n_design=False),
        *(_element(nu) for nu in nus),
    )  # fmt: skip


def model_arms(grids: dict[str, tuple[float, ...]], nus: Iterable[float]) -> tuple[Arm, ...]:
    """The convex arms with the model regime's own lr grids (``adamw``, ``sgd``, ``lion``,
    ``clion``): Lion gets a grid of its own there, around its tuned lr, because on these
    workloads the tuned Lion lr is not AdamW's / 3..10 (gpt2-pretrain: Lion 2e-3 against
    AdamW 1.5e-3 in docs/benchmarks/cpu-2026-11-29)."""
    base = {a.label: a for a in default_arms(nus)}
    out = []
    for a in base.values():
        key = {"sgd:momentum=0.9": "sgd"}.get(a.label, a.label)
        if key in grids:
            a = Arm(a.label, a.name, a.options, grid=grids[key], n_design=a.n_design)
        out.append(a)
    return tuple(out)


# ------------------------------------------------------------------------------ presets


@dataclass(frozen=True)
class StabilityPreset:
    name: str
    description: str
    n_main: int  # N of the T design
    t_max: int  # T of the T design
    t_fixed: int  # T of the N design and of the lr sweep
    sizes: tuple[int, ...]  # N of the N design (n_main among them)
    pairs: int
    batch: int = 32
    log_points: int = 30
    nus: tuple[float, ...] = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3)
    test_size: int = 500
    val_size: int = 300
    init_std: float = 0.01
    workload: str = WORKLOAD  # digits-softmax, or a model regime's gpt2-w{W} / vit-w{W}
    arms: tuple[Arm, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.arms:
            object.__setattr__(self, "arms", default_arms(self.nus))


STABILITY_PRESETS: dict[str, StabilityPreset] = {
    "convex": StabilityPreset(
        name="convex",
        description="linear softmax model on scikit-learn's digits (fp32, batch 32, no weight "
        "decay, constant lr), 10 pairs per arm: T up to 2000 at N = 256; N in 64..512 at "
        "T = 500 for AdamW, SGD, Lion and CLion global (the ν points and the control: T "
        "design only, to fit the run into the time available)",
        n_main=256, t_max=2000, t_fixed=500, sizes=(64, 128, 256, 512), pairs=10,
    ),
    # The model regime (:mod:`.drift_models`). Grids 2x apart around the lrs tuned for these
    # workloads in docs/benchmarks/cpu-2026-11-29 (200 steps, width 64): gpt2-pretrain AdamW
    # 1.5e-3, Lion 2e-3, CLion global 3.2 (an edge); vit-pretrain AdamW 1e-3, Lion 4e-4,
    # CLion global 0.2. Momentum SGD's grid is CLion global's / 10: torch's SGD sums the
    # gradients (a factor 1/(1 - 0.9)), CLion's momentum averages them. Constant lr, no
    # warmup, no weight decay, as the convex regime. The pair-step costs behind --dry_run's
    # estimate: MODEL_COSTS.
    "gpt2": StabilityPreset(
        name="gpt2",
        description="gpt2-pretrain's tiny GPT-2 (width 64, 2 layers, 141k parameters) on the "
        "offline corpus' 64-token blocks (fp32, batch 16, dropout off, no weight decay, "
        "constant lr), 10 pairs per arm: T up to 1000 at N = 1024 blocks; N in 256..4096 at "
        "T = 500 for AdamW, SGD, Lion and CLion global",
        # N = 1024 (about 16 epochs in T = 1000), not the convex 256: a pilot pair at N = 256
        # (62 epochs) memorized S, AdamW's held-out loss rising from 4.26 at t = 250 to 8.91
        # at t = 1000. T = 500 in the N design so that N = 4096 sees about 2 epochs (the
        # replaced example is drawn in every run).
        n_main=1024, t_max=1000, t_fixed=500, sizes=(256, 1024, 4096), pairs=10, batch=16,
        log_points=24, test_size=128, val_size=128, init_std=0.02, workload="gpt2-w64",
        arms=model_arms({"adamw": (5e-4, 1e-3, 2e-3, 4e-3), "lion": (5e-4, 1e-3, 2e-3, 4e-3),
                         "sgd": (0.08, 0.16, 0.32, 0.64), "clion": (0.8, 1.6, 3.2, 6.4)},
                        (1e-7, 1e-6, 1e-5, 1e-4, 1e-3)),
    ),
    "vit": StabilityPreset(
        name="vit",
        description="vit-pretrain's tiny ViT (width 64, 2 layers, 72k parameters) on the "
        "offline digits 0-4 (16x16, fp32, batch 32, no dropout, no weight decay, constant "
        "lr), 10 pairs per arm: T up to 1000 at N = 224 images; N in 56..448 at T = 250 for "
        "AdamW, SGD, Lion and CLion global",
        n_main=224, t_max=1000, t_fixed=250, sizes=(56, 112, 224, 448), pairs=10, batch=32,
        log_points=24, test_size=226, val_size=225, init_std=0.02, workload="vit-w64",
        arms=model_arms({"adamw": (2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3),
                         "lion": (1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3),
                         "sgd": (0.005, 0.01, 0.02, 0.04, 0.08),
                         "clion": (0.05, 0.1, 0.2, 0.4, 0.8)},
                        (1e-7, 1e-6, 1e-5, 1e-4, 1e-3)),
    ),
    "gpt2-smoke": StabilityPreset(
        name="gpt2-smoke",
        description="checks that the model regime runs: a width-16 GPT-2, tiny (T 12, 2 pairs)",
        n_main=32, t_max=12, t_fixed=6, sizes=(16, 32), pairs=2, batch=4, log_points=4,
        nus=(1e-5,), test_size=8, val_size=8, init_std=0.02, workload="gpt2-w16",
        arms=model_arms({"adamw": (1e-3,), "lion": (1e-3,), "sgd": (0.1,), "clion": (1.0,)},
                        (1e-5,)),
    ),
    "smoke": StabilityPreset(
        name="smoke",
        description="checks that the study runs: the convex design, tiny (T 60, 3 pairs)",
        n_main=64, t_max=60, t_fixed=30, sizes=(32, 64), pairs=3, batch=16, log_points=8,
        nus=(1e-6, 1e-2),
    ),
}


# CPU seconds on one core of the model regime's workloads, measured on this project's 2-core
# host while it was shared (time.process_time): (a pair-step, both models; one held-out
# example's loss, one model). A tuning run steps one model: half a pair-step. gpt2: a whole
# pilot pair (Lion, N = 1024, T = 1000, 24 logged steps) took 87 CPU s; vit: 40 pair-steps of
# Lion, AdamW and CLion element took 0.034..0.037 s each, and the pilot's process about 36
# CPU s per 1000-step pair.
MODEL_COSTS: dict[str, tuple[float, float]] = {
    "gpt2-w64": (0.08, 0.00085),
    "vit-w64": (0.035, 0.00013),
}


def get_stability_preset(name: str) -> StabilityPreset:
    if name not in STABILITY_PRESETS:
        raise SpecError(f"unknown stability preset {name!r}; allowed: "
                        f"{', '.join(STABILITY_PRESETS)}")  # fmt: skip
    return STABILITY_PRESETS[name]


def log_steps(t: int, points: int, extra: Iterable[int] = ()) -> list[int]:
    """About ``points`` log-spaced steps in 1..t, always with t (and ``extra`` <= t)."""
    raw = np.unique(np.round(np.geomspace(1, t, points)).astype(int))
    return sorted({int(s) for s in raw} | {t} | {e for e in extra if 1 <= e <= t})


# ------------------------------------------------------------------------------ data


_DATA: dict[tuple[int, int], dict[str, Any]] = {}


def digits_split(test_size: int, val_size: int) -> dict[str, Any]:
    """A fixed split of digits (seed 0): test, validation and the training pool."""
    key = (test_size, val_size)
    if key not in _DATA:
        import torch
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        order = np.random.default_rng(0).permutation(len(y))
        if test_size + val_size >= len(y):
            raise SpecError(f"test {test_size} + validation {val_size} leave no training "
                            f"pool of the {len(y)} digits")  # fmt: skip
        xt = torch.tensor(x[order] / 16.0, dtype=torch.float32)
        yt = torch.tensor(y[order], dtype=torch.long)
        a, b = test_size, test_size + val_size
        _DATA[key] = {"test": (xt[:a], yt[:a]), "val": (xt[a:b], yt[a:b]),
                      "pool": (xt[b:], yt[b:])}  # fmt: skip
    return _DATA[key]


# ------------------------------------------------------------------------------ runs


@dataclass(frozen=True)
class StabRun:
    """One unit of the study: a tuning run (one model) or a pair (two models in lockstep)."""

    stage: str  # "tune" | "pair"
    optimizer: str  # the arm's label
    lr: float
    n: int
    steps: int
    seed: int  # tuning: TUNE_SEED; pair k: PAIR_SEED_BASE + k
    design: str  # "tune" | "T" | "N"
    preset: str
    batch: int
    test_size: int
    val_size: int
    init_std: float
    log_at: tuple[int, ...] = ()
    workload: str = WORKLOAD

    @property
    def run_id(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def stem(self) -> str:
        return f"{self.workload}-{self.run_id}"

    @property
    def title(self) -> str:
        return (f"{self.stage} {self.optimizer} lr={self.lr:g} N={self.n} T={self.steps} "
                f"seed={self.seed}")  # fmt: skip


def _loss(w, b, data) -> float:  # noqa: ANN001
    import torch.nn.functional as F

    x, y = data
    return float(F.cross_entropy(x @ w.T + b, y))


def _init(seed: int, std: float):  # noqa: ANN202
    import torch

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, 64, generator=g) * std
    return w, torch.zeros(10)


def execute_run(run: StabRun, arm: Arm) -> dict[str, Any]:
    """Train ``run`` (one model, or the pair in lockstep) and return its result dict."""
    if run.workload != WORKLOAD:  # the model regime (:mod:`.drift_models`)
        from .drift_models import execute_model_run

        return execute_model_run(run, arm)
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)  # a 650-parameter model: threads only add overhead
    data = digits_split(run.test_size, run.val_size)
    xp, yp = data["pool"]
    started = time.time()
    if run.stage == "tune":
        draw = draw_pair(run.seed, run.n, len(yp))
        sets = [(xp[draw.indices], yp[draw.indices])]
    else:
        draw = draw_pair(run.seed, run.n, len(yp))
        idx2 = draw.indices.copy()
        idx2[draw.pos] = draw.replacement
        sets = [(xp[draw.indices], yp[draw.indices]), (xp[idx2], yp[idx2])]
    w0, b0 = _init(run.seed, run.init_std)
    models = [[w0.clone().requires_grad_(), b0.clone().requires_grad_()] for _ in sets]
    opts = [make_optimizer(arm, m, run.lr) for m in models]
    order = sample_order(run.seed, run.n, run.steps, run.batch)
    log_at = set(run.log_at)
    sign_lion_like = arm.name in ("lion", "clion")
    history: list[dict[str, Any]] = []
    readings = PairReadings(arm)
    status, reason = "ok", ""
    for t in range(1, run.steps + 1):
        pos = torch.from_numpy(order[t - 1])
        before, branches = [], []
        for (x, y), (w, b), opt in zip(sets, models, opts, strict=True):
            loss = F.cross_entropy(x[pos] @ w.T + b, y[pos])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if len(sets) == 2:
                before.append(torch.cat([w.detach().reshape(-1), b.detach()]).clone())
                if sign_lion_like:
                    branches.append(branch_taken(update_direction(opt, [w, b]), arm))
            opt.step()
        if len(sets) == 2:
            after = [torch.cat([w.detach().reshape(-1), b.detach()]) for w, b in models]
            readings.add(before, after, branches)
        if t not in log_at:
            continue
        entry: dict[str, Any] = {"step": t}
        w, b = (p.detach() for p in models[0])
        entry["test_loss"] = _loss(w, b, data["test"])
        if run.stage == "tune":
            entry["val_loss"] = _loss(w, b, data["val"])
            entry["train_loss"] = _loss(w, b, sets[0])
        else:
            w2, b2 = (p.detach() for p in models[1])
            theta = torch.cat([w.reshape(-1), b])
            theta2 = torch.cat([w2.reshape(-1), b2])
            readings.log(entry, theta, theta2, _loss(w2, b2, data["test"]))
        add_optimizer_stats(entry, opts[0])
        history.append(entry)
        if diverged(entry):
            status, reason = "diverged", f"non-finite loss or drift at step {t}"
            break
    return run_result(run, status, reason, draw.pos, draw.replacement, history, started)


# ------------------------------------------------------------------------------ the study


@dataclass
class _Plan:
    workload: str
    finals: list[StabRun]
    needed: list[StabRun]
    trials: list = field(default_factory=list)


class _NoPreset:
    """What :class:`Runner` reads of a preset when no child process is launched."""

    env: dict[str, str] = {}
    accelerate_config = "cpu"


@dataclass
class StabilityStudy:
    """The study's runs, planned from the results so far (duck-types :class:`Matrix`)."""

    study: StabilityPreset
    pairs: int

    preset = _NoPreset()

    @property
    def workloads(self) -> list[str]:
        return [self.study.workload]

    def arm(self, label: str) -> Arm:
        return next(a for a in self.study.arms if a.label == label)

    def _run(self, stage: str, arm: Arm, lr: float, n: int, steps: int, seed: int,
             design: str) -> StabRun:  # fmt: skip
        sp = self.study
        log_at = (tuple(log_steps(steps, sp.log_points, (sp.t_fixed,)))
                  if stage == "pair" else (steps,))  # fmt: skip
        return StabRun(stage, arm.label, lr, n, steps, seed, design, sp.name, sp.batch,
                       sp.test_size, sp.val_size, sp.init_std, log_at, sp.workload)  # fmt: skip

    def grid(self, arm: Arm, chosen: dict[str, float | None]) -> tuple[float, ...] | None:
        """The lr grid of a tuned arm (None while it waits for another arm's choice)."""
        if arm.scale_of is not None:
            base = chosen.get(arm.scale_of)
            return None if base is None else tuple(base * s for s in arm.scales)
        return arm.grid

    def tune_runs(self, arm: Arm, chosen: dict[str, float | None]) -> list[StabRun] | None:
        grid = self.grid(arm, chosen)
        if grid is None:
            return None
        sp = self.study
        return [self._run("tune", arm, lr, sp.n_main, sp.t_fixed, TUNE_SEED, "tune")
                for lr in grid]  # fmt: skip

    def choose(self, results: dict[str, dict]) -> dict[str, float | None]:
        """The chosen lr of every arm (lowest final validation loss), None if not yet known."""
        chosen: dict[str, float | None] = {}
        for _ in range(3):  # an arm's grid may depend on another's choice (one level deep)
            for arm in self.study.arms:
                if not arm.tuned or chosen.get(arm.label) is not None:
                    continue
                runs = self.tune_runs(arm, chosen)
                if runs is None or any(r.run_id not in results for r in runs):
                    chosen[arm.label] = None
                    continue
                scored = [(results[r.run_id].get("val_loss"), r.lr) for r in runs
                          if results[r.run_id].get("status") == "ok"]  # fmt: skip
                scored = [(v, lr) for v, lr in scored if v is not None and math.isfinite(v)]
                chosen[arm.label] = min(scored)[1] if scored else math.nan
        for arm in self.study.arms:
            if not arm.tuned:
                chosen[arm.label] = chosen.get(arm.lr_of)  # type: ignore[arg-type]
        return chosen

    def pair_runs(self, arm: Arm, lr: float) -> list[StabRun]:
        sp = self.study
        runs = []
        for k in range(self.pairs):
            seed = PAIR_SEED_BASE + k
            runs.append(self._run("pair", arm, lr, sp.n_main, sp.t_max, seed, "T"))
            if arm.n_design:
                runs += [self._run("pair", arm, lr, n, sp.t_fixed, seed, "N")
                         for n in sp.sizes if n != sp.n_main]  # fmt: skip
        return runs

    def plan(self, results: dict[str, dict]) -> list[_Plan]:
        chosen = self.choose(results)
        runs: list[StabRun] = []
        for arm in self.study.arms:
            if arm.tuned:
                runs += self.tune_runs(arm, chosen) or []
            lr = chosen.get(arm.label)
            if lr is not None and math.isfinite(lr):
                runs += self.pair_runs(arm, lr)
        return [_Plan(self.study.workload, runs, [r for r in runs if r.run_id not in results])]

    def run_counts(self) -> tuple[int, int]:
        sp = self.study
        tune = sum(len(a.grid) or len(a.scales) for a in sp.arms if a.tuned)
        extra = len([n for n in sp.sizes if n != sp.n_main])
        pairs = sum(self.pairs * (1 + (extra if a.n_design else 0)) for a in sp.arms)
        return tune + pairs, tune + pairs

    def estimated_seconds(self) -> float | None:
        """CPU seconds of the whole study on one core (:data:`MODEL_COSTS`); None without
        a measured cost for the preset's workload."""
        sp = self.study
        if sp.workload not in MODEL_COSTS:
            return None
        step, example = MODEL_COSTS[sp.workload]
        total = 0.0
        for arm in sp.arms:
            if arm.tuned:
                points = len(arm.grid) or len(arm.scales)
                evals = sp.test_size + sp.val_size + sp.n_main
                total += points * (sp.t_fixed * step / 2 + evals * example)
            for run in self.pair_runs(arm, 1.0):
                total += run.steps * step + len(run.log_at) * 2 * sp.test_size * example
        return total

    def describe(self) -> dict[str, Any]:
        sp = self.study
        return {
            "study": STUDY, "schema": SCHEMA, "preset": sp.name, "description": sp.description,
            "workload": sp.workload, "pairs": self.pairs, "n_main": sp.n_main, "t_max": sp.t_max,
            "t_fixed": sp.t_fixed, "sizes": list(sp.sizes), "batch": sp.batch,
            "nus": list(sp.nus), "nu_below_tau": NU_BELOW_TAU, "test_size": sp.test_size,
            "val_size": sp.val_size, "init_std": sp.init_std, "tune_seed": TUNE_SEED,
            "pair_seed_base": PAIR_SEED_BASE,
            "arms": [{"label": a.label, "name": a.name, "options": dict(a.options),
                      "grid": list(a.grid), "scale_of": a.scale_of, "scales": list(a.scales),
                      "lr_of": a.lr_of, "n_design": a.n_design} for a in sp.arms],
        }  # fmt: skip


def build_stability(preset: str, pairs: int | None = None) -> StabilityStudy:
    sp = get_stability_preset(preset)
    return StabilityStudy(sp, pairs if pairs is not None else sp.pairs)


# ------------------------------------------------------------------------------ running


class _InProcess:
    """Stands in for the fork launcher: nothing to start or close."""

    preload = False

    def close(self) -> None:
        pass


# the fields of a result file that resume and the report read, and their types
_RESULT_FIELDS: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "status": (str,), "stage": (str,), "design": (str,),
    "optimizer": (str,), "lr": (int, float), "n": (int,), "steps": (int,), "seed": (int,),
    "history": (list,), "wall_s": (int, float),
}  # fmt: skip


def stability_result_problem(data: Any) -> str | None:
    """Why a stability result file cannot be used (one line), or None if it can: a bad one
    is listed and its run redone, as for the benchmark's results."""
    if not isinstance(data, dict):
        return "not readable as JSON (truncated or corrupt)"
    if data.get("study") != STUDY:
        return "not a stability study's result"
    for key, kind in _RESULT_FIELDS.items():
        value = data.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"field {key!r} is {value!r}, expected {' or '.join(k.__name__ for k in kind)}"
    if data["status"] not in ("ok", "diverged", "failed"):
        return f"field 'status' is {data['status']!r}, expected ok, diverged or failed"
    if not all(isinstance(h, dict) for h in data["history"]):
        return "field 'history' holds something other than logged steps"
    return None


def make_runner(study: StabilityStudy, out: Path, progress: bool = True,
                retry_failed: bool = False):  # noqa: ANN201  # fmt: skip
    """A :class:`~clion_hf.bench.runner.Runner` whose runs execute in this process."""
    from .runner import Runner, environment_info

    class InProcessRunner(Runner):
        result_problem = staticmethod(stability_result_problem)

        def _start_launcher(self) -> None:
            self._launcher = _InProcess()  # type: ignore[assignment]

        def prepare(self) -> None:
            pass

        def execute(self, run: StabRun) -> dict | None:  # type: ignore[override]
            if self._stop.is_set():
                return None
            with self._lock:
                self.launched += 1
            try:
                result = execute_run(run, study.arm(run.optimizer))
            except Exception as err:  # a failed run is a result, not a crash of the study
                result = {"schema": SCHEMA, "study": STUDY, "run_id": run.run_id,
                          "status": "failed", "reason": f"{type(err).__name__}: {err}",
                          **asdict(run), "history": [], "wall_s": 0.0}  # fmt: skip
            if self._stop.is_set():
                return None
            result["environment"] = environment_info(self.recipes_dir)
            path = self.result_path(run)  # type: ignore[arg-type]
            path.parent.mkdir(parents=True, exist_ok=True)
            self.record(run, result)  # type: ignore[arg-type]
            return result

    from ..workloads import recipes_dir

    return InProcessRunner(study, out, recipes_dir() or Path(__file__).parent,  # type: ignore[arg-type]
                           jobs=1, progress=progress, retry_failed=retry_failed)  # fmt: skip


def dry_run_lines(study: StabilityStudy) -> Iterable[str]:
    sp = study.study
    n, _ = study.run_counts()
    yield f"# study stability, preset {sp.name}: {sp.description}"
    yield (f"# {n} runs (tuning runs, then {study.pairs} pairs per arm: one T-design run at "
           f"N = {sp.n_main}, T = {sp.t_max} and, where marked, N-design runs at N in "
           f"{list(sp.sizes)}, T = {sp.t_fixed}); all in this process")  # fmt: skip
    for a in sp.arms:
        if a.lr_of:
            src = f"at {a.lr_of}'s chosen lr"
        elif a.scale_of:
            src = f"lr = {a.scale_of}'s chosen lr x {[round(s, 4) for s in a.scales]}"
        else:
            src = f"lr grid {list(a.grid)}"
        yield f"#   {a.label}: {src}" + ("; N design" if a.n_design else "")
    if sp.workload != WORKLOAD:
        est = study.estimated_seconds()
        if est is None:
            yield f"# no measured cost for {sp.workload}: no time estimate"
        else:
            yield (f"# estimated {est / 3600:.1f} h of CPU time on one core ({est:.0f} s: "
                   f"{MODEL_COSTS[sp.workload][0]:g} s per pair-step, measured on this "
                   "project's shared 2-core host; a loaded host takes longer; the runs go one "
                   "at a time, one thread each)")  # fmt: skip
