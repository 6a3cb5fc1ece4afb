"""The gen-gap study's report: gap against N (two stopping rules), τ, and the ν sweep.

Everything in ``report.md``'s Findings is a function of ``results.csv`` and ``bench.json``
alone (:func:`findings_from_csv`; a test checks it), as for ``clion-bench report``.

The statistics (hand-written for the same reason as :mod:`clion_hf.bench.stats`, whose
t-tests, intervals and Holm correction they use):

* Slope: for each seed, the least-squares slope of log(gap) against log(N) over the sizes
  where that seed's gap is positive (at least :data:`MIN_SIZES_FOR_SLOPE`; log of a
  non-positive gap is undefined, and such points are counted in the report). The
  optimizer's slope is the mean over seeds, with a 95% t interval over seeds. The paper's
  bounds predict -1 for both Lion and CLion (they differ by the factor
  τ^T, not in N).
* Slope differences (CLion row minus Lion, minus AdamW): paired by seed (same seeds, so
  same initializations and data orders), paired t-test over seeds, Holm-corrected within a
  workload and stopping rule; "no difference detected" when the interval contains 0.
* Gaps per N: mean over seeds with a 95% t interval.
* Designs (``bench.json``'s ``designs``; one, fixed steps, in a study written before
  them): fixed steps and fixed epochs, each read at the end of its runs and at a matched
  training loss, separately. A run belongs to the design whose steps at its N it ran (the
  N_max run to both).
* Matched training loss: one target per workload and design, the highest final
  training-subset loss of any run of an arm (optimizer, N) that trains, so that every such
  run reaches it; each run is read at its first evaluation at or below it (see
  :mod:`clion_hf.bench.study`), and the fraction of its run at which it got there is
  reported. With a plateau in ``bench.json`` an arm trains when its mean final training
  loss is at least ``margin`` (5%) below the plateau level; the others are left out of
  matching and named. Without one (the committed cpu study), every arm is matched.
* Every gap is printed with the held-out loss of the same evaluation (mean over seeds).
* ν sweep: every point runs at the CLion element row's lr and weight decay; the point
  with the smallest ν (1e-30, below every τ observed) takes the sign everywhere, i.e. it
  is Lion's update at that lr, and the other points are compared with it, paired by
  seed (Holm over the sweep). The tuned Lion row at the same N is shown for reference.
"""

from __future__ import annotations

import json
import math
import shlex
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clion_hf._files import atomic_write_text, probe_writable, read_json
from clion_hf.integrations.transformers import OptimArgsError, key_values

from . import render
from .plotstyle import LEGEND_SIZE, colour
from .protocol import number
from .render import Figures, label_axes, table
from .report import (
    ReportError,
    curve,
    describe_optimizer,
    load_results,
    optimizer_order,
    rows_csv,
    rows_from_csv,
    timing_lines,
)
from .specs import WORKLOADS, SpecError, fmt_float, parse_optimizer
from .stats import Comparison, compare_family, t_interval
from .study import STUDY_SCHEMA

MIN_SIZES_FOR_SLOPE = 3
LEVEL = 0.95
FINDINGS_BEGIN = "<!-- gen-gap-findings:begin -->"
FINDINGS_END = "<!-- gen-gap-findings:end -->"
RULES = ("fixed", "matched")
RULE_TEXT = {"fixed": "fixed steps", "matched": "matched training loss"}

CSV_COLUMNS = [
    "run_id", "workload", "optimizer", "stage", "mode", "nu", "n", "seed", "lr",
    "weight_decay", "max_steps", "status", "reason", "steps_done", "final_train_loss",
    "final_eval_loss", "final_gap", "tau_min", "tau_median", "sign_fraction_mean",
    "wall_s", "cpu_s", "curve",
]  # fmt: skip
_TEXT = {"run_id", "workload", "optimizer", "stage", "mode", "status", "reason", "curve"}
_INTS = {"n", "seed", "max_steps", "steps_done"}


# ------------------------------------------------------------------------------ per run


