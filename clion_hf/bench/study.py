"""``clion-bench study gen-gap``: the paper's generalization claim, measured directly.

The paper (arXiv:2604.14587) bounds Lion's generalization error by O(1/(N·τ^T)) and CLion's by
O(1/N), N the number of training examples and τ the smallest non-zero ``abs(c)`` of the
update direction. This study trains each optimizer, at its tuned hyper-parameters, on
nested subsets of N = N_max/2^k training examples (``--train_subset_size``, see
:mod:`clion_hf.workloads.gen_gap`), several seeds each, and records at every evaluation
the loss on the whole subset (eval mode) and on held-out data: the gap is their
difference. Two stopping rules are read from the same runs:

* fixed steps: the gap at the end of the run;
* matched training loss: the gap at the first evaluation where the subset's training
  loss reaches a target common to every optimizer and N of the workload (the highest
  final training loss among the runs that train, so that each reaches it). This
  is exactly what a run with ``--stop_at_train_loss`` and the same evaluation interval
  records when it stops: nothing before the stop depends on it (same seed, data order
  and lr schedule), so the study does not run every configuration twice.

A preset with a batch size (``cpu-v2``) runs a second design beside the fixed step count:
fixed epochs, each size trained for the same number of passes E over its N examples,
``steps(N) = max(floor, ceil(E · ceil(N / batch)))`` (``ceil(N / batch)``: the Trainer's
steps per epoch, one batch of N when N < batch). E is the fixed-steps run's epochs at
N_max, so the two designs share their N_max runs (same run, same id: run once). The floor
(:attr:`GapSettings.min_steps`) keeps the evaluations the matched rule reads: the
evaluation interval scales with the run's steps (about 20 evaluations per run), and below
20 steps it cannot. Sizes on the floor train more than E epochs; the report shows each
size's epochs. With a declared plateau (the unigram level for gpt2, chance ``ln(classes)``
for vit, from :func:`clion_hf.bench.ladder.plateau_levels`), arms whose final training
loss is not clearly below it are left out of the matched target (see
:mod:`clion_hf.bench.study_report`).

Lion's τ_t comes from its opt-in ``track_stats``; CLion records it always. A ν sweep
(CLion at the tuned element lr, ν from below the observed τ to far above) shows where the
threshold changes anything.

This module only defines the runs; :class:`~clion_hf.bench.runner.Runner` runs them (the
same fork launcher, result files, resumption and locking as ``clion-bench run``: a
:class:`Study` is an :class:`~clion_hf.bench.protocol.Experiment`, as the benchmark's
:class:`~clion_hf.bench.protocol.Matrix` is), and :mod:`clion_hf.bench.study_report`
analyses them. Hand-written for the reasons of :mod:`clion_hf.bench.protocol`: the runs
are a pure function of the study's settings and the tuned run's results.
"""

from __future__ import annotations

import functools
import math
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clion_hf._files import read_json

from .protocol import Matrix, RunConfig, matrix_from, run_args, span_text
from .specs import (
    OptimizerSpec,
    Preset,
    SpecError,
    fmt_float,
    get_preset,
    weight_decay_for,
)

STUDY_SCHEMA = 1
MIN_SIZES = 5  # the floor for the cpu/gpu presets; smoke may use fewer


@dataclass(frozen=True)
class GapSettings:
    """One workload of a study preset."""

    n_max: int  # largest training subset (examples: blocks for LMs, images for ViT)
    max_steps: int
    eval_every: int  # steps between gap evaluations (the matched-loss rule's resolution)
    log_every: int  # steps between training logs (tau_t's resolution)
    nu_size: int  # N of the nu sweep
    eval_example_s: float  # cost model: seconds to evaluate one example (dry run)
    # the fixed-epoch design (0: none): the batch it passes (--per_device_train_batch_size)
    batch: int = 0
    min_steps: int = 1  # the fixed-epoch design's floor (see the module doc)
    plateau: str = ""  # "unigram" / "chance": arms not below it are not matched; "": none
    heldout_eval_s: float | None = None  # cost model: one held-out evaluation (else base's)


