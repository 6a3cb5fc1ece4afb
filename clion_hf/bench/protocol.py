"""The benchmark's protocol as data: runs, their outcome, and the search that picks them.

Shared by the runner (which runs what :meth:`Matrix.plan` asks for, round after round,
until it asks for nothing) and the report (which calls the same :meth:`Matrix.plan` on
the finished results, so the configuration it reports as chosen is the one the runner
chose). Pure functions of the results: a resumed runner, a second machine or the
report all reach the same decisions from the same result files.

Hand-written: the search (a grid extended at its edges, then one more hyper-parameter, or
the local search of a fixed spend) is the benchmark's declared protocol; a tuning library
would choose its own trials and could not be replayed from the result files alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from clion_hf._files import read_json

from .specs import (
    COMMON_RECIPE_ARGS,
    LR_STEP,
    WORKLOADS,
    OptimizerSpec,
    Preset,
    Search,
    WorkloadSettings,
    fmt_float,
    get_preset,
    parse_optimizer,
    round_sig,
    weight_decay_for,
)

SCHEMA = 2
LOSS_KEYS = ("loss", "eval_loss", "train_loss", "test_loss")
# A run whose last training loss is above this multiple of its first has exploded: it is
# "diverged" even when every number stayed finite (a loss of 5e13 is not a result).
EXPLODED_FACTOR = 3.0


# ------------------------------------------------------------------------------ one run


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run; its hash is the run id."""

    workload: str
    optimizer: str  # the row: canonical spec label
    lr: float
    weight_decay: float
    seed: int
    max_steps: int
    accelerate_config: str
    recipe_args: tuple[str, ...]  # the optimizer's and the preset's flags
    # not part of the id: where in the protocol the run sits
    phase: str = field(default="tune", compare=False)  # tune / final
    stage: str = field(default="lr", compare=False)  # lr, lr+, second, second+, final
    second: tuple[str, float] | None = field(default=None, compare=False)
    preset: str = field(default="", compare=False)
    # the local search's tuned values other than lr (beta2, wd_scale, nu); in recipe_args too
    params: tuple[tuple[str, float], ...] = field(default=(), compare=False)

    @property
    def run_id(self) -> str:
        key = {
            "workload": self.workload, "optimizer": self.optimizer, "lr": self.lr,
            "weight_decay": self.weight_decay, "seed": self.seed, "max_steps": self.max_steps,
            "accelerate_config": self.accelerate_config, "recipe_args": list(self.recipe_args),
        }  # fmt: skip
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return digest[:12]

    @property
    def stem(self) -> str:
        return f"{self.workload}-{self.run_id}"

    @property
    def title(self) -> str:
        extra = f" {self.second[0]}={fmt_float(self.second[1])}" if self.second else ""
        extra += "".join(f" {k}={fmt_float(v)}" for k, v in self.params if k != "wd_scale")
        return (
            f"{self.workload} {self.optimizer} lr={fmt_float(self.lr)} "
            f"wd={fmt_float(self.weight_decay)}{extra} seed={self.seed}"
        )

    def recipe_command(self, recipes_dir: Path, output_dir: Path) -> list[str]:
        """The recipe and its arguments (what follows ``accelerate launch ... --config_file``)."""
        return [
            str(recipes_dir / WORKLOADS[self.workload].recipe),
            "--output_dir", str(output_dir),
            "--learning_rate", fmt_float(self.lr), "--weight_decay", fmt_float(self.weight_decay),
            "--seed", str(self.seed), "--max_steps", str(self.max_steps),
            *self.recipe_args,
        ]  # fmt: skip

    def launch_command(self, recipes_dir: Path, output_dir: Path) -> list[str]:
        """The ``accelerate launch`` command of the run (what a user types to reproduce it)."""
        config = recipes_dir / "accelerate_configs" / f"{self.accelerate_config}.yaml"
        return [*accelerate_command(), "launch", "--config_file", str(config),
                *self.recipe_command(recipes_dir, output_dir)]  # fmt: skip