def _flag(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None


def _optim_args(args: list[str]) -> dict[str, str]:
    try:
        return key_values(_flag(args, "--optim_args"), "--optim_args")
    except OptimArgsError:  # a hand-edited result: its options are unknown, not fatal
        return {}


def summarize_run(result: dict) -> dict[str, Any]:
    """One CSV row: the run's final gap, its evaluation curve, τ and sign fraction."""
    args = [str(a) for a in result.get("recipe_args") or []]
    oa = _optim_args(args)
    res = result.get("all_results") or {}
    train = dict(curve(result, "train_subset_loss"))
    held = dict(curve(result, "eval_loss"))
    points = [(s, train[s], held[s]) for s in sorted(train) if s in held]
    taus = [v for _, v in curve(result, "optim/min_abs_c") if v > 0]
    fractions = [v for _, v in curve(result, "optim/sign_fraction")]
    steps = [int(e["step"]) for e in result.get("log_history") or [] if "step" in e]
    n = _flag(args, "--train_subset_size")
    return {
        "run_id": result["run_id"], "workload": result["workload"],
        "optimizer": result["optimizer"], "stage": result.get("stage", ""),
        "mode": oa.get("mode", ""), "nu": float(oa["nu"]) if "nu" in oa else None,
        "n": int(n) if n else None, "seed": result["seed"], "lr": result["lr"],
        "weight_decay": result["weight_decay"], "max_steps": result["max_steps"],
        "status": result["status"], "reason": result.get("reason", ""),
        "steps_done": max(steps) if steps else None,
        "final_train_loss": number(res.get("train_subset_loss")),
        "final_eval_loss": number(res.get("eval_loss")),
        "final_gap": number(res.get("gen_gap")),
        "tau_min": min(taus) if taus else None,
        "tau_median": statistics.median(taus) if taus else None,
        "sign_fraction_mean": statistics.fmean(fractions) if fractions else None,
        "wall_s": result.get("wall_s"), "cpu_s": result.get("cpu_s"),
        "curve": ";".join(f"{s}:{t!r}:{e!r}" for s, t, e in points),
    }  # fmt: skip


def parse_curve(text: str | None) -> list[tuple[int, float, float]]:
    """``(step, training-subset loss, held-out loss)`` of every evaluation of a CSV row."""
    out = []
    for item in (text or "").split(";"):
        if item:
            s, t, e = item.split(":")
            out.append((int(s), float(t), float(e)))
    return out


def matched_point(row: dict, target: float) -> tuple[int, float] | None:
    """(step, gap) at the run's first evaluation with training-subset loss <= ``target``."""
    for step, train, held in parse_curve(row.get("curve")):
        if math.isfinite(train) and train <= target:
            return step, held - train
    return None


# ------------------------------------------------------------------------------ statistics


def seed_slope(points: dict[int, float]) -> float | None:
    """Least-squares slope of log(gap) on log(N) over the positive gaps (N -> gap)."""
    pos = [(n, g) for n, g in points.items() if g is not None and g > 0]
    if len(pos) < MIN_SIZES_FOR_SLOPE or len({n for n, _ in pos}) < MIN_SIZES_FOR_SLOPE:
        return None
    x = np.log([n for n, _ in pos])
    y = np.log([g for _, g in pos])
    return float(np.polyfit(x, y, 1)[0])


@dataclass
class Estimate:
    """A mean over seeds with its 95% t interval (None without two values)."""

    values: list[float]
    mean: float | None = None
    lo: float | None = None
    hi: float | None = None

    def __post_init__(self) -> None:
        if self.values:
            self.mean = float(np.mean(self.values))
        if len(self.values) >= 2:
            self.lo, self.hi = t_interval(self.values, LEVEL)

    def text(self, fmt: str = "{:+.2f}") -> str:
        if self.mean is None:
            return "n/a"
        if self.lo is None:
            return fmt.format(self.mean) + " (one seed)"
        return f"{fmt.format(self.mean)} [{fmt.format(self.lo)}, {fmt.format(self.hi)}]"


@dataclass(frozen=True)
class Rule:
    """One way of reading the gap: a design's runs at their end, or at the matched loss."""

    key: str  # the gap tables' key and the plot's name
    design: str  # "steps" (fixed steps) or "epochs" (fixed epochs)
    matched: bool
    text: str


DESIGN_TEXT = {"steps": "fixed steps", "epochs": "fixed epochs"}
# a bench.json without designs (the committed cpu study's): one design, the old names
LEGACY_RULES = (Rule("fixed", "steps", False, RULE_TEXT["fixed"]),
                Rule("matched", "steps", True, RULE_TEXT["matched"]))  # fmt: skip


def rules_of(designs: Iterable[str]) -> tuple[Rule, ...]:
    return tuple(r for d in designs for r in (
        Rule(d, d, False, f"{DESIGN_TEXT[d]}, end of run"),
        Rule(f"{d}-matched", d, True, f"{DESIGN_TEXT[d]}, matched training loss")))  # fmt: skip


def designs_of(meta: dict, workload: str) -> dict[str, dict[int, int]]:
    """Design -> N -> steps of a study (one fixed-steps design for a bench.json without)."""
    if "designs" not in meta:
        steps = int(meta["settings"][workload]["max_steps"])
        return {"steps": {int(n): steps for n in meta["sizes"][workload]}}
    per_design = meta["designs"][workload]  # fixed steps first (bench.json sorts its keys)
    return {d: {int(n): int(s) for n, s in per_design[d].items()}
            for d in sorted(per_design, key=list(DESIGN_TEXT).index)}  # fmt: skip


@dataclass
class WorkloadStudy:
    name: str
    labels: list[str]
    sizes: list[int]
    max_steps: int
    legacy: bool = False  # a bench.json without designs: the old findings, word for word
    seeds: int = 0
    batch: int = 0  # the fixed-epoch design's batch (0: none)
    rules: tuple[Rule, ...] = LEGACY_RULES
    designs: dict[str, dict[int, int]] = field(default_factory=dict)
    plateau: dict[str, Any] | None = None
    targets: dict[str, float | None] = field(default_factory=dict)  # design -> target
    target_froms: dict[str, str] = field(default_factory=dict)
    # design -> (label, N, mean final training loss) of the arms left out of matching
    excluded: dict[str, list[tuple[str, int, float]]] = field(default_factory=dict)
    # rule -> label -> N -> seed -> gap (and held-out loss at the same evaluation)
    gaps: dict[str, dict[str, dict[int, dict[int, float]]]] = field(default_factory=dict)
    held: dict[str, dict[str, dict[int, dict[int, float]]]] = field(default_factory=dict)
    # matched rule -> label -> N -> fractions of their runs at which the runs reached it
    fractions: dict[str, dict[str, dict[int, list[float]]]] = field(default_factory=dict)
    nonpositive: dict[str, dict[str, int]] = field(default_factory=dict)
    unreached: dict[str, dict[str, int]] = field(default_factory=dict)  # design -> label -> runs
    matched_steps: dict[str, list[int]] = field(default_factory=dict)  # fixed steps' design
    slopes: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    slope_seeds: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    comparisons: dict[str, list[Comparison]] = field(default_factory=dict)
    tau: dict[str, dict[str, Any]] = field(default_factory=dict)
    nu_size: int | None = None
    nu_points: list[dict[str, Any]] = field(default_factory=list)
    nu_reference: dict[str, Estimate] = field(default_factory=dict)
    nu_comparisons: dict[str, list[Comparison]] = field(default_factory=dict)
    nu_ref_label: str = ""
    failed: list[str] = field(default_factory=list)

    @property
    def target(self) -> float | None:
        return self.targets.get("steps")

    @property
    def target_from(self) -> str:
        return self.target_froms.get("steps", "")


def _is_row_run(run: dict, row: dict) -> bool:
    """Whether ``run`` is one of ``row``'s runs: its lr, and for CLion its mode and ν (a ν-sweep
    run can carry the row's label, since a ν equal to the default is not spelled out; the
    sweep point equal to the row's own configuration is the row's run, recorded once)."""
    if run["lr"] != row["lr"]:
        return False
    spec = parse_optimizer(row["spec"])
    if spec.name != "clion":
        return True
    return run["mode"] == spec.get("mode") and run["nu"] is not None and math.isclose(
        run["nu"], spec.get("nu"), rel_tol=1e-9)


def _size_rows(rows: list[dict], workload: str, labels: list[str]) -> list[dict]:
    return [r for r in rows if r["workload"] == workload and r["optimizer"] in labels]


def matched_target(ok: list[dict], plateau: dict[str, Any] | None
                   ) -> tuple[float | None, dict | None, list[tuple[str, int, float]]]:  # fmt: skip
    """(target, the run that sets it, the arms left out) of one design's finished runs.

    An arm is an (optimizer, N) pair; with a ``plateau`` (``level``, ``margin``) it trains
    when its runs' mean final training loss is at most ``level · (1 - margin)``, and the
    others are left out. The target is the highest final training loss of any run of an arm
    that trains, so that each of those runs reaches it (at the latest at its end)."""
    finals = [r for r in ok if r["final_train_loss"] is not None]
    out: list[tuple[str, int, float]] = []
    if plateau is not None:
        arms: dict[tuple[str, int], list[float]] = defaultdict(list)
        for r in finals:
            arms[(r["optimizer"], r["n"])].append(r["final_train_loss"])
        bar = plateau["level"] * (1 - plateau["margin"])
        out = sorted((lb, n, statistics.fmean(v)) for (lb, n), v in arms.items()
                     if not statistics.fmean(v) <= bar)  # fmt: skip
        left = {(lb, n) for lb, n, _ in out}
        finals = [r for r in finals if (r["optimizer"], r["n"]) not in left]
    if not finals:
        return None, None, out
    top = max(finals, key=lambda r: r["final_train_loss"])
    return top["final_train_loss"], top, out


def matched_eval(row: dict, target: float) -> tuple[int, float, float] | None:
    """(step, training-subset loss, held-out loss) at the first evaluation at or below
    ``target``."""
    for step, train, held in parse_curve(row.get("curve")):
        if math.isfinite(train) and train <= target:
            return step, train, held
    return None


def analyze(rows: list[dict], meta: dict) -> list[WorkloadStudy]:
    """Every number the report states, from the CSV rows and ``bench.json``."""
    out = []
    for w in meta.get("workloads", []):
        labels = sorted((r["label"] for r in meta["rows"][w]), key=optimizer_order)
        sizes = sorted(meta["sizes"][w])
        seeds = list(meta["seeds"])
        steps = int(meta["settings"][w]["max_steps"])
        designs = designs_of(meta, w)
        legacy = "designs" not in meta
        ws = WorkloadStudy(w, labels, sizes, steps, legacy, len(seeds),
                           int(meta["settings"][w].get("batch", 0)),
                           LEGACY_RULES if legacy else rules_of(designs), designs,
                           (meta.get("plateau") or {}).get(w))  # fmt: skip
        specs = {r["label"]: r for r in meta["rows"][w]}
        mine = [r for r in _size_rows(rows, w, labels)
                if r["n"] in sizes and r["seed"] in seeds and _is_row_run(r, specs[r["optimizer"]])
                and any(per.get(r["n"]) == r["max_steps"] for per in designs.values())]
        ok = [r for r in mine if r["status"] == "ok" and r["final_gap"] is not None]
        ws.failed = sorted(f"{r['optimizer']} N={r['n']} seed={r['seed']}: {r['status']} "
                           f"{r['reason']}".strip() for r in mine if r not in ok)  # fmt: skip
        for rule in ws.rules:
            ws.gaps[rule.key] = {lb: {n: {} for n in sizes} for lb in labels}
            ws.held[rule.key] = {lb: {n: {} for n in sizes} for lb in labels}
            ws.nonpositive[rule.key] = dict.fromkeys(labels, 0)
            if rule.matched:
                ws.fractions[rule.key] = {lb: {n: [] for n in sizes} for lb in labels}
        for design, per in designs.items():
            runs = [r for r in ok if per.get(r["n"]) == r["max_steps"]]
            end, matched = (next(r for r in ws.rules if r.design == design and r.matched is m)
                            for m in (False, True))  # fmt: skip
            target, top, ws.excluded[design] = matched_target(runs, ws.plateau)
            ws.targets[design] = target
            ws.target_froms[design] = "" if top is None else (
                f"{describe_optimizer(top['optimizer'])} at N = {top['n']}, seed {top['seed']}")
            left = {(lb, n) for lb, n, _ in ws.excluded[design]}
            ws.unreached[design] = dict.fromkeys(labels, 0)
            if design == "steps":
                ws.matched_steps = {lb: [] for lb in labels}
            for r in runs:
                lb, n, s = r["optimizer"], r["n"], r["seed"]
                ws.gaps[end.key][lb][n][s] = r["final_gap"]
                if r["final_eval_loss"] is not None:
                    ws.held[end.key][lb][n][s] = r["final_eval_loss"]
                if (lb, n) in left:
                    continue
                point = matched_eval(r, target) if target is not None else None
                if point is None:
                    ws.unreached[design][lb] += 1
                    continue
                ws.gaps[matched.key][lb][n][s] = point[2] - point[1]
                ws.held[matched.key][lb][n][s] = point[2]
                ws.fractions[matched.key][lb][n].append(point[0] / r["max_steps"])
                if design == "steps":
                    ws.matched_steps[lb].append(point[0])
        for rule in ws.rules:
            key = rule.key
            ws.slopes[key], ws.slope_seeds[key] = {}, {}
            for label in labels:
                per_seed = {}
                for s in seeds:
                    pts = {n: ws.gaps[key][label][n].get(s) for n in sizes}
                    ws.nonpositive[key][label] += sum(1 for g in pts.values()
                                                      if g is not None and g <= 0)  # fmt: skip
                    slope = seed_slope(pts)
                    if slope is not None:
                        per_seed[s] = slope
                ws.slope_seeds[key][label] = per_seed
                ws.slopes[key][label] = Estimate(list(per_seed.values()))
            comps = []
            names = {lb: parse_optimizer(lb).name for lb in labels}
            for a in [lb for lb in labels if names[lb] == "clion"]:
                for name in ("lion", "adamw"):
                    b = next((lb for lb in labels if names[lb] == name), None)
                    if b is None:
                        continue
                    sa, sb = ws.slope_seeds[key][a], ws.slope_seeds[key][b]
                    common = sorted(set(sa) & set(sb))
                    comps.append(Comparison(a, b, [sa[s] - sb[s] for s in common]))
            ws.comparisons[key] = compare_family(comps)
        fixed = designs["steps"]
        for label in labels:  # τ over the fixed-steps runs (T the same for all)
            runs = [r for r in ok if r["optimizer"] == label and r["tau_min"] is not None
                    and fixed.get(r["n"]) == r["max_steps"]]  # fmt: skip
            if runs:
                lows = [r["tau_min"] for r in runs]
                meds = [r["tau_median"] for r in runs]
                ws.tau[label] = {
                    "runs": len(runs), "min": min(lows), "max": max(lows),
                    "median": statistics.median(lows), "median_t": statistics.median(meds),
                    "log10_tau_T": statistics.median(steps * math.log10(v) for v in lows),
                    "sign": statistics.fmean(r["sign_fraction_mean"] for r in runs
                                             if r["sign_fraction_mean"] is not None)
                    if any(r["sign_fraction_mean"] is not None for r in runs) else None,
                }  # fmt: skip
        _nu_sweep(ws, rows, meta)
        out.append(ws)
    return out


def _nu_sweep(ws: WorkloadStudy, rows: list[dict], meta: dict) -> None:
    w = ws.name
    if not meta.get("nu_sweep"):
        return
    element = next((r for r in meta["rows"][w] if r["spec"].startswith("clion")
                    and "mode=element" in r["spec"]), None)  # fmt: skip
    if element is None:
        return
    n = int(meta["settings"][w]["nu_size"])
    seeds = list(meta["nu_seeds"])
    ws.nu_size = n
    mine = [r for r in rows if r["workload"] == w and r["n"] == n and r["seed"] in seeds
            and r["status"] == "ok" and r["final_gap"] is not None]  # fmt: skip
    lion = {r["seed"]: r for r in mine if parse_optimizer(r["optimizer"]).name == "lion"}
    for key in ("final_gap", "final_train_loss"):
        ws.nu_reference[key] = Estimate([lion[s][key] for s in seeds if s in lion])
    points: dict[tuple[str, float], dict[int, dict]] = {}
    for mode, values in (("element", meta.get("nu_values", [])),
                         ("global", meta.get("nu_global", []))):  # fmt: skip
        for nu in values:
            runs = {r["seed"]: r for r in mine
                    if r["lr"] == element["lr"] and r["mode"] == mode and r["nu"] is not None
                    and math.isclose(r["nu"], nu, rel_tol=1e-9)}  # fmt: skip
            label = f"clion {mode} ν={fmt_float(nu)}"
            point = {
                "mode": mode, "nu": nu, "label": label, "runs": len(runs),
                "sign": Estimate([runs[s]["sign_fraction_mean"] for s in runs
                                  if runs[s]["sign_fraction_mean"] is not None]),
                "train": Estimate([runs[s]["final_train_loss"] for s in runs]),
                "gap": Estimate([runs[s]["final_gap"] for s in runs]),
                "tau": min((runs[s]["tau_min"] for s in runs if runs[s]["tau_min"]),
                           default=None),
            }  # fmt: skip
            ws.nu_points.append(point)
            points[(mode, nu)] = runs
    element_nus = sorted(nu for mode, nu in points if mode == "element")
    if not element_nus:
        return
    ref_nu = element_nus[0]
    ref = points[("element", ref_nu)]
    ws.nu_ref_label = f"clion element ν={fmt_float(ref_nu)}"
    comps: dict[str, list[Comparison]] = {"gap": [], "train": []}
    for p in ws.nu_points:
        if (p["mode"], p["nu"]) == ("element", ref_nu):
            continue
        runs = points[(p["mode"], p["nu"])]
        common = [s for s in seeds if s in runs and s in ref]
        for key, col in (("gap", "final_gap"), ("train", "final_train_loss")):
            comps[key].append(Comparison(p["label"], ws.nu_ref_label,
                                         [runs[s][col] - ref[s][col] for s in common]))
    ws.nu_comparisons = {k: compare_family(v) for k, v in comps.items()}


# ------------------------------------------------------------------------------ sentences


def _g(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}g}"