@dataclass(frozen=True)
class StudyPreset:
    name: str
    description: str
    base: str  # the clion-bench preset whose device, data flags and cost model runs use
    workloads: dict[str, GapSettings]
    optimizers: tuple[str, ...]
    seeds: tuple[int, ...]
    sizes: int = MIN_SIZES
    nu_values: tuple[float, ...] = ()  # CLion element's sweep
    nu_global: tuple[float, ...] = ()  # CLion global's points (below and above tau)
    nu_seeds: tuple[int, ...] = ()
    jobs: int = 1
    extra_args: tuple[str, ...] = ()  # appended to every run (after the base's)
    defaults: tuple[str, ...] = ()  # the workloads run without --workloads (): all of them

    @property
    def base_preset(self) -> Preset:
        return get_preset(self.base)


_NU_SWEEP = (1e-30, 1e-7, 1e-5, 1e-4, 1e-3, 1e-2)
_CPU_EXTRA = ("--max_test_samples", "64")  # the test split is not used here: keep it cheap

STUDY_PRESETS: dict[str, StudyPreset] = {}
STUDY_PRESETS["smoke"] = StudyPreset(
    name="smoke",
    description="checks that the study runs: vit-pretrain on digits, tiny subsets, 20 steps "
    "(fixed steps) and 10 epochs (fixed epochs)",
    base="cpu",
    # both designs (fixed epochs: 20, 10, 10 steps) and the chance plateau, as cpu-v2
    workloads={"vit-pretrain": GapSettings(64, 20, 5, 5, 16, 0.0005, batch=32, min_steps=5,
                                           plateau="chance")},  # fmt: skip
    optimizers=("lion", "clion:mode=element"),
    seeds=(100, 101),
    sizes=3,
    nu_values=(1e-30, 1e-2),
    nu_seeds=(100,),
    jobs=2,
    extra_args=_CPU_EXTRA,
)
STUDY_PRESETS["cpu"] = StudyPreset(
    name="cpu",
    description="offline, CPU: gpt2-pretrain (pydoc text, 64-token blocks) and vit-pretrain "
    "(digits 0-4), AdamW, Lion, CLion global and element at the cpu benchmark's tuned "
    "hyper-parameters, 5 nested sizes x 3 seeds, a ν sweep at one size",
    base="cpu",
    workloads={
        "gpt2-pretrain": GapSettings(2048, 200, 20, 5, 512, 0.0007),
        "vit-pretrain": GapSettings(448, 200, 10, 5, 112, 0.0004),
    },
    optimizers=("adamw", "lion", "clion", "clion:mode=element"),
    seeds=(100, 101, 102),
    nu_values=_NU_SWEEP,
    nu_global=(1e-30, 1e-4),
    nu_seeds=(100, 101),
    jobs=2,
    extra_args=_CPU_EXTRA,
)
# cpu-v2: a gap-vs-N design that can inform. The @64 rungs are the tiny
# models of the cpu preset, run as the cpu-ladder preset runs them, so the ladder's tuned rows
# apply (--tuned docs/benchmarks/ladder-cpu-2026-12-06 once it has finished). N spans 2.1
# decades: gpt2 4096 -> 32 blocks of 64 tokens (the offline split has 8962; 8192 would double
# the subset evaluations' cost and give 1.2 epochs at 600 steps), vit 448 -> 3 images (the
# offline split of digits 0-4 has 450 training images and no data flag enlarges it: its
# 50/25/25 split is fixed). 600 steps as the ladder tuned them; 20 evaluations per run.
# gpt2@64's costs are its first 43 runs' CPU seconds (gen-gap-v2-gpt2-2026-12-06): 41.4 s at
# N = 512 to 92.7 s at N = 4096 at 600 steps, i.e. 0.0007 s per subset example evaluated and
# 0.55 s per evaluation besides it (the held-out sample, the evaluation loop's set-up).
_V2_SEEDS = tuple(range(100, 110))
STUDY_PRESETS["cpu-v2"] = StudyPreset(
    name="cpu-v2",
    description="offline, CPU: gpt2-pretrain@64 and vit-pretrain@64 (the cpu-ladder rungs of "
    "the tiny models), AdamW, Lion, CLion global and element at the ladder's tuned "
    "hyper-parameters, 8 nested sizes over 2 decades x 10 seeds, fixed steps and fixed "
    "epochs, no ν sweep",
    base="cpu-ladder",
    workloads={
        "gpt2-pretrain@64": GapSettings(4096, 600, 30, 6, 4096, 0.0007, batch=16,
                                        min_steps=20, plateau="unigram", heldout_eval_s=0.55),
        "vit-pretrain@64": GapSettings(448, 600, 30, 6, 448, 0.0004, batch=32, min_steps=20,
                                       plateau="chance", heldout_eval_s=0.1),
        # opt-in (--workloads): the width-128 rungs, evaluation costs scaled as the ladder's
        "gpt2-pretrain@128": GapSettings(4096, 600, 30, 6, 4096, 0.002, batch=16,
                                         min_steps=20, plateau="unigram", heldout_eval_s=0.5),
        "vit-pretrain@128": GapSettings(448, 600, 30, 6, 448, 0.0005, batch=32, min_steps=20,
                                        plateau="chance", heldout_eval_s=0.13),
    },  # fmt: skip
    optimizers=("adamw", "lion", "clion", "clion:mode=element"),
    seeds=_V2_SEEDS,
    sizes=8,
    jobs=2,
    extra_args=_CPU_EXTRA,
    defaults=("gpt2-pretrain@64", "vit-pretrain@64"),
)
STUDY_PRESETS["gpu"] = replace(
    STUDY_PRESETS["cpu"],
    name="gpu",
    description="online, one GPU: gpt2-pretrain on wikitext-103 (GPT-2 124M, 1024-token "
    "blocks) and vit-pretrain on CIFAR-10 (ViT-B/16), the gpu preset's steps and data flags, "
    "5 nested sizes x 3 seeds, a ν sweep at one size",
    base="gpu",
    workloads={
        # 5000 steps x 16 blocks = 80k blocks seen: N_max = 65536 is ~1.2 epochs
        "gpt2-pretrain": GapSettings(65536, 5000, 500, 50, 16384, 0.004),
        # 5000 steps x 128 images: N_max = 32768 (of CIFAR-10's 47500 after the 5% split)
        "vit-pretrain": GapSettings(32768, 5000, 500, 50, 8192, 0.0005),
    },
    jobs=1,
    extra_args=("--max_test_samples", "512"),
)