def run_args(spec: OptimizerSpec, preset: Preset, ws: WorkloadSettings,
             own: Iterable[str] = (), replaced: set[str] | frozenset[str] = frozenset()
             ) -> tuple[str, ...]:  # fmt: skip
    """A run's recipe flags after the hyper-parameters: the optimizer's, the ones every run
    has, the preset's (less the flags in ``replaced``, with their values), the workload's,
    then the experiment's ``own``. Every experiment builds its runs' flags here."""
    base, skip = [], False
    for a in preset.extra_args:
        if skip:
            skip = False
        elif a in replaced:
            skip = True  # and its value
        else:
            base.append(a)
    return (*spec.recipe_args(), *COMMON_RECIPE_ARGS, *base, *ws.extra_args, *own)


def accelerate_command() -> list[str]:
    """``accelerate`` of this interpreter's environment (falls back to ``python -m``)."""
    exe = Path(sys.executable).with_name("accelerate")
    if exe.is_file():
        return [str(exe)]
    return [sys.executable, "-m", "accelerate.commands.accelerate_cli"]


# ------------------------------------------------------------------------------ experiments


class Plan(Protocol):
    """Where one part of an experiment stands (:class:`RowPlan`, a study's plan)."""

    needed: list[RunConfig]  # runs to do next
    finals: list[RunConfig]
    trials: list  # of objects with .runs: the tuning runs the plan uses


class Experiment(Protocol):
    """What the :class:`~clion_hf.bench.runner.Runner` and the CLI need of an experiment:
    ``clion-bench run``'s :class:`Matrix` and ``study gen-gap``'s
    :class:`~clion_hf.bench.study.Study` implement it. Every method is a function of its
    arguments and the experiment, so a resumed runner plans exactly where it stopped."""

    preset: Preset  # the runs' device settings: environment, accelerate config, data flags
    workloads: list[str]

    @property
    def jobs(self) -> int:
        """Runs at a time unless ``--jobs`` says otherwise."""
        ...

    def plan(self, results: dict[str, dict]) -> Sequence[Plan]:
        """What is done and what runs next, given ``results`` (run id -> result)."""
        ...

    def run_counts(self) -> tuple[int, int]:
        """The fewest and the most runs it can take."""
        ...

    def estimated_seconds(self) -> tuple[float, float]:
        """Device time of the fewest and the most runs."""
        ...

    def describe(self) -> dict[str, Any]:
        """What ``bench.json`` records: enough to rebuild the experiment."""
        ...

    def dry_run_lines(self, recipes_dir: Path, out_dir: Path) -> Iterable[str]:
        """What ``--dry_run`` prints: counts, estimated time, the first commands."""
        ...


# ------------------------------------------------------------------------------ outcomes