def comparison_text(c: Comparison, fmt: str = "{:+.2f}") -> str:
    if c.n < 2 or c.lo != c.lo:  # no interval (fewer than two pairs)
        return f"{describe_optimizer(c.a)} − {describe_optimizer(c.b)}: too few paired seeds"
    verdict = "detected" if c.detected else "no difference detected"
    return (f"{describe_optimizer(c.a)} − {describe_optimizer(c.b)} "
            f"{fmt.format(c.mean)} [{fmt.format(c.lo)}, {fmt.format(c.hi)}] ({verdict})")


def _diff(c: Comparison) -> str:
    if c.n < 2 or c.lo != c.lo:
        return "too few paired seeds"
    verdict = "detected" if c.detected else "no difference detected"
    return f"{c.mean:+.3f} [{c.lo:+.3f}, {c.hi:+.3f}] ({verdict})"


def _epochs(ws: WorkloadStudy, n: int, steps: int) -> float | None:
    """Passes over the N examples a run of ``steps`` steps makes (None: batch unknown)."""
    return steps / -(-n // ws.batch) if ws.batch else None


def _gap_held(ws: WorkloadStudy, key: str, lb: str, n: int) -> str:
    """``gap m [lo, hi], held-out h``: a size's gap with the held-out loss beside it."""
    gap = Estimate(list(ws.gaps[key][lb][n].values()))
    held = Estimate(list(ws.held[key][lb][n].values()))
    return f"gap {gap.text('{:.3f}')}, held-out {held.text('{:.3f}').split(' ')[0]}"


def _fraction_span(ws: WorkloadStudy, key: str, lb: str) -> str | None:
    """Median fraction of the run at which an optimizer's runs reached the target, smallest
    and largest over its sizes (None: none reached it)."""
    meds = [statistics.median(v) for v in ws.fractions[key][lb].values() if v]
    if not meds:
        return None
    return f"{min(meds):.2f}" if min(meds) == max(meds) else f"{min(meds):.2f}…{max(meds):.2f}"


def _matching_text(ws: WorkloadStudy, design: str) -> str:
    """The matched target of a design: its value and source, the arms left out and why."""
    target = ws.targets[design]
    if ws.plateau is None:
        left = "no plateau level declared: every arm is matched"
    else:
        p = ws.plateau
        arms = ", ".join(f"{describe_optimizer(lb)} N={n} ({m:.3f})"
                         for lb, n, m in ws.excluded[design])  # fmt: skip
        left = (f"arms left out of matching (mean final training loss not "
                f"{100 * p['margin']:.0f}% below the {p['kind']} level {p['level']:.4g}: they "
                f"do not train): {arms or 'none'}")  # fmt: skip
    if target is None:
        return f"no arm trains: nothing is matched; {left}"
    return (f"matched training loss {_g(target, 4)}, the highest final one among the arms "
            f"that train ({ws.target_froms[design]}); {left}")


def _design_findings(ws: WorkloadStudy) -> list[str]:
    lines = []
    for design, per in ws.designs.items():
        steps = ", ".join(f"{n}: {per[n]}" for n in ws.sizes)
        epochs = ""
        if ws.batch:
            epochs = " (epochs " + ", ".join(f"{_epochs(ws, n, per[n]):.3g}"
                                             for n in ws.sizes) + ")"  # fmt: skip
        matched = next(r for r in ws.rules if r.design == design and r.matched)
        reached = "; ".join(f"{describe_optimizer(lb)} {span}" for lb in ws.labels
                            if (span := _fraction_span(ws, matched.key, lb)))  # fmt: skip
        lines.append(
            f"- **{ws.name}**, {DESIGN_TEXT[design]}: steps per N {steps}{epochs}; "
            f"{_matching_text(ws, design)}. Fraction of its run at which an arm reached the "
            f"matched loss (median over seeds, smallest…largest over N): {reached or 'none'}."
        )  # fmt: skip
        for rule in (r for r in ws.rules if r.design == design):
            key = rule.key
            parts = []
            for lb in ws.labels:
                filled = [n for n in ws.sizes if ws.gaps[key][lb][n]]
                ends = (f" (N={filled[0]}: {_gap_held(ws, key, lb, filled[0])}; N={filled[-1]}: "
                        f"{_gap_held(ws, key, lb, filled[-1])})" if filled else "")  # fmt: skip
                parts.append(f"{describe_optimizer(lb)} {ws.slopes[key][lb].text()}{ends}")
            extra = _left_out(ws, key, design if rule.matched else None,
                              "Runs of arms that train but never reached it")  # fmt: skip
            comps = "; ".join(comparison_text(c) for c in ws.comparisons[key])
            lines.append(
                f"- **{ws.name}**, {rule.text}, N = {ws.sizes[0]}…{ws.sizes[-1]}, {ws.seeds} "
                f"seeds: slope of log(gap) against log(N) over seeds [95% t interval] (the "
                f"paper's bounds: −1), with the gap and held-out loss at the smallest and "
                f"largest N: {'; '.join(parts)}. Slope differences (paired by seed, "
                f"Holm-corrected): {comps or 'none'}.{extra}"
            )  # fmt: skip
    return lines


def _left_out(ws: WorkloadStudy, key: str, unreached: str | None, missed_text: str) -> str:
    """The findings' note on runs a slope leaves out: those that never reached the matched
    loss (``unreached``: the design whose runs to list, None where no loss is matched) and
    those whose gap is not positive (no logarithm)."""
    extra = ""
    missed = {lb: k for lb, k in ws.unreached[unreached].items() if k} if unreached else {}
    if missed:
        extra = f" {missed_text}: " + ", ".join(
            f"{describe_optimizer(lb)} {k}" for lb, k in missed.items()) + "."
    bad = {lb: k for lb, k in ws.nonpositive[key].items() if k}
    if bad:
        extra += (" Gaps ≤ 0 (left out of the fit): "
                  + ", ".join(f"{describe_optimizer(lb)} {k}" for lb, k in bad.items())
                  + ".")  # fmt: skip
    return extra


def findings(studies: list[WorkloadStudy]) -> list[str]:
    lines = []
    for ws in studies:
        if not ws.legacy:
            lines += _design_findings(ws)
        for rule in (RULES if ws.legacy else ()):
            slopes = "; ".join(f"{describe_optimizer(lb)} {ws.slopes[rule][lb].text()}"
                               for lb in ws.labels)  # fmt: skip
            where = (f"{ws.max_steps} steps" if rule == "fixed" else
                     f"training-subset loss {_g(ws.target, 4)}, the highest final one "
                     f"({ws.target_from})")  # fmt: skip
            extra = _left_out(ws, rule, "steps" if rule == "matched" else None,
                              "Runs that never reached it")  # fmt: skip
            comps = "; ".join(comparison_text(c) for c in ws.comparisons[rule])
            lines.append(
                f"- **{ws.name}**, {RULE_TEXT[rule]} ({where}), N = {ws.sizes[0]}…{ws.sizes[-1]}: "
                f"slope of log(gap) against log(N) (the paper's bounds: −1): {slopes}. "
                f"Slope differences: {comps or 'none'}.{extra}"
            )  # fmt: skip
        taus = []
        for lb in ws.labels:
            t = ws.tau.get(lb)
            if t is None:
                continue
            sign = (f", sign-branch fraction {t['sign']:.3g}"
                    if t["sign"] is not None else "")  # fmt: skip
            taus.append(f"{describe_optimizer(lb)} τ {_g(t['min'], 2)} to {_g(t['max'], 2)} "
                        f"(median per step {_g(t['median_t'], 2)}), τ^T ≈ 10^{t['log10_tau_T']:.0f}"
                        f"{sign}")  # fmt: skip
        if taus:
            lines.append(f"- **{ws.name}** τ, the smallest non-zero abs(c) of a run, over its "
                         f"{ws.max_steps} steps (T = {ws.max_steps}): " + "; ".join(taus) + ".")
        if ws.nu_points:
            ref = ws.nu_reference
            by_label = {c.a: (c, t) for c, t in zip(ws.nu_comparisons.get("gap", []),
                                                    ws.nu_comparisons.get("train", []),
                                                    strict=True)}  # fmt: skip
            pts = []
            for p in ws.nu_points:
                if not p["runs"]:
                    pts.append(f"{p['label']}: no finished run")
                    continue
                text = (f"{p['label']}: sign fraction {p['sign'].text('{:.3g}')}, training "
                        f"loss {p['train'].text('{:.3f}')}, gap {p['gap'].text('{:.3f}')}")
                if p["label"] in by_label:
                    cg, ct = by_label[p["label"]]
                    text += (f"; vs ν≈0: training loss {_diff(ct)}, gap {_diff(cg)}")
                pts.append(text)
            lines.append(
                f"- **{ws.name}** ν sweep at N = {ws.nu_size}, at the CLion element row's lr "
                f"({ws.nu_ref_label} is below every τ: Lion's update at that lr; the tuned "
                f"Lion row there: training loss {ref['final_train_loss'].text('{:.3f}')}, gap "
                f"{ref['final_gap'].text('{:.3f}')}): " + "; ".join(pts) + "."
            )  # fmt: skip
    return lines


# ------------------------------------------------------------------------------ markdown


def _design_markdown(ws: WorkloadStudy, plots: dict[str, str]) -> list[str]:
    lines = []
    for design, per in ws.designs.items():
        lines += [f"### {DESIGN_TEXT[design].capitalize()}", ""]
        header = ["", *(f"N={n}" for n in ws.sizes)]
        rows = [["steps", *(str(per[n]) for n in ws.sizes)]]
        if ws.batch:
            rows.append(["epochs", *(f"{_epochs(ws, n, per[n]):.3g}" for n in ws.sizes)])
        lines += [*table(header, rows), "", _matching_text(ws, design) + ".", ""]
        for rule in (r for r in ws.rules if r.design == design):
            key = rule.key
            lines += [f"#### Gap, {rule.text}", "",
                      "Held-out loss − training-subset loss, mean over seeds [95% t interval], "
                      "and the mean held-out loss:", ""]  # fmt: skip
            rows = [[describe_optimizer(lb), *(_gap_held(ws, key, lb, n) if ws.gaps[key][lb][n]
                                               else "–" for n in ws.sizes),
                     ws.slopes[key][lb].text()] for lb in ws.labels]  # fmt: skip
            lines += table(["optimizer", *(f"N={n}" for n in ws.sizes), "slope"], rows)
            if rule.matched:
                lines += ["", "Fraction of its run at which each arm reached the matched loss "
                          "(median over seeds; – : left out or not reached):", ""]
                lines += table(["optimizer", *(f"N={n}" for n in ws.sizes)],
                               [[describe_optimizer(lb),
                                 *(f"{statistics.median(v):.2f}" if (v := ws.fractions[key][lb][n])
                                   else "–" for n in ws.sizes)] for lb in ws.labels])  # fmt: skip
            lines.append("")
            if f"gap-{key}" in plots:
                lines += [f"![gap, {rule.text}]({plots[f'gap-{key}']})", ""]
    return lines


def workload_markdown(ws: WorkloadStudy, meta: dict, plots: dict[str, str]) -> list[str]:
    lines = [f"## {ws.name} ({ws.max_steps} steps)", ""]
    st = meta["settings"][ws.name]
    lines += [f"Sizes N = {', '.join(map(str, ws.sizes))} (nested), seeds "
              f"{', '.join(map(str, meta['seeds']))}; the gap is evaluated every "
              f"{st['eval_every']} steps. Hyper-parameters:", ""]  # fmt: skip
    lines += table(["optimizer", "runs as", "lr", "weight decay", "from"],
                    [[describe_optimizer(r["label"]), f"`{r['spec']}`", fmt_float(r["lr"]),
                      fmt_float(r["weight_decay"]), r["source"]]
                     for r in sorted(meta["rows"][ws.name], key=lambda r: optimizer_order(
                         r["label"]))])  # fmt: skip
    lines.append("")
    if not ws.legacy:
        lines += _design_markdown(ws, plots)
    for rule in (RULES if ws.legacy else ()):
        title = RULE_TEXT[rule]
        if rule == "matched":
            title += f" (target {_g(ws.target, 4)}, from {ws.target_from})"
        lines += [f"### Gap, {title}", "",
                  "Held-out loss − training-subset loss, mean over seeds [95% t "
                  "interval]:", ""]  # fmt: skip
        rows = []
        for lb in ws.labels:
            cells = [describe_optimizer(lb)]
            for n in ws.sizes:
                cells.append(Estimate(list(ws.gaps[rule][lb][n].values())).text("{:.3f}"))
            cells.append(ws.slopes[rule][lb].text())
            rows.append(cells)
        lines += table(["optimizer", *(f"N={n}" for n in ws.sizes), "slope"], rows)
        if rule == "matched":
            lines += ["", "Steps at which runs reached the target (median): " + ", ".join(
                f"{describe_optimizer(lb)} {statistics.median(v):.0f}"
                for lb, v in ws.matched_steps.items() if v) + "."]  # fmt: skip
        lines.append("")
        if f"gap-{rule}" in plots:
            lines += [f"![gap, {RULE_TEXT[rule]}]({plots[f'gap-{rule}']})", ""]
    if ws.tau:
        lines += ["### τ (smallest non-zero abs(c) per step)", ""]
        lines += table(["optimizer", "runs", "τ of a run (min … max)", "median τ_t",
                         "log10 τ^T (median)", "sign-branch fraction"],
                        [[describe_optimizer(lb), str(t["runs"]),
                          f"{_g(t['min'], 2)} … {_g(t['max'], 2)}", _g(t["median_t"], 2),
                          f"{t['log10_tau_T']:.0f}",
                          "1 (Lion)" if t["sign"] is None else _g(t["sign"])]
                         for lb, t in ws.tau.items()])  # fmt: skip
        lines.append("")
        if "tau" in plots:
            lines += [f"![tau_t]({plots['tau']})", ""]
    if ws.nu_points:
        lines += [f"### ν sweep (N = {ws.nu_size}, seeds "
                  f"{', '.join(map(str, meta['nu_seeds']))})", ""]  # fmt: skip
        rows = [[p["label"], p["sign"].text("{:.3g}"), p["train"].text("{:.3f}"),
                 p["gap"].text("{:.3f}"), _g(p["tau"], 2)] for p in ws.nu_points]
        ref = ws.nu_reference
        rows.append(["tuned lion row (its own lr)", "1", ref["final_train_loss"].text("{:.3f}"),
                     ref["final_gap"].text("{:.3f}"), ""])
        lines += table(["point", "sign-branch fraction", "training-subset loss", "gap",
                         "τ (min)"], rows)  # fmt: skip
        lines += ["", f"Against {ws.nu_ref_label} (paired seeds, Holm over the sweep): gap: "
                  + "; ".join(comparison_text(c, "{:+.3f}") for c in ws.nu_comparisons["gap"])
                  + ". Training loss: "
                  + "; ".join(comparison_text(c, "{:+.3f}") for c in ws.nu_comparisons["train"])
                  + ".", ""]  # fmt: skip
        if "nu" in plots:
            lines += [f"![nu sweep]({plots['nu']})", ""]
    if ws.failed:
        lines += ["Runs that did not finish ok: " + "; ".join(ws.failed) + ".", ""]
    return lines


_LEGACY_CAVEAT = (
    "Tiny models and short runs on a CPU: read the numbers as what this protocol "
    "measures at this scale, not as a verdict at scale. With 3 seeds (2 in the ν sweep) "
    "the t intervals are wide and the tests weak; a \"detected\" at 2 or 3 seeds rests "
    "on the t-test's normality assumption, which so few seeds cannot check.",
)


def _design_intro(meta: dict) -> tuple[str, ...]:
    return (
        "Two designs from the same study, reported separately: fixed steps (every N trains "
        "the same number of steps) and fixed epochs (every N makes the same number of passes "
        "E over its examples, E being the fixed-steps run's at the largest N, which both "
        "designs share; sizes whose E epochs are fewer steps than the floor train the floor, "
        "so more epochs: the tables show each size's steps and epochs). In each design the "
        "gap is read at the end of the run and at a matched training loss: the highest final "
        "training loss among the arms (optimizer and N) that train, where an arm trains when "
        "its mean final training loss is clearly below the plateau level (the unigram "
        "model's loss for a language model, chance ln(classes) for a classifier); the arms "
        "that do not are left out of matching and named. Every gap is printed with the "
        "held-out loss of the same evaluation.", "",
        f"Tiny models on a CPU: read the numbers as what this protocol measures at this "
        f"scale, not as a verdict at scale. {len(meta['seeds'])} seeds per optimizer, size "
        "and design.",
    )  # fmt: skip


def report_markdown(studies: list[WorkloadStudy], meta: dict, plots: dict[str, dict[str, str]],
                    problems: list[str], timing: list[str]) -> str:  # fmt: skip
    cmd = ["clion-bench", "study", "gen-gap", "--preset", meta["preset"]]
    if meta.get("tuned_dir"):
        cmd += ["--tuned", meta["tuned_dir"]]
    lines = [
        "# Generalization gap against N and ν (`clion-bench study gen-gap`)", "",
        f"Written by `{shlex.join(cmd)}` (then `--report_only`). The paper's claim: Lion's "
        "generalization error is O(1/(N·τ^T)), CLion's O(1/N) (τ: the smallest non-zero "
        "abs(c) of the update direction). Each optimizer trains at its tuned "
        "hyper-parameters on nested training subsets of N examples; the gap is the held-out "
        "loss minus the loss on the same N training examples, both evaluated in eval mode "
        "on the whole set. Two stopping rules: the fixed step budget, and matched training "
        "loss (each run read at its first evaluation whose training-subset loss reaches a "
        "target common to every optimizer and N; identical to stopping there with "
        "`--stop_at_train_loss`). Intervals: 95% t intervals over seeds; slope "
        "differences are paired by seed (paired t-test) and Holm-corrected within a "
        "workload and rule.", "",
        *(_LEGACY_CAVEAT if "designs" not in meta else _design_intro(meta)), "",
        "## Findings", "", FINDINGS_BEGIN, *findings(studies), FINDINGS_END, "",
    ]  # fmt: skip
    for ws in studies:
        lines += workload_markdown(ws, meta, plots.get(ws.name, {}))
    lines += ["## Cost", "", *timing, ""]
    if problems:
        lines += ["## Problems", "", *(f"- {p}" for p in problems), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ plots


def _legend(ax) -> None:  # noqa: ANN001
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=LEGEND_SIZE - 1)


def make_plots(studies: list[WorkloadStudy], results: list[dict], plot_dir: Path,
               figures: dict[str, Any] | None = None
               ) -> tuple[dict[str, dict[str, str]], list[str]]:  # fmt: skip
    """Write the PNGs (the plot rules of :func:`clion_hf.bench.report.make_plots`); with
    ``figures``, each figure is also kept there (open) by file name, for inspection."""
    book = Figures(plot_dir, figures)
    import matplotlib.pyplot as plt

    plots: dict[str, dict[str, str]] = defaultdict(dict)

    def attempt(w: str, key: str, fname: str, draw) -> None:
        path = book.draw(fname, draw)
        if path is not None:
            plots[w][key] = path

    for ws in studies:
        for rule in ws.rules:
            def gap_plot(ws=ws, rule=rule):
                fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
                for lb in ws.labels:
                    for ax, data in zip(axes, (ws.gaps, ws.held), strict=True):
                        xs, ys, lo, hi = [], [], [], []
                        for n in ws.sizes:
                            e = Estimate(list(data[rule.key][lb][n].values()))
                            if e.mean is not None and e.mean > 0:
                                xs.append(n)
                                ys.append(e.mean)
                                lo.append(e.mean - (e.lo if e.lo is not None and e.lo > 0
                                                    else e.mean))  # fmt: skip
                                hi.append((e.hi if e.hi is not None else e.mean) - e.mean)
                        if xs:
                            label = describe_optimizer(lb)
                            if data is ws.gaps:
                                label += f" (slope {ws.slopes[rule.key][lb].text()})"
                            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3,
                                        color=colour(lb), label=label)  # fmt: skip
                for ax, what in zip(axes, ("held-out − training loss", "held-out loss"),
                                    strict=True):  # fmt: skip
                    ax.set_xscale("log", base=2)
                    ax.set_yscale("log")
                    label_axes(ax, f"{ws.name}: {rule.text}\n(mean over seeds, bars: 95% "
                               "t interval)", "N (training examples)",
                               f"{what} (nats, eval mode)", title_size=10)  # fmt: skip
                if ws.plateau is not None:  # where a run that learned nothing sits
                    p = ws.plateau
                    axes[1].axhline(p["level"], color="0.5", linestyle=":", linewidth=1,
                                    label=f"{p['kind']} level {p['level']:.3g}")  # fmt: skip
                for ax in axes:
                    _legend(ax)
                fig.tight_layout()
                return fig

            attempt(ws.name, f"gap-{rule.key}", f"gap-{rule.key}-{ws.name}.png", gap_plot)

        def tau_plot(ws=ws):
            mine = [r for r in results if r["workload"] == ws.name and r["status"] == "ok"
                    and r.get("stage") == "size" and r["optimizer"] in ws.tau]  # fmt: skip
            if not mine:
                return None
            fig, ax = plt.subplots(figsize=(6, 4.2))
            n = ws.sizes[-1]  # the largest N
            for lb in ws.tau:
                by_step: dict[int, list[float]] = defaultdict(list)
                for r in mine:
                    if r["optimizer"] == lb and f"{n}" == _flag(r["recipe_args"],
                                                                "--train_subset_size"):
                        for s, v in curve(r, "optim/min_abs_c"):
                            if v > 0:
                                by_step[s].append(math.log10(v))
                steps = sorted(by_step)
                if steps:
                    ax.plot(steps, [statistics.fmean(by_step[s]) for s in steps],
                            color=colour(lb), marker=".", label=describe_optimizer(lb))
            label_axes(ax, f"{ws.name}: τ_t at N = {n}\n(min over each log interval; mean of "
                       "log10 over seeds)", "step", "log10 τ_t (gradient units)", title_size=10)
            _legend(ax)
            return fig

        attempt(ws.name, "tau", f"tau-{ws.name}.png", tau_plot)

        def nu_plot(ws=ws):
            if not ws.nu_points:
                return None
            fig, axes = plt.subplots(1, 3, figsize=(14, 4))
            for mode, marker in (("element", "o"), ("global", "s")):
                pts = [p for p in ws.nu_points if p["mode"] == mode and p["runs"]]
                if not pts:
                    continue
                for ax, key in zip(axes, ("sign", "train", "gap"), strict=True):
                    ax.plot([p["nu"] for p in pts], [p[key].mean for p in pts], marker=marker,
                            color=colour(f"clion:mode={mode}"), label=f"clion {mode}")
            for ax, key, name in zip(axes, ("sign", "final_train_loss", "final_gap"),
                                     ("sign-branch fraction", "training-subset loss",
                                      "held-out − training loss"),
                                     strict=True):  # fmt: skip
                ref = ws.nu_reference.get(key)
                if key != "sign" and ref is not None and ref.mean is not None:
                    ax.axhline(ref.mean, color=colour("lion"), linestyle="--",
                               label="lion (tuned row)")  # fmt: skip
                if key == "sign":
                    ax.set_ylim(-0.01, 1.01)
                ax.set_xscale("log")
                ax.set_xlabel("ν")
                ax.set_ylabel(name if key == "sign" else f"{name} (nats, eval mode)")
                ax.set_title(f"{name} (mean over seeds)", fontsize=10)
                _legend(ax)
            fig.suptitle(f"{ws.name}: ν sweep at N = {ws.nu_size}")
            fig.tight_layout(rect=(0, 0, 1, 0.94))
            return fig

        attempt(ws.name, "nu", f"nu-{ws.name}.png", nu_plot)
    return dict(plots), book.errors