def get_study_preset(name: str) -> StudyPreset:
    if name not in STUDY_PRESETS:
        raise SpecError(f"unknown study preset {name!r}; allowed: {', '.join(STUDY_PRESETS)}")
    return STUDY_PRESETS[name]


def epoch_steps(n: int, gs: GapSettings) -> int:
    """Steps of the fixed-epoch design at size ``n``: ``max(floor, ceil(E · ceil(n/batch)))``
    with ``E = max_steps / ceil(n_max/batch)`` (exact integer arithmetic, so that N_max gets
    ``max_steps``)."""
    if gs.batch < 1:
        raise SpecError("this study preset has no fixed-epoch design (no batch size)")
    per_epoch, top = -(-n // gs.batch), -(-gs.n_max // gs.batch)
    return max(gs.min_steps, -(-gs.max_steps * per_epoch // top))


def design_steps(gs: GapSettings, sizes: Iterable[int]) -> dict[str, dict[int, int]]:
    """Design -> N -> steps: fixed steps always, fixed epochs where the preset has a batch."""
    out = {"steps": {n: gs.max_steps for n in sizes}}
    if gs.batch:
        out["epochs"] = {n: epoch_steps(n, gs) for n in sizes}
    return out


@functools.cache
def plateau_level(workload: str, kind: str) -> float:
    """The training-loss level an arm must get clearly below to count as training: the
    unigram model's held-out cross-entropy (nats per token) for a language model, chance
    ``ln(classes)`` for a classifier; from :func:`clion_hf.bench.ladder.plateau_levels` on the
    workload's offline data (a rung has its base's: same data and vocabulary)."""
    from .ladder import plateau_levels
    from .specs import WORKLOADS

    base = WORKLOADS[workload].base or workload
    levels = plateau_levels(base)
    if kind == "unigram" and "unigram" in levels:
        return levels["unigram"]
    if kind == "chance" and "chance" in levels:
        return -math.log(levels["chance"])
    raise SpecError(f"no {kind!r} plateau level for {workload!r} (it has: "
                    f"{', '.join(levels) or 'none'})")  # fmt: skip


def sizes_of(n_max: int, count: int) -> tuple[int, ...]:
    """``n_max, n_max/2, ...``: ``count`` nested sizes, largest first (each >= 1)."""
    if count < 2:
        raise SpecError(f"--sizes {count} must be >= 2 (a slope needs two sizes)")
    if n_max >> (count - 1) < 1:
        raise SpecError(f"--sizes {count}: N_max = {n_max} halves to below 1 example")
    return tuple(n_max >> k for k in range(count))


# ------------------------------------------------------------------------------ rows


@dataclass(frozen=True)
class StudyRow:
    """One optimizer of the study at its hyper-parameters."""

    label: str  # the user's spec label: the row's name in the report
    spec: OptimizerSpec  # what runs (tuned nu, Lion's track_stats)
    lr: float
    weight_decay: float
    source: str  # where lr/wd came from


def _row_spec(spec: OptimizerSpec) -> OptimizerSpec:
    """The spec that runs: without ``lr`` (passed as --learning_rate); Lion records tau."""
    run = OptimizerSpec(spec.name, tuple((k, v) for k, v in spec.options if k != "lr"))
    return run.with_option("track_stats", True) if spec.name == "lion" else run


def load_tuned(tuned_dir: Path) -> tuple[Matrix, dict[str, dict]]:
    """The :class:`Matrix` and results of a ``clion-bench run`` directory (its result files,
    else the summary rows of its committed ``results.csv``); :class:`SpecError` if unusable."""
    from .report import as_result, rows_from_csv
    from .runner import load_result_files

    matrix = matrix_from(read_json(tuned_dir / "bench.json"))
    if matrix is None:
        raise SpecError(f"--tuned {tuned_dir}: no readable bench.json of this version "
                        "(expected a `clion-bench run` output directory)")  # fmt: skip
    results = load_result_files(tuned_dir) if (tuned_dir / "results").is_dir() else {}
    if not results and (tuned_dir / "results.csv").is_file():
        rows = rows_from_csv((tuned_dir / "results.csv").read_text())
        results = {r["run_id"]: as_result(r) for r in rows}
    if not results:
        raise SpecError(f"--tuned {tuned_dir}: no results (neither results/*.json nor "
                        "results.csv)")  # fmt: skip
    return matrix, results


def tuned_row(spec: OptimizerSpec, workload: str, tuned: tuple[Matrix, dict[str, dict]] | None,
              base: Preset, max_steps: int, tuned_dir: str | None) -> StudyRow:  # fmt: skip
    """A row at the hyper-parameters the tuned run chose (or the spec's pinned lr)."""
    if spec.pinned_lr is not None:
        run = _row_spec(spec)
        ws = base.settings(workload, max_steps)
        wd = weight_decay_for(spec.pinned_lr, 1.0, base.coupling(ws))
        return StudyRow(spec.label, run, spec.pinned_lr, wd,
                        "pinned lr; weight decay at scale 1 of the lr coupling")  # fmt: skip
    if tuned is None:
        raise SpecError(f"optimizer {spec.label!r} has no hyper-parameters: pass --tuned DIR "
                        "(a `clion-bench run` output directory) or pin lr= in its spec")
    matrix, results = tuned
    labels = [s.label for s in matrix.optimizers]
    if spec.label not in labels:
        raise SpecError(f"optimizer {spec.label!r} is not in --tuned {tuned_dir} (it has: "
                        f"{', '.join(labels)})")  # fmt: skip
    if workload not in matrix.workloads:
        raise SpecError(f"workload {workload!r} is not in --tuned {tuned_dir} (it has: "
                        f"{', '.join(matrix.workloads)})")  # fmt: skip
    plan = matrix.plan_row(workload, spec, results)
    if plan.chosen is None:
        raise SpecError(f"--tuned {tuned_dir}: no chosen configuration for {spec.label} on "
                        f"{workload} (its search is unfinished or nothing finished ok)")
    # the choice is re-planned from the tuning runs by this version's search: if the tuned
    # run's own final runs used another configuration, the two disagree (the search changed)
    ran = {rid for rid, r in results.items() if r.get("phase") == "final"
           and r.get("workload") == workload and r.get("optimizer") == spec.label}  # fmt: skip
    if ran and not ran & {r.run_id for r in plan.finals}:
        raise SpecError(f"--tuned {tuned_dir}: this version's search chooses another "
                        f"configuration for {spec.label} on {workload} than the one its final "
                        "runs used; rerun it (`clion-bench run`) or use a matching version")
    final = matrix.make_run(workload, spec, plan.chosen.lr, plan.chosen.second, 0, "final",
                            plan.chosen.params)  # fmt: skip
    run = spec if plan.search.second != "nu" else spec.with_option("nu", plan.chosen.second)
    for key, value in plan.chosen.params:  # a local search's tuned beta2 / ν
        if key != "wd_scale":
            run = run.with_option(key, value)
    steps = matrix.preset.settings(workload, matrix.max_steps).max_steps
    note = f"tuned in {tuned_dir} ({steps} steps)"
    return StudyRow(spec.label, _row_spec(run), final.lr, final.weight_decay, note)


# ------------------------------------------------------------------------------ the study


@dataclass
class StudyPlan:
    """One workload's runs (a :class:`~clion_hf.bench.protocol.Plan`; no tuning trials)."""

    workload: str
    finals: list[RunConfig]
    needed: list[RunConfig]
    trials: list = field(default_factory=list)


_OWN_FLAGS = {"--eval_steps", "--logging_steps", "--max_test_samples", "--eval_strategy"}
# An arm trains when its mean final training loss is at least this fraction below the plateau:
# 0.27 nats under gpt2's unigram level (5.32; the committed cpu study's CLion global ended at
# 5.215, 1.6% below it), 0.08 nats under vit's chance ln 5. Recorded in bench.json.
TRAIN_MARGIN = 0.05


def _scaled(every: int, steps: int, gs: GapSettings) -> int:
    """An interval of ``gs.max_steps``-step runs, scaled to a run of ``steps`` steps."""
    return every if steps == gs.max_steps else max(1, round(every * steps / gs.max_steps))


@dataclass
class Study:
    """A gen-gap study ready to plan and run (an :class:`~clion_hf.bench.protocol.Experiment`)."""

    study: StudyPreset
    workloads: list[str]
    rows: dict[str, list[StudyRow]]  # workload -> rows
    seeds: tuple[int, ...]
    sizes: dict[str, tuple[int, ...]]
    nu_sweep: bool = True
    tuned_dir: str | None = None

    @property
    def preset(self) -> Preset:
        return self.study.base_preset

    @property
    def jobs(self) -> int:
        return self.study.jobs

    def settings(self, workload: str) -> GapSettings:
        return self.study.workloads[workload]

    def designs(self, workload: str) -> dict[str, dict[int, int]]:
        """Design -> N -> steps (see :func:`design_steps`)."""
        return design_steps(self.settings(workload), self.sizes[workload])

    def make_run(self, workload: str, label: str, spec: OptimizerSpec, lr: float, wd: float,
                 n: int, seed: int, stage: str, steps: int | None = None) -> RunConfig:  # fmt: skip
        """One run; ``steps`` other than the preset's scales the evaluation and logging
        intervals with it (the same number of evaluations per run)."""
        gs = self.settings(workload)
        steps = gs.max_steps if steps is None else steps
        base = self.preset
        ws = base.settings(workload, steps)
        batch = ("--per_device_train_batch_size", str(gs.batch)) if gs.batch else ()
        args = run_args(spec, base, ws, (
            *self.study.extra_args, *batch,
            "--eval_strategy", "steps", "--eval_steps", str(_scaled(gs.eval_every, steps, gs)),
            "--logging_steps", str(_scaled(gs.log_every, steps, gs)),
            "--train_subset_size", str(n), "--eval_train_subset", "true",
        ), replaced=_OWN_FLAGS)  # fmt: skip
        second = ("nu", spec.get("nu")) if stage == "nu" else ("N", float(n))
        return RunConfig(
            workload=workload, optimizer=label, lr=lr, weight_decay=wd, seed=seed,
            max_steps=steps, accelerate_config=base.accelerate_config,
            recipe_args=tuple(args), phase="study", stage=stage, second=second,
            preset=f"gen-gap-{self.study.name}",
        )  # fmt: skip

    def size_runs(self, workload: str) -> list[RunConfig]:
        """Every design's runs (stage ``size``: fixed steps, ``epochs``: fixed epochs; a run
        both designs have, N_max's, is one run)."""
        out = []
        for design, steps in self.designs(workload).items():
            stage = "size" if design == "steps" else design
            out += [self.make_run(workload, r.label, r.spec, r.lr, r.weight_decay, n, s, stage,
                                  steps[n])
                    for r in self.rows[workload] for n in self.sizes[workload]
                    for s in self.seeds]  # fmt: skip
        return out

    def nu_rows(self, workload: str) -> list[tuple[str, StudyRow]]:
        """(mode, row) of the ν sweep: CLion at the element row's lr and wd."""
        element = next((r for r in self.rows[workload] if r.spec.name == "clion"
                        and r.spec.get("mode") == "element"), None)  # fmt: skip
        if not self.nu_sweep or element is None:
            return []
        out = []
        for mode, values in (("element", self.study.nu_values), ("global", self.study.nu_global)):
            for nu in values:
                spec = element.spec.with_option("mode", mode).with_option("nu", nu)
                # the tuned point itself is the element row's run (same id, run once)
                label = element.label if spec == element.spec else spec.label
                out.append((mode, StudyRow(label, spec, element.lr, element.weight_decay,
                                           f"the {element.label} row's lr and weight decay")))
        return out

    def nu_runs(self, workload: str) -> list[RunConfig]:
        n = self.settings(workload).nu_size
        return [self.make_run(workload, r.label, r.spec, r.lr, r.weight_decay, n, s, "nu")
                for _, r in self.nu_rows(workload) for s in self.study.nu_seeds]  # fmt: skip

    def all_runs(self) -> list[RunConfig]:
        runs = [r for w in self.workloads for r in (*self.size_runs(w), *self.nu_runs(w))]
        unique: dict[str, RunConfig] = {}
        for r in runs:  # a sweep point may be a size run: it stays one (stage "size")
            unique.setdefault(r.run_id, r)
        return list(unique.values())

    # -------------------------------------------------------------- the Experiment

    def plan(self, results: dict[str, dict]) -> list[StudyPlan]:
        """Every run is known up front (the matched rule needs no extra runs): one plan per
        workload with the runs that have no result yet."""
        out = []
        runs = self.all_runs()
        for w in self.workloads:
            mine = [r for r in runs if r.workload == w]
            out.append(StudyPlan(w, mine, [r for r in mine if r.run_id not in results]))
        return out

    def run_counts(self) -> tuple[int, int]:
        n = len(self.all_runs())
        return n, n

    def estimated_seconds(self) -> tuple[float, float]:
        """Device time from the base preset's cost model plus the subset evaluations (the
        same at both ends: every run is known up front)."""
        total = 0.0
        for run in self.all_runs():
            gs = self.settings(run.workload)
            cost = self.preset.settings(run.workload, gs.max_steps).cost
            args = run.recipe_args
            n = int(args[args.index("--train_subset_size") + 1])
            evals = math.ceil(run.max_steps / int(args[args.index("--eval_steps") + 1])) + 1
            if gs.heldout_eval_s is None:  # the base preset's evaluations, as it runs them
                total += cost.run_s(run.max_steps) + evals * n * gs.eval_example_s
            else:
                total += (cost.startup_s + run.max_steps * cost.step_s
                          + evals * (gs.heldout_eval_s + n * gs.eval_example_s))  # fmt: skip
        total /= max(1, self.study.jobs)
        return total, total

    def describe(self) -> dict[str, Any]:
        """``bench.json`` of the study directory: enough to plan it again and
        to write its report."""
        return {
            "study": "gen-gap",
            "schema": STUDY_SCHEMA,
            "preset": self.study.name,
            "workloads": self.workloads,
            "seeds": list(self.seeds),
            "sizes": {w: list(self.sizes[w]) for w in self.workloads},
            "nu_sweep": self.nu_sweep,
            "tuned_dir": self.tuned_dir,
            "rows": {w: [{"label": r.label, "spec": r.spec.label, "lr": r.lr,
                          "weight_decay": r.weight_decay, "source": r.source}
                         for r in self.rows[w]] for w in self.workloads},  # fmt: skip
            "settings": {w: {"max_steps": self.settings(w).max_steps,
                             "eval_every": self.settings(w).eval_every,
                             "log_every": self.settings(w).log_every,
                             "nu_size": self.settings(w).nu_size,
                             "batch": self.settings(w).batch,
                             "min_steps": self.settings(w).min_steps} for w in self.workloads},
            "nu_values": list(self.study.nu_values),
            "nu_global": list(self.study.nu_global),
            "nu_seeds": list(self.study.nu_seeds),
            # design -> N -> steps (JSON keys are strings); the report reads each run's
            # design off its (N, steps)
            "designs": {w: {d: {str(n): s for n, s in steps.items()}
                            for d, steps in self.designs(w).items()} for w in self.workloads},
            "plateau": {w: self.plateau(w) for w in self.workloads},
        }  # fmt: skip

    def plateau(self, workload: str) -> dict[str, Any] | None:
        """``{"kind", "level", "margin"}`` of the workload's declared plateau (None: none)."""
        kind = self.settings(workload).plateau
        if not kind:
            return None
        return {"kind": kind, "level": plateau_level(workload, kind), "margin": TRAIN_MARGIN}

    def dry_run_lines(self, recipes_dir: Path, out_dir: Path) -> Iterable[str]:
        """Run counts, estimated device time, the rows' hyper-parameters and the commands."""
        sp = self.study
        runs = self.all_runs()
        yield f"# study gen-gap, preset {sp.name}: {sp.description}"
        yield (f"# {len(runs)} runs ({sp.jobs} at a time); seeds {list(self.seeds)}; estimated "
               f"device time {span_text(*self.estimated_seconds())} (cost model: "
               f"{self.preset.cost_note}; plus each subset evaluation)")  # fmt: skip
        for w in self.workloads:
            gs = self.settings(w)
            nu = self.nu_runs(w)
            yield (f"# {w}: N in {list(self.sizes[w])}, {gs.max_steps} steps, the gap "
                   f"evaluated every {gs.eval_every} steps; "
                   + (f"ν sweep at N = {gs.nu_size}: {len(nu)} runs" if nu else "no ν sweep"))
            epochs = self.designs(w).get("epochs")
            if epochs:
                e = gs.max_steps / -(-gs.n_max // gs.batch)
                yield (f"#   fixed epochs: E = {e:.3g} epochs of batch {gs.batch} (the fixed "
                       f"steps' epochs at N_max), floor {gs.min_steps} steps; steps per N: "
                       + ", ".join(f"{n}: {s}" for n, s in epochs.items()))  # fmt: skip
            if gs.plateau:
                yield (f"#   matched training loss: arms not {100 * TRAIN_MARGIN:.0f}% below "
                       f"the {gs.plateau} level are not matched")  # fmt: skip
            for r in self.rows[w]:
                yield (f"#   {r.label}: lr {fmt_float(r.lr)}, weight decay "
                       f"{fmt_float(r.weight_decay)}, runs as {r.spec.label} ({r.source})")
        for run in runs:
            yield shlex.join(run.launch_command(recipes_dir, out_dir / "work" / run.run_id))


def build_study(preset: str, workloads: list[str] | None, optimizers: list[OptimizerSpec] | None,
                tuned_dir: str | None, seeds: int | None = None, sizes: int | None = None,
                nu_sweep: bool = True) -> Study:  # fmt: skip
    """The study a command line asks for; :class:`SpecError` (one line) for bad input."""
    sp = get_study_preset(preset)
    names = workloads if workloads is not None else list(sp.defaults or sp.workloads)
    for w in names:
        if w not in sp.workloads:
            raise SpecError(f"workload {w!r} is not in study preset {sp.name!r}; allowed: "
                            f"{', '.join(sp.workloads)}")  # fmt: skip
    specs = optimizers if optimizers is not None else None
    if specs is None:
        from .specs import parse_optimizers

        specs = parse_optimizers(",".join(sp.optimizers))
    tuned = None
    if tuned_dir is not None:
        path = Path(tuned_dir)
        if not path.is_dir():
            raise SpecError(f"--tuned {tuned_dir}: no such directory")
        if any(s.pinned_lr is None for s in specs):
            tuned = load_tuned(path)
    count = sizes if sizes is not None else sp.sizes
    base = sp.base_preset
    rows = {w: [tuned_row(s, w, tuned, base, sp.workloads[w].max_steps, tuned_dir)
                for s in specs] for w in names}  # fmt: skip
    seed_list = tuple(sp.seeds[0] + i for i in range(seeds)) if seeds else sp.seeds
    study = Study(sp, names, rows, seed_list,
                  {w: sizes_of(sp.workloads[w].n_max, count) for w in names},
                  nu_sweep, tuned_dir)  # fmt: skip
    for w in names:
        if sp.workloads[w].nu_size not in study.sizes[w] and study.nu_runs(w):
            raise SpecError(f"the ν sweep's N = {sp.workloads[w].nu_size} is not one of the "
                            f"sizes {list(study.sizes[w])}; pass more --sizes")  # fmt: skip
    return study