def number(value: Any, finite: bool = True) -> float | None:
    """``value`` as a float; None if it is no number (a bool is none) or, with ``finite``,
    NaN or infinite. The one reading of a number from a result file or a summary row."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if not finite or math.isfinite(value) else None


def _finite(value: Any) -> bool:
    return not isinstance(value, int | float) or math.isfinite(value)


# ------------------------------------------------------------------------------ result files


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _real(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _iso(v: Any) -> bool:
    try:
        datetime.fromisoformat(v)
    except (TypeError, ValueError):
        return False
    return True


def _history(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(e, dict) and ("step" not in e or _int(e["step"])) for e in v)


def _environment(v: Any) -> bool:
    return v is None or (isinstance(v, dict) and isinstance(v.get("versions") or {}, dict))


def _second(v: Any) -> bool:
    return v is None or (isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)
                         and (v[1] is None or _real(v[1])))  # fmt: skip


def _opt(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


STATUSES = ("ok", "diverged", "failed")
# Every field of a result file that the runner, the protocol or a report reads, with the
# type they rely on: required ones first (a result without them is another version's).
_REQUIRED = {
    "optimizer": (lambda v: isinstance(v, str), "a string"),
    "lr": (_real, "a number"),
    "weight_decay": (_real, "a number"),
    "seed": (_int, "an integer"),
    "max_steps": (_int, "an integer"),
    "status": (lambda v: v in STATUSES, f"one of {', '.join(STATUSES)}"),
}
_OPTIONAL = {
    "phase": (lambda v: isinstance(v, str), "a string"),
    "stage": (lambda v: isinstance(v, str), "a string"),
    "reason": (lambda v: isinstance(v, str), "a string"),
    "second": (_second, "null or [name, number]"),
    "recipe_args": (lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v),
                    "a list of strings"),
    "all_results": (lambda v: isinstance(v, dict), "an object"),
    "log_history": (_history, "a list of objects with integer steps"),
    "environment": (_environment, "null or an object with an object of versions"),
    "started_at": (_opt(_iso), "null or an ISO time"),
    "finished_at": (_opt(_iso), "null or an ISO time"),
    "returncode": (_opt(_int), "null or an integer"),
    "jobs": (_opt(_int), "null or an integer"),
    "wall_s": (_opt(_real), "null or a number"),
    "cpu_s": (_opt(_real), "null or a number"),
    "load_avg_1m": (_opt(_real), "null or a number"),
}


def result_problem(data: Any) -> str | None:
    """Why a parsed result file cannot be used (one line), or None if it can.

    Checked on every read (runner, report, studies), so a truncated or hand-edited file is
    listed in the report and rerun on resume instead of crashing whoever reads it.
    """
    if not isinstance(data, dict):
        return "not readable as JSON (truncated or corrupt)"
    if not isinstance(data.get("run_id"), str) or data.get("workload") not in WORKLOADS:
        return "not a clion-bench result (no run id or workload)"
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        return f"missing fields {', '.join(missing)} (written by another version?)"
    for key, (check, what) in (_REQUIRED | _OPTIONAL).items():
        if key in data and not check(data[key]):
            return f"field {key!r} is {json.dumps(data[key])[:60]}, expected {what}"
    return None


def load_results(out_dir: Path, problem: Callable[[Any], str | None] = result_problem
                 ) -> tuple[list[dict], list[str]]:  # fmt: skip
    """Every usable result file under ``out_dir/results`` (sorted; ``problem`` says which
    are not: :func:`result_problem` unless a study passes its own), and one line per file
    that could not be used, saying why (its run is redone, the reports list it)."""
    results, problems = [], []
    for path in sorted((out_dir / "results").glob("*.json")):
        data = read_json(path)
        why = problem(data)
        if why is None:
            results.append(data)
        else:
            problems.append(f"`{path.name}`: {why}")
    return results, problems


def classify(returncode: int | None, all_results: dict | None, log_history: list[dict],
             log_tail: str = "") -> tuple[str, str]:  # fmt: skip
    """``(status, reason)`` of a run that ended on its own: ``ok``, ``diverged`` or ``failed``.

    Diverged: a logged loss or the final metric is NaN/inf, or the last training loss is
    above :data:`EXPLODED_FACTOR` times the first (a finite explosion). Failed: the recipe
    exited with an error (without a non-finite loss before it) or wrote no results.
    """
    res = all_results or {}
    for entry in [res, *log_history]:
        for key in (*LOSS_KEYS, "perplexity", "test_perplexity"):
            if key in entry and not _finite(entry[key]):
                return "diverged", f"{key} is {entry[key]}"
    train = [v for e in log_history
             if "loss" in e and (v := number(e["loss"], finite=False)) is not None]
    if len(train) >= 2 and train[0] > 0 and train[-1] > EXPLODED_FACTOR * train[0]:
        return "diverged", (f"training loss exploded: {train[-1]:.4g} at the end vs "
                            f"{train[0]:.4g} at the start")  # fmt: skip
    if returncode != 0:
        lowered = log_tail.lower()
        if any(f"'{k}': '{bad}" in lowered for k in ("loss", "eval_loss")
               for bad in ("nan", "inf", "-inf")):  # fmt: skip
            return "diverged", f"exit status {returncode} after a NaN/inf loss in the log"
        return "failed", f"exit status {returncode}"
    if all_results is None:
        return "failed", "exit status 0 but no all_results.json"
    return "ok", ""


def final_metric(result: dict) -> float | None:
    """The run's final validation metric, None if it has none (or it is not finite)."""
    workload = WORKLOADS[result["workload"]]
    res = result.get("all_results") or {}
    value = number(res.get(workload.metric), finite=False)
    if (value is None and workload.metric == "perplexity"
            and number(res.get("eval_loss"), finite=False) is not None):
        value = workload.curve_to_metric(res["eval_loss"])
    return value if value is not None and math.isfinite(value) else None