# ------------------------------------------------------------------------------ writing


def findings_from_csv(csv_text: str, meta: dict) -> list[str]:
    """The Findings lines recomputed from ``results.csv`` and ``bench.json`` alone."""
    return findings(analyze(rows_from_csv(csv_text, CSV_COLUMNS, _TEXT, _INTS), meta))


def findings_block(report_text: str) -> list[str]:
    return render.findings_block(report_text, FINDINGS_BEGIN, FINDINGS_END)


def _ints(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)


def _reals(v: Any) -> bool:
    return isinstance(v, list) and all(number(x) is not None for x in v)


def _study_row(r: Any) -> bool:
    if not (isinstance(r, dict) and all(isinstance(r.get(k), str)
                                        for k in ("label", "spec", "source"))):  # fmt: skip
        return False
    try:
        parse_optimizer(r["spec"])
    except SpecError:
        return False
    return number(r.get("lr")) is not None and number(r.get("weight_decay")) is not None


_SETTINGS = ("max_steps", "eval_every", "log_every", "nu_size")


def _designs_ok(v: Any) -> bool:
    """Design -> N (a string of digits) -> steps (an int), with the fixed-steps design."""
    return isinstance(v, dict) and "steps" in v and all(
        d in DESIGN_TEXT and isinstance(per, dict) and per and all(
            isinstance(n, str) and n.isdigit() and isinstance(k, int) and k > 0
            for n, k in per.items()) for d, per in v.items())  # fmt: skip


def _plateau_ok(v: Any) -> bool:
    """None (no plateau) or ``{"kind", "level", "margin"}``."""
    if v is None:
        return True
    return (isinstance(v, dict) and isinstance(v.get("kind"), str)
            and number(v.get("level")) is not None and number(v.get("margin")) is not None)


def study_meta_problem(meta: Any) -> str | None:
    """Why a directory's ``bench.json`` cannot drive a gen-gap report (one line), or None:
    every field the report reads, with the type it relies on."""
    if not isinstance(meta, dict) or meta.get("study") != "gen-gap":
        return "is not a gen-gap study's (missing, unreadable or another experiment's)"
    if meta.get("schema") != STUDY_SCHEMA:
        return f"has schema {meta.get('schema')!r}, this version reads {STUDY_SCHEMA}"
    names = meta.get("workloads")
    checks = {
        "preset": isinstance(meta.get("preset"), str),
        "tuned_dir": meta.get("tuned_dir") is None or isinstance(meta.get("tuned_dir"), str),
        "workloads": isinstance(names, list) and all(isinstance(w, str) and w in WORKLOADS
                                                     for w in names),  # fmt: skip
        "seeds": _ints(meta.get("seeds")),
        "nu_seeds": _ints(meta.get("nu_seeds", [])),
        "nu_values": _reals(meta.get("nu_values", [])),
        "nu_global": _reals(meta.get("nu_global", [])),
        "nu_sweep": isinstance(meta.get("nu_sweep", False), bool),
    }
    bad = next((k for k, ok in checks.items() if not ok), None)
    if bad is not None:
        return f"has a bad field {bad!r}: {json.dumps(meta.get(bad))[:60]}"
    for w in names:  # the fields a study writes from cpu-v2 on (absent in older ones)
        if "designs" in meta and not _designs_ok((meta.get("designs") or {}).get(w)):
            return f"has a bad field 'designs' for {w}"
        if "plateau" in meta and not _plateau_ok((meta.get("plateau") or {}).get(w, 0)):
            return f"has a bad field 'plateau' for {w}"
    for key, check in (("sizes", _ints), ("rows", lambda v: isinstance(v, list) and all(
            _study_row(r) for r in v)), ("settings", lambda v: isinstance(v, dict) and all(
            isinstance(v.get(k), int) for k in _SETTINGS))):  # fmt: skip
        part = meta.get(key)
        for w in names:
            if not isinstance(part, dict) or not check(part.get(w)):
                return f"has a bad field {key!r} for {w}"
    return None