def test_metric(result: dict) -> float | None:
    """The run's metric on the held-out test split, None if the recipe had none."""
    workload = WORKLOADS[result["workload"]]
    res = result.get("all_results") or {}
    if workload.metric == "perplexity":
        value = number(res.get("test_perplexity"), finite=False)
        if value is None and number(res.get("test_loss"), finite=False) is not None:
            value = workload.curve_to_metric(res["test_loss"])
    else:
        value = number(res.get(workload.metric.replace("eval_", "test_", 1)), finite=False)
    return value if value is not None and math.isfinite(value) else None


def selection_value(result: dict) -> float | None:
    """What the search minimizes for one run: the final validation loss for language models
    (log perplexity: averaging it over seeds averages perplexity geometrically), minus the
    validation accuracy for classifiers. None unless the run is ``ok`` with a finite value."""
    if result.get("status") != "ok":
        return None
    workload = WORKLOADS[result["workload"]]
    if workload.metric == "perplexity":
        value = number((result.get("all_results") or {}).get("eval_loss"), finite=False)
    else:
        value = final_metric(result)
        value = -value if value is not None else None
    return value if value is not None and math.isfinite(value) else None


# ------------------------------------------------------------------------------ the search


@dataclass
class Trial:
    """One configuration of a row, with its tuning runs."""

    lr: float
    second: float | None  # the second hyper-parameter's value (None: the row has none)
    stage: str
    runs: list[RunConfig]
    results: list[dict | None]
    # the local search: the tuned values other than lr, and the point's grid indices
    params: tuple[tuple[str, float], ...] = ()
    point: tuple[int, ...] | None = None

    @property
    def score(self) -> float | None:
        """Mean selection value over the tuning seeds; None if incomplete or any seed is not ok."""
        values = [selection_value(r) if r is not None else None for r in self.results]
        if not values or any(v is None for v in values):
            return None
        return sum(values) / len(values)  # type: ignore[arg-type]

    @property
    def key(self) -> tuple[float, float | None]:
        return (self.lr, self.second)


def _best(trials: Iterable[Trial]) -> Trial | None:
    """Lowest score (ties: the smaller lr, then the smaller second value)."""
    scored = [t for t in trials if t.score is not None]
    if not scored:
        return None
    return min(scored, key=lambda t: (t.score, t.lr, t.second or 0.0))


def _next_point(dims: tuple[Any, ...], tried: dict[tuple[int, ...], Trial],
                best: Trial | None, probe: bool = False) -> tuple[int, ...] | None:  # fmt: skip
    """The local search's next configuration (see :meth:`Matrix._plan_local`): first, in
    the order of ``dims`` (with ``probe``, the dimensions with fewer than 3 values tried
    before the others), one step past the best point in a dimension where its value is the
    smallest or largest tried there (an edge); with no edge left, the untried point nearest
    to the best one along a single dimension."""
    if best is None:  # nothing ok yet: the next smaller lr, the other dimensions at start
        low = min(p[0] for p in tried) - 1
        point = (low, *(0,) * (len(dims) - 1))
        return point if dims[0].in_bounds(low) and point not in tried else None
    assert best.point is not None
    here = best.point

    def moved(i: int, k: int) -> tuple[int, ...]:
        return here[:i] + (k,) + here[i + 1 :]

    # With probe: a dimension with fewer than 3 values tried comes first (the lr grid has 3),
    # so that every dimension is bracketed once before any edge is followed further.
    order = list(enumerate(dims))
    if probe:
        order.sort(key=lambda item: len({p[item[0]] for p in tried}) >= 3)
    for i, d in order:
        values = [p[i] for p in tried]
        for k, edge in ((here[i] - 1, here[i] == min(values)),
                        (here[i] + 1, here[i] == max(values))):  # fmt: skip
            if edge and d.in_bounds(k) and moved(i, k) not in tried:
                return moved(i, k)
    for distance in range(1, 64):
        for i, d in enumerate(dims):
            for k in (here[i] - distance, here[i] + distance):
                if d.in_bounds(k) and moved(i, k) not in tried:
                    return moved(i, k)
    return None