def write_study_report(out_dir: Path) -> dict[str, Path]:
    """Write ``report.md``, ``results.csv`` and ``plots/*.png`` of a study directory.

    Raises :class:`ReportError` (one line) when ``out_dir`` has no usable study
    ``bench.json`` or cannot be written (read-only, a full disk).
    """
    meta = read_json(out_dir / "bench.json")
    problem = study_meta_problem(meta)
    if problem is not None:
        raise ReportError(f"{out_dir}/bench.json {problem}")
    try:
        probe_writable(out_dir)
        return _write_study_report(out_dir, meta)
    except OSError as err:
        raise ReportError(f"cannot write the report into {out_dir}: "
                          f"{err.strerror or err}") from None


def _write_study_report(out_dir: Path, meta: dict) -> dict[str, Path]:
    results, problems = load_results(out_dir)
    rows = sorted((summarize_run(r) for r in results),
                  key=lambda r: (r["workload"], r["stage"], r["optimizer"], r["n"] or 0,
                                 r["seed"]))  # fmt: skip
    csv_text = rows_csv(rows, CSV_COLUMNS)
    studies = analyze(rows_from_csv(csv_text, CSV_COLUMNS, _TEXT, _INTS), meta)
    plots, errors = make_plots(studies, results, out_dir / "plots")
    timing = timing_lines(results, out_dir / "host-load.log")
    atomic_write_text(out_dir / "results.csv", csv_text)
    atomic_write_text(out_dir / "report.md",
                      report_markdown(studies, meta, plots, problems + errors, timing))
    return {"report": out_dir / "report.md", "csv": out_dir / "results.csv",
            **{f"{w}-{k}": out_dir / v for w, d in plots.items() for k, v in d.items()}}