@dataclass
class RowPlan:
    """Where one (workload, optimizer) row stands."""

    workload: str
    optimizer: str
    search: Search
    trials: list[Trial] = field(default_factory=list)
    needed: list[RunConfig] = field(default_factory=list)  # runs to do next (one round)
    best_lr_trial: Trial | None = None  # best of the lr stage
    chosen: Trial | None = None
    lr_extensions: list[float] = field(default_factory=list)
    second_extensions: list[float] = field(default_factory=list)
    lr_on_edge: bool = False  # optimum still on an edge of the (extended) lr grid
    second_on_edge: bool = False
    edges: list[str] = field(default_factory=list)  # local search: dimensions on an edge
    finals: list[RunConfig] = field(default_factory=list)
    final_results: list[dict | None] = field(default_factory=list)

    @property
    def inconclusive(self) -> bool:
        return self.lr_on_edge or self.second_on_edge

    @property
    def trials_used(self) -> int:
        return len(self.trials)


@dataclass
class Matrix:
    """A preset restricted to some workloads/optimizers/seeds, ready to plan and run."""

    preset: Preset
    workloads: list[str]
    optimizers: list[OptimizerSpec]
    tuning_seeds: tuple[int, ...]
    final_seeds: tuple[int, ...]
    max_steps: int | None = None

    # -------------------------------------------------------------- runs

    def row_specs(self, workload: str) -> list[OptimizerSpec]:
        """The matrix's optimizers that run on ``workload`` (a preset may restrict a
        workload to some of them: the ladder's larger rungs)."""
        keep = self.preset.settings(workload, self.max_steps).optimizers
        return [s for s in self.optimizers if not keep or s.label in keep]

    def coupling(self, workload: str) -> float:
        return self.preset.coupling(self.preset.settings(workload, self.max_steps))

    def search(self, workload: str, spec: OptimizerSpec) -> Search:
        return self.preset.search(spec, self.preset.settings(workload, self.max_steps))

    def make_run(self, workload: str, spec: OptimizerSpec, lr: float, second: float | None,
                 seed: int, stage: str,
                 params: tuple[tuple[str, float], ...] = ()) -> RunConfig:  # fmt: skip
        ws = self.preset.settings(workload, self.max_steps)
        search = self.preset.search(spec, ws)
        scale, run_spec, tag = 1.0, spec, None
        if search.second == "wd_scale" and second is not None:
            scale, tag = second, ("wd_scale", second)
        elif search.second == "nu" and second is not None:
            run_spec, tag = spec.with_option("nu", second), ("nu", second)
        for key, value in params:  # the local search's values
            if key == "wd_scale":
                scale = value
            else:
                run_spec = run_spec.with_option(key, value)
        args = run_args(run_spec, self.preset, ws)
        return RunConfig(
            workload=workload, optimizer=spec.label, lr=lr,
            weight_decay=weight_decay_for(lr, scale, self.preset.coupling(ws)), seed=seed,
            max_steps=ws.max_steps, accelerate_config=self.preset.accelerate_config,
            recipe_args=tuple(args), phase="final" if stage == "final" else "tune",
            stage=stage, second=tag, preset=self.preset.name, params=tuple(params),
        )  # fmt: skip

    # -------------------------------------------------------------- the plan

    def plan(self, results: dict[str, dict]) -> list[RowPlan]:
        """Every row's state given ``results`` (run id -> result), and the runs it needs next."""
        return [self.plan_row(w, s, results) for w in self.workloads for s in self.row_specs(w)]

    def plan_row(self, workload: str, spec: OptimizerSpec, results: dict[str, dict]) -> RowPlan:
        search = self.search(workload, spec)
        row = RowPlan(workload, spec.label, search)
        if search.local:
            return self._plan_local(row, spec, results)
        default = search.second_default if search.second else None
        trials: dict[tuple[float, float | None], Trial] = {}

        def trial(lr: float, second: float | None, stage: str) -> Trial:
            if (lr, second) not in trials:
                runs = [self.make_run(workload, spec, lr, second, s, stage)
                        for s in self.tuning_seeds]  # fmt: skip
                trials[(lr, second)] = Trial(lr, second, stage, runs,
                                             [results.get(r.run_id) for r in runs])  # fmt: skip
                row.trials.append(trials[(lr, second)])
            return trials[(lr, second)]

        def missing(ts: list[Trial]) -> list[RunConfig]:
            return [r for t in ts for r, res in zip(t.runs, t.results, strict=True) if res is None]

        # stage 1: the lr grid, extended while the best point sits on an edge
        lr_trials = [trial(lr, default, "lr") for lr in search.lrs]
        while True:
            row.needed = missing(lr_trials)
            if row.needed:
                return row
            lrs = sorted(t.lr for t in lr_trials)
            best = _best(lr_trials)
            if best is None:  # nothing finished ok: smaller lrs are the way out
                candidate = round_sig(lrs[0] / LR_STEP)
            elif len(lrs) > 1 and best.lr == lrs[0]:
                candidate = round_sig(lrs[0] / LR_STEP)
            elif len(lrs) > 1 and best.lr == lrs[-1]:
                candidate = round_sig(lrs[-1] * LR_STEP)
            else:
                candidate = None
            if candidate is None:
                break
            if len(row.lr_extensions) >= search.lr_extend:
                row.lr_on_edge = best is not None or len(lrs) > 1
                break
            row.lr_extensions.append(candidate)
            lr_trials.append(trial(candidate, default, "lr+"))
        row.best_lr_trial = best
        if best is None:
            return row  # no lr finished ok: no choice, no final runs

        # stage 2: the second hyper-parameter at the best lr, extended the same way
        if search.second:
            second_trials = [best] + [trial(best.lr, v, "second")
                                      for v in search.second_values if v != default]
            while True:
                row.needed = missing(second_trials)
                if row.needed:
                    return row
                values = sorted(t.second for t in second_trials if t.second is not None)
                top = _best(second_trials) or best
                if top.second == search.second_floor:
                    candidate = None  # a bound of the space (no decay), not an edge
                elif top.second == values[0]:
                    candidate = round_sig(values[0] / search.second_factor)
                elif top.second == values[-1]:
                    candidate = round_sig(values[-1] * search.second_factor)
                else:
                    candidate = None
                if candidate is None:
                    break
                if len(row.second_extensions) >= search.second_extend:
                    row.second_on_edge = True
                    break
                row.second_extensions.append(candidate)
                second_trials.append(trial(best.lr, candidate, "second+"))

        # the choice, then the final seeds
        row.chosen = _best(row.trials)
        assert row.chosen is not None
        row.finals = [self.make_run(workload, spec, row.chosen.lr, row.chosen.second, s, "final")
                      for s in self.final_seeds]  # fmt: skip
        row.final_results = [results.get(r.run_id) for r in row.finals]
        row.needed = [r for r, res in zip(row.finals, row.final_results, strict=True)
                      if res is None]  # fmt: skip
        return row

    def _plan_local(self, row: RowPlan, spec: OptimizerSpec, results: dict[str, dict]
                    ) -> RowPlan:  # fmt: skip
        """The local search: exactly ``search.trials`` configurations per row.

        It starts with the first lr grid at every other dimension's start, then adds one
        configuration at a time around the best one so far: one step further in a
        dimension where the best value is the smallest or largest tried there (in the
        order of ``search.dims``, the smaller value first), so that every dimension's
        optimum is bracketed and a grid whose optimum sits on its edge is extended; with
        no edge left, the untried point nearest to the best along a single dimension
        (fewest grid steps), i.e. a closer look around the optimum. If no trial
        finished ok, it tries the next smaller lr. Once the spend is reached, the chosen
        point is on an edge in a dimension where its value is the smallest or the largest
        tried there and the space goes on beyond it (a bound of the space, such as no
        weight decay or beta2's last declared value, is not an edge): the row is
        inconclusive. As in the coordinate search, this reads the dimensions one at a time.
        """
        search, dims, workload = row.search, row.search.dims, row.workload
        trials: dict[tuple[int, ...], Trial] = {}

        def trial(point: tuple[int, ...], stage: str) -> None:
            params = tuple((d.name, d.value(k)) for d, k in zip(dims[1:], point[1:], strict=True))
            lr = dims[0].value(point[0])
            runs = [self.make_run(workload, spec, lr, None, s, stage, params)
                    for s in self.tuning_seeds]  # fmt: skip
            trials[point] = Trial(lr, None, stage, runs, [results.get(r.run_id) for r in runs],
                                  params, point)  # fmt: skip
            row.trials.append(trials[point])

        rest = (0,) * (len(dims) - 1)
        n = len(search.lrs)
        for k in range(-((n - 1) // 2), n - (n - 1) // 2):
            if dims[0].in_bounds(k):
                trial((k, *rest), "lr")
        while True:
            row.needed = [r for t in row.trials
                          for r, res in zip(t.runs, t.results, strict=True) if res is None]
            if row.needed or len(trials) >= search.trials:
                break
            point = _next_point(dims, trials, _best(row.trials), search.probe)
            if point is None:  # a bounded space, all of it tried
                break
            trial(point, "local")
        if row.needed:
            return row
        best = _best(row.trials)
        initial = set(search.lrs)
        row.lr_extensions = sorted({t.lr for t in row.trials} - initial)
        if best is None:  # nothing finished ok: smaller lrs would have been next
            row.edges = ["lr"] if dims[0].in_bounds(min(trials)[0] - 1) else []
            row.lr_on_edge = bool(row.edges)
            return row
        assert best.point is not None
        for i, d in enumerate(dims):  # an edge: the smallest or largest value tried
            tried = [p[i] for p in trials]
            k = best.point[i]
            if (k == min(tried) and d.in_bounds(k - 1)) or (k == max(tried) and d.in_bounds(k + 1)):
                row.edges.append(d.name)
        row.lr_on_edge = "lr" in row.edges
        row.second_on_edge = any(e != "lr" for e in row.edges)
        row.best_lr_trial = row.chosen = best
        row.finals = [self.make_run(workload, spec, best.lr, None, s, "final", best.params)
                      for s in self.final_seeds]  # fmt: skip
        row.final_results = [results.get(r.run_id) for r in row.finals]
        row.needed = [r for r, res in zip(row.finals, row.final_results, strict=True)
                      if res is None]  # fmt: skip
        return row

    # -------------------------------------------------------------- sizes and records

    def run_counts(self) -> tuple[int, int]:
        """The fewest and the most runs the matrix can take (extensions are data-dependent)."""
        lo = hi = 0
        n_tune, n_final = len(self.tuning_seeds), len(self.final_seeds)
        for w in self.workloads:
            for s in self.row_specs(w):
                search = self.search(w, s)
                lo += search.min_trials * n_tune + n_final
                hi += search.budget * n_tune + n_final
        return lo, hi

    def run_seconds(self, workload: str) -> float:
        """Device time of one run of ``workload``, from the preset's cost model."""
        ws = self.preset.settings(workload, self.max_steps)
        return ws.cost.run_s(ws.max_steps)

    def estimated_seconds(self) -> tuple[float, float]:
        """Device time of the fewest and the most runs, from the preset's cost model."""
        lo = hi = 0.0
        n_tune, n_final = len(self.tuning_seeds), len(self.final_seeds)
        for w in self.workloads:
            each = self.run_seconds(w)
            for s in self.row_specs(w):
                search = self.search(w, s)
                lo += each * (search.min_trials * n_tune + n_final)
                hi += each * (search.budget * n_tune + n_final)
        jobs = max(1, self.preset.jobs)
        return lo / jobs, hi / jobs

    def estimate_text(self) -> str:
        """``55 min to 2 h``: :meth:`estimated_seconds` as ``clion-bench run --dry_run``
        prints it (the same rounding)."""
        return span_text(*self.estimated_seconds())

    @property
    def jobs(self) -> int:
        return self.preset.jobs

    def dry_run_lines(self, recipes_dir: Path, out_dir: Path) -> Iterable[str]:
        """The run counts, the estimated device time and the first round's commands."""
        preset = self.preset
        lo, hi = self.run_counts()
        n_rows = sum(len(self.row_specs(w)) for w in self.workloads)
        yield f"# preset {preset.name}: {preset.description}"
        yield (f"# {n_rows} (workload, optimizer) rows; tuning seeds {list(self.tuning_seeds)}, "
               f"final seeds {list(self.final_seeds)}")  # fmt: skip
        if lo == hi:  # the local search: a fixed spend
            yield f"# runs: {lo} (every row spends the same trials); {preset.jobs} at a time"
        else:
            yield (f"# runs: {lo} to {hi} (the search extends a grid only when its optimum is "
                   f"on an edge); {preset.jobs} at a time")  # fmt: skip
        yield f"# estimated device time: {self.estimate_text()} (cost model: {preset.cost_note})"
        for w in self.workloads:
            ws = preset.settings(w, self.max_steps)
            c = ws.cost
            yield (f"#   {w}: {ws.max_steps} steps, {c.run_s(ws.max_steps):.0f} s per run = "
                   f"{c.startup_s:g} s set-up + {ws.max_steps} x {c.step_s:g} s + {c.eval_s:g} s "
                   f"evaluation")  # fmt: skip
        for w in self.workloads:
            for s in self.row_specs(w):
                yield f"# search {w} {s.label}: {self.search(w, s).describe()}"
        yield "# first round (the rest depends on its results):"
        for plan in self.plan({}):
            for run in plan.needed:
                yield shlex.join(run.launch_command(recipes_dir, out_dir / "work" / run.run_id))

    def describe(self) -> dict[str, Any]:
        """What ``bench.json`` records: enough to rebuild this matrix (:func:`matrix_from`)."""
        searches = {}
        for w in self.workloads:
            searches[w] = {}
            for s in self.row_specs(w):
                search = self.search(w, s)
                searches[w][s.label] = {
                    "lrs": list(search.lrs), "lr_extend": search.lr_extend,
                    "second": search.second, "second_values": list(search.second_values),
                    "second_extend": search.second_extend, "budget": search.budget,
                }  # fmt: skip
                if search.local:
                    searches[w][s.label]["dims"] = {
                        d.name: [d.value(k) for k in range(-2, 3) if d.in_bounds(k)]
                        for d in search.dims
                    }  # fmt: skip
        return {
            "schema": SCHEMA,
            "preset": self.preset.name,
            "workloads": self.workloads,
            "optimizers": [s.label for s in self.optimizers],
            "tuning_seeds": list(self.tuning_seeds),
            "final_seeds": list(self.final_seeds),
            "max_steps_override": self.max_steps,
            "max_steps": {
                w: self.preset.settings(w, self.max_steps).max_steps for w in self.workloads
            },  # fmt: skip
            "wd_coupling": {w: self.coupling(w) for w in self.workloads},
            "wd_removal": self.preset.wd_removal,
            "primary": [list(p) for p in self.preset.primary],
            "equivalence_margin": dict(self.preset.equivalence_margin),
            "search": searches,
        }


def duration_text(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.0f} h"


def span_text(low: float, high: float) -> str:
    """``55 min to 2 h``, or ``55 min`` when both ends read the same."""
    lo, hi = duration_text(low), duration_text(high)
    return lo if lo == hi else f"{lo} to {hi}"


def matrix_from(description: Any) -> Matrix | None:
    """Rebuild the :class:`Matrix` that wrote ``bench.json``; None if it cannot be."""
    try:
        if description.get("schema") != SCHEMA:
            return None
        return Matrix(
            get_preset(description["preset"]),
            [w for w in description["workloads"] if w in WORKLOADS],
            [parse_optimizer(o) for o in description["optimizers"]],
            tuple(int(s) for s in description["tuning_seeds"]),
            tuple(int(s) for s in description["final_seeds"]),
            _max_steps_override(description.get("max_steps_override")),
        )
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _max_steps_override(value: Any) -> int | None:
    if value is not None and not (_int(value) and value >= 1):
        raise ValueError(f"max_steps_override {value!r}")
    return value
