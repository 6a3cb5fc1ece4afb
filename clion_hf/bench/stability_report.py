"""The stability study's report: drift between neighbouring-set runs against t, ν and N.

Everything in ``report.md``'s Findings is a function of ``results.csv`` and ``bench.json``
alone (:func:`findings_from_csv`; a test checks it), as for the other reports.

Statistics (:mod:`clion_hf.bench.stats`: paired t-tests and t intervals over pairs, Holm):

* Growth in t: for each pair, least squares of ln(drift) on ln(t) (the exponent a of
  drift ∝ t^a) and of ln(drift) on t (a rate r per 1000 steps, drift ∝ e^{r t}), over the
  logged steps from T/:data:`FIT_FROM` to T where the drift is positive. The paper's
  Lion bound grows geometrically in T (a positive rate that does not fall with T);
  uniform-stability bounds of SGD on convex smooth losses grow linearly (a ≈ 1).
* Per arm: the mean over pairs with a 95% t interval; drifts as geometric means
  (the mean of log10 drift).
* Comparisons, paired by pair (same S, S', initialization and order): Lion minus every
  other arm (except the control, which is Lion's update), per quantity, Holm within the
  quantity; CLion element at each ν minus Lion (log10 drift at T), Holm over the sweep;
  CLion global minus SGD with momentum. "no difference detected" when the interval
  contains 0.
* N at fixed T: for each pair, the slope of ln(drift at T) on ln(N) over the sizes.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clion_hf._files import atomic_write_text, read_json

from .plotstyle import LEGEND_SIZE, colour
from .render import save_figure
from .report import ReportError, rows_csv
from .specs import OPTION_KEYS
from .stability import stability_result_problem
from .stats import Comparison, compare_family, t_interval

LEVEL = 0.95
# below this many pairs no verdict is given: with n pairs an exact sign-flip test cannot go
# below p = 2 / 2^n (n = 6: 0.031), so fewer pairs could not support "detected" at 5%
MIN_PAIRS_VERDICT = 6
FIT_FROM = 64  # growth fits use the logged steps from T/64 to T
FINDINGS_BEGIN = "<!-- stability-findings:begin -->"
FINDINGS_END = "<!-- stability-findings:end -->"
LION = "lion"
SGD = "sgd:momentum=0.9"
GLOBAL = "clion"

CSV_COLUMNS = [
    "run_id", "stage", "design", "optimizer", "lr", "n", "steps", "seed", "status", "step",
    "drift", "rel_drift", "norm", "any_diff", "sign_diff", "branch_diff", "test_loss",
    "test_loss_prime", "loss_diff", "tau", "sign_fraction", "val_loss", "wall_s",
]  # fmt: skip
_TEXT = {"run_id", "stage", "design", "optimizer", "status"}


# ------------------------------------------------------------------------------ rows


def result_rows(result: dict) -> list[dict[str, Any]]:
    """One CSV row per logged step of a run (a run without history: one row, no step)."""
    base = {k: result.get(k) for k in ("run_id", "stage", "design", "optimizer", "lr", "n",
                                       "steps", "seed", "status", "wall_s")}  # fmt: skip
    hist = result.get("history") or [{}]
    return [{**base, **{k: _short(h.get(k)) for k in CSV_COLUMNS if k in h}} for h in hist]


def _short(v: Any) -> Any:
    """7 significant digits: the runs are fp32 (about 7 digits), and the CSV stays small.
    The report is computed from the CSV as written, so it and the CSV agree exactly."""
    return float(f"{v:.7g}") if isinstance(v, float) else v


def _rows_for_seed(seed: int | float | None) -> int:
    return int(seed) if seed is not None else -1


# ------------------------------------------------------------------------------ analysis


@dataclass
class Estimate:
    mean: float | None
    lo: float | None = None
    hi: float | None = None
    n: int = 0

    @classmethod
    def of(cls, values: list[float]) -> Estimate:
        vals = [v for v in values if v is not None and math.isfinite(v)]
        if not vals:
            return cls(None)
        mean = statistics.fmean(vals)
        if len(vals) < 2:
            return cls(mean, n=len(vals))
        lo, hi = t_interval(vals, LEVEL)
        return cls(mean, lo, hi, len(vals))

    def text(self, fmt: str = "{:.3g}") -> str:
        if self.mean is None:
            return "n/a"
        if self.lo is None:
            return f"{fmt.format(self.mean)} (n={self.n})"
        return f"{fmt.format(self.mean)} [{fmt.format(self.lo)}, {fmt.format(self.hi)}]"

    def pow10(self) -> str:
        """A mean of log10 values as a geometric mean with its interval."""
        if self.mean is None:
            return "n/a"
        core = f"{10 ** self.mean:.3g}"
        if self.lo is None:
            return core
        return f"{core} [{10 ** self.lo:.3g}, {10 ** self.hi:.3g}]"


def _fit(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3:
        return None
    return float(np.polyfit(np.asarray(xs), np.asarray(ys), 1)[0])


@dataclass
class ArmStudy:
    label: str
    lr: float | None
    curves: dict[int, list[tuple[int, dict]]] = field(default_factory=dict)  # seed -> T run
    n_drift: dict[int, dict[int, float]] = field(default_factory=dict)  # seed -> N -> drift
    exponent: dict[int, float] = field(default_factory=dict)  # seed -> a
    rate: dict[int, float] = field(default_factory=dict)  # seed -> r per 1000 steps
    n_slope: dict[int, float] = field(default_factory=dict)
    end: dict[int, dict] = field(default_factory=dict)  # seed -> last logged row of T run
    failed: int = 0

    def per_seed(self, key: str, log10: bool = False) -> dict[int, float]:
        out = {}
        for s, row in self.end.items():
            v = row.get(key)
            if v is None or not math.isfinite(v) or (log10 and v <= 0):
                continue
            out[s] = math.log10(v) if log10 else v
        return out

    def mean_over_curve(self, key: str) -> Estimate:
        """The per-pair mean of ``key`` over the logged steps, then mean over pairs."""
        vals = []
        for pts in self.curves.values():
            xs = [r[key] for _, r in pts if r.get(key) is not None and math.isfinite(r[key])]
            if xs:
                vals.append(statistics.fmean(xs))
        return Estimate.of(vals)


@dataclass
class Analysis:
    meta: dict
    arms: dict[str, ArmStudy]
    tuning: dict[str, list[tuple[float, float | None, str]]]  # label -> (lr, val_loss, status)
    chosen: dict[str, float | None]
    vs_lion: dict[str, list[Comparison]]  # quantity -> Lion minus each arm
    nu_vs_lion: list[tuple[float, Comparison]]
    global_vs_sgd: dict[str, Comparison]


CONVEX = "digits-softmax"
# the model regime's workloads (drift_models.py): what a line of text calls them
_REGIMES = {
    "gpt2": ("tiny GPT-2 (width {w}, 2 layers) on the offline corpus' 64-token blocks",
             "blocks", "the offline corpus' training split"),
    "vit": ("tiny ViT (width {w}, 2 layers) on the offline digits 0-4", "images",
            "the offline digits' training split"),
}  # fmt: skip


def regime(meta: dict) -> tuple[str, str, str] | None:
    """(model text, what an example is, the pool) of a model regime; None: convex."""
    workload = meta.get("workload", CONVEX)
    if workload == CONVEX or "-w" not in workload:
        return None
    family, width = workload.rsplit("-w", 1)
    if family not in _REGIMES:
        return None
    model, unit, pool = _REGIMES[family]
    return model.format(w=width), unit, pool


def _lr_text(lr: float | None) -> str:
    return "n/a" if lr is None else f"{lr:.3g}"


def _nu_of(label: str) -> float | None:
    if not label.startswith("clion:mode=element,nu="):
        return None
    return float(label.split("nu=")[1])


def arm_order(meta: dict) -> list[str]:
    return [a["label"] for a in meta.get("arms", [])]


def _chosen_lrs(meta: dict, tuning: dict[str, list[tuple[float, float | None, str]]]
                ) -> dict[str, float | None]:  # fmt: skip
    chosen: dict[str, float | None] = {}
    for a in meta.get("arms", []):
        if a.get("lr_of"):
            continue
        ok = [(v, lr) for lr, v, st in tuning.get(a["label"], [])
              if st == "ok" and v is not None and math.isfinite(v)]  # fmt: skip
        chosen[a["label"]] = min(ok)[1] if ok else None
    for a in meta.get("arms", []):
        if a.get("lr_of"):
            chosen[a["label"]] = chosen.get(a["lr_of"])
    return chosen


def _paired(a: dict[int, float], b: dict[int, float], name_a: str, name_b: str) -> Comparison:
    seeds = sorted(set(a) & set(b))
    return Comparison(name_a, name_b, [a[s] - b[s] for s in seeds])


def analyze(rows: list[dict], meta: dict) -> Analysis:
    t_max, t_fixed, n_main = meta["t_max"], meta["t_fixed"], meta["n_main"]
    order = arm_order(meta)
    tuning: dict[str, list] = defaultdict(list)
    by_run: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["stage"] == "tune":
            tuning[r["optimizer"]].append((r["lr"], r.get("val_loss"), r["status"]))
        else:
            by_run[r["run_id"]].append(r)
    chosen = _chosen_lrs(meta, tuning)
    arms = {label: ArmStudy(label, chosen.get(label)) for label in order}
    for runs in by_run.values():
        first = runs[0]
        arm = arms.get(first["optimizer"])
        if arm is None:
            continue
        if first["status"] != "ok":
            arm.failed += 1
            continue
        seed = _rows_for_seed(first["seed"])
        pts = sorted(((int(r["step"]), r) for r in runs if r["step"] is not None),
                     key=lambda p: p[0])  # fmt: skip
        if first["design"] == "T" and first["steps"] == t_max and first["n"] == n_main:
            arm.curves[seed] = pts
            arm.end[seed] = pts[-1][1]
            at_fixed = [r for s, r in pts if s == t_fixed]
            if at_fixed and at_fixed[0]["drift"] is not None:
                arm.n_drift.setdefault(seed, {})[n_main] = at_fixed[0]["drift"]
        elif first["design"] == "N" and pts and pts[-1][0] == t_fixed:
            arm.n_drift.setdefault(seed, {})[int(first["n"])] = pts[-1][1]["drift"]
    lo_t = t_max / FIT_FROM
    for arm in arms.values():
        for seed, pts in arm.curves.items():
            use = [(s, r["drift"]) for s, r in pts
                   if s >= lo_t and r["drift"] is not None and r["drift"] > 0]  # fmt: skip
            a = _fit([math.log(s) for s, _ in use], [math.log(d) for _, d in use])
            r = _fit([s / 1000 for s, _ in use], [math.log(d) for _, d in use])
            if a is not None and r is not None:
                arm.exponent[seed], arm.rate[seed] = a, r
        for seed, per_n in arm.n_drift.items():
            use = [(n, d) for n, d in per_n.items() if d is not None and d > 0]
            if len(use) >= 2:
                arm.n_slope[seed] = float(np.polyfit([math.log(n) for n, _ in use],
                                                     [math.log(d) for _, d in use], 1)[0])
    control = next((lb for lb in order if lb.startswith("clion:nu=")), None)
    others = [lb for lb in order if lb not in (LION, control)]
    lion = arms.get(LION)
    vs_lion: dict[str, list[Comparison]] = {}
    if lion is not None:
        for key, get in (("exponent", lambda x: x.exponent), ("rate", lambda x: x.rate),
                         ("log10 drift at T", lambda x: x.per_seed("drift", True)),
                         ("log10 relative drift at T",
                          lambda x: x.per_seed("rel_drift", True))):  # fmt: skip
            vs_lion[key] = compare_family([_paired(get(lion), get(arms[o]), LION, o)
                                           for o in others])  # fmt: skip
    nu_cmp: list[tuple[float, Comparison]] = []
    if lion is not None:
        nus = sorted((nu, lb) for lb in order if (nu := _nu_of(lb)) is not None)
        comps = compare_family([_paired(arms[lb].per_seed("drift", True),
                                        lion.per_seed("drift", True), lb, LION)
                                for _, lb in nus])  # fmt: skip
        nu_cmp = [(nu, c) for (nu, _), c in zip(nus, comps, strict=True)]
    gvs: dict[str, Comparison] = {}
    if GLOBAL in arms and SGD in arms:
        g, s = arms[GLOBAL], arms[SGD]
        pairs = {"exponent": (g.exponent, s.exponent),
                 "log10 drift at T": (g.per_seed("drift", True), s.per_seed("drift", True)),
                 "log10 relative drift at T": (g.per_seed("rel_drift", True),
                                               s.per_seed("rel_drift", True)),
                 "held-out loss at T": (g.per_seed("test_loss"), s.per_seed("test_loss"))}
        comps = compare_family([_paired(a, b, GLOBAL, SGD) for a, b in pairs.values()])
        gvs = dict(zip(pairs, comps, strict=True))
    return Analysis(meta, arms, dict(tuning), chosen, vs_lion, nu_cmp, gvs)


# ------------------------------------------------------------------------------ text


def ctext(c: Comparison, fmt: str = "{:+.3g}") -> str:
    """A comparison with its interval and verdict; no verdict below :data:`MIN_PAIRS_VERDICT`."""
    if c.n and c.n < MIN_PAIRS_VERDICT:
        return (f"{fmt.format(statistics.fmean(c.diffs))} (n={c.n}: too few pairs for a "
                "verdict)")  # fmt: skip
    if math.isnan(c.lo):
        mean = fmt.format(statistics.fmean(c.diffs)) if c.diffs else "n/a"
        return f"{mean} (n={c.n}, no interval)"
    verdict = "detected" if c.detected else "no difference detected"
    return (f"{fmt.format(c.mean)} [{fmt.format(c.lo)}, {fmt.format(c.hi)}] "
            f"({c.level:.1%} interval, n={c.n}; {verdict})")  # fmt: skip


def findings(an: Analysis) -> list[str]:
    m = an.meta
    out: list[str] = []
    lion = an.arms.get(LION)
    t_max, n_main = m["t_max"], m["n_main"]
    reg = regime(m)
    if reg is None:
        head = (f"Convex regime (linear softmax on digits, N = {n_main}, batch {m['batch']}, "
                f"constant lr, {m['pairs']} pairs per arm; growth fitted over the logged t in "
                f"[{t_max / FIT_FROM:g}, {t_max}]).")  # fmt: skip
    else:
        head = (f"Model regime ({reg[0]}, N = {n_main} {reg[1]}, batch {m['batch']}, dropout "
                f"off, constant lr, {m['pairs']} pairs per arm; growth fitted over the logged "
                f"t in [{t_max / FIT_FROM:g}, {t_max}]).")  # fmt: skip
    out.append(f"- {head}")
    for label, arm in an.arms.items():
        if not arm.exponent:
            continue
        d = Estimate.of(list(arm.per_seed("drift", True).values()))
        a = Estimate.of(list(arm.exponent.values())).text("{:.2f}")
        out.append(f"- {label} (lr {_lr_text(arm.lr)}): drift at T = {t_max} is {d.pow10()}; "
                   f"it grows as t^a with a = {a}"
                   f", rate r = {Estimate.of(list(arm.rate.values())).text('{:.2f}')} per "
                   f"1000 steps.")  # fmt: skip
    if lion is not None:
        for key, comps in an.vs_lion.items():
            parts = [f"{c.b}: {ctext(c)}" for c in comps if c.n]
            if parts:
                out.append(f"- Lion minus each arm, {key}: " + "; ".join(parts) + ".")
        taus = [r["tau"] for pts in lion.curves.values() for s, r in pts
                if s >= t_max / FIT_FROM and r.get("tau") is not None]  # fmt: skip
        if taus:
            med = statistics.median(taus)
            rate = Estimate.of(list(lion.rate.values()))
            out.append(f"- Lion's τ_t (smallest non-zero abs(c) of the S run per logged step, "
                       f"t >= {t_max / FIT_FROM:g}): median {med:.3g}, range {min(taus):.3g} "
                       f"to {max(taus):.3g}. At the median, the bound's factor 1/τ^T grows by "
                       f"ln(1/τ) = {-math.log(med):.1f} in ln per step ({-1000 * math.log(med):.3g}"
                       f" per 1000 steps); Lion's measured drift grows by "
                       f"{rate.text('{:.2f}')} in ln per 1000 steps.")  # fmt: skip
    if an.nu_vs_lion:
        parts = [f"ν = {nu:g}: {ctext(c)}" for nu, c in an.nu_vs_lion]
        out.append("- CLion element minus Lion, log10 drift at T (same lr): " + "; ".join(parts)
                   + ".")  # fmt: skip
        sep = [nu for nu, c in an.nu_vs_lion if c.detected and c.n >= MIN_PAIRS_VERDICT]
        first = min(sep) if sep else None
        if all(c.n < MIN_PAIRS_VERDICT for _, c in an.nu_vs_lion):
            out.append(f"- Too few pairs (< {MIN_PAIRS_VERDICT}) to say from what ν element's "
                       "drift separates from Lion's.")  # fmt: skip
        elif first is None:
            out.append("- No ν of the sweep separates element's drift from Lion's.")
        else:
            above = all(c.detected for nu, c in an.nu_vs_lion if nu >= first)  # n checked
            out.append(f"- Element's drift separates from Lion's from ν = {first:g}"
                       + (" (and at every larger ν of the sweep)." if above
                          else " (not at every larger ν of the sweep).") )  # fmt: skip
        fr = []
        for nu, _ in an.nu_vs_lion:
            arm = an.arms[f"clion:mode=element,nu={nu:g}"]
            fr.append(f"ν = {nu:g}: {arm.mean_over_curve('sign_fraction').text('{:.3f}')}")
        out.append("- Element's fraction of coordinates in the sign branch (mean over logged "
                   "steps): " + "; ".join(fr) + ".")  # fmt: skip
    if an.global_vs_sgd:
        parts = [f"{k}: {ctext(c)}" for k, c in an.global_vs_sgd.items()]
        out.append("- CLion global minus SGD with momentum (each at its tuned lr): "
                   + "; ".join(parts) + ".")  # fmt: skip
    g = an.arms.get(GLOBAL)
    if g is not None and g.curves:
        fr = [r["sign_fraction"] for pts in g.curves.values() for _, r in pts
              if r.get("sign_fraction") is not None]  # fmt: skip
        taus = [r["tau"] for pts in g.curves.values() for _, r in pts if r.get("tau") is not None]
        if fr and taus:
            out.append(f"- CLion global (ν = 1e-4) took the sign branch on a fraction "
                       f"{max(fr):.3g} of coordinates at most over its logged steps; its τ_t "
                       f"ranged {min(taus):.3g} to {max(taus):.3g}.")  # fmt: skip
    control = next((a for lb, a in an.arms.items() if lb.startswith("clion:nu=")), None)
    if control is not None and lion is not None and control.end and lion.end:
        common = sorted(set(control.end) & set(lion.end))
        gap = max((abs(control.end[s]["drift"] - lion.end[s]["drift"]) for s in common),
                  default=math.nan)  # fmt: skip
        fr = [r["sign_fraction"] for pts in control.curves.values() for _, r in pts
              if r.get("sign_fraction") is not None]  # fmt: skip
        out.append(f"- Control {control.label} (at Lion's lr) took the sign branch on a "
                   f"fraction {min(fr) if fr else math.nan:.3g} of coordinates at least; its "
                   f"drift at T differs from Lion's by at most {gap:.3g} over {len(common)} "
                   f"pairs.")  # fmt: skip
    slopes = [f"{lb}: {Estimate.of(list(a.n_slope.values())).text('{:.2f}')}"
              for lb, a in an.arms.items() if a.n_slope]  # fmt: skip
    if slopes:
        out.append(f"- Slope of log drift at T = {m['t_fixed']} against log N (N in "
                   f"{m['sizes']}): " + "; ".join(slopes) + ".")  # fmt: skip
    return out


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]  # fmt: skip


def _convex_intro(m: dict) -> list[str]:
    """The convex regime's title and method paragraphs (as first committed)."""
    return [
        "# Stability: drift between runs on neighbouring training sets", "",
        f"Generated by `clion-bench study stability --preset {m['preset']}` "
        "(clion_hf/bench/stability.py, stability_report.py). Preset: "
        f"{m['description']}.", "",
        "Each pair: S = N examples of the digits pool, S' = S with one position replaced by "
        "an example from outside S; same initialization, same mini-batch positions at every "
        "step (the replaced example enters both runs at the same steps); the two runs are "
        "stepped in lockstep in one process. Logged at log-spaced steps: ‖θ_t − θ′_t‖₂, the "
        "same relative to ‖θ_t‖, the fraction of coordinates whose update differed in sign "
        "or branch (mean over the steps since the last log), the held-out loss of both "
        f"runs ({m['test_size']} test images) and τ_t (smallest non-zero abs(c) of the S "
        "run). Intervals: 95% t intervals over pairs; comparisons paired by pair (paired "
        "t-test), Holm within each family (the stated level), \"no difference detected\" "
        "when the interval contains 0.", "",
        "## Learning rates (declared sweep, same command)", "",
        f"One run per grid point on a tuning draw (seed {m['tune_seed']}, N = {m['n_main']}, "
        f"T = {m['t_fixed']}), chosen by the lowest final loss on {m['val_size']} validation "
        "images. Lion's grid is AdamW's choice / 3, 5, 10; CLion global's grid is SGD-sized; "
        "the element ν points and the global control run at Lion's lr. No weight decay.", "",
    ]  # fmt: skip


def _model_intro(m: dict, reg: tuple[str, str, str]) -> list[str]:
    """The method paragraphs of a model regime's report (the convex one's stay as written)."""
    model, unit, pool = reg
    grids = "; ".join(f"{a['label']}: {', '.join(f'{v:g}' for v in a['grid'])}"
                      for a in m.get("arms", []) if a.get("grid"))  # fmt: skip
    return [
        f"Each pair: S = N {unit} drawn from {pool}, S' = S with one position replaced by one "
        "from outside S; the same initialization (the second model is a copy of the first), the "
        "same mini-batch positions at every step (the replaced example enters both runs at "
        "the same steps); the two runs are stepped in lockstep in one process by a plain "
        f"torch loop, with dropout off (so that the replaced example is the runs' only "
        f"difference). Model: {model}. Logged at log-spaced steps: ‖θ_t − θ′_t‖₂ over all "
        "parameters, the same relative to ‖θ_t‖, the fraction of coordinates whose update "
        "differed in sign or branch (mean over the steps since the last log), the held-out "
        f"loss of both runs ({m['test_size']} test {unit}) and τ_t (smallest non-zero abs(c) "
        "of the S run). Intervals: 95% t intervals over pairs; comparisons paired by pair "
        "(paired t-test), Holm within each family (the stated level), \"no difference "
        "detected\" when the interval contains 0.", "",
        "## Learning rates (declared sweep, same command)", "",
        f"One run per grid point on a tuning draw (seed {m['tune_seed']}, N = {m['n_main']}, "
        f"T = {m['t_fixed']}), chosen by the lowest final loss on {m['val_size']} validation "
        f"{unit}. Grids (around the lrs tuned for this workload in "
        f"docs/benchmarks/cpu-2026-11-29): {grids}; the element ν points and the global "
        "control run at Lion's lr. No weight decay.", "",
    ]  # fmt: skip


def report_markdown(an: Analysis, plots: dict[str, str], problems: list[str]) -> list[str]:
    m = an.meta
    reg = regime(m)
    if reg is not None:
        lines = [
            "# Stability: drift between runs on neighbouring training sets", "",
            f"Generated by `clion-bench study stability --preset {m['preset']}` "
            "(clion_hf/bench/stability.py, drift_models.py, stability_report.py). Preset: "
            f"{m['description']}.", "", *_model_intro(m, reg),
        ]  # fmt: skip
    else:
        lines = _convex_intro(m)
    rows = []
    for label in arm_order(m):
        tried = sorted(an.tuning.get(label, []))
        grid = ", ".join(f"{lr:.3g}: {v:.3f}" if v is not None else f"{lr:.3g}: {st}"
                         for lr, v, st in tried) or "(Lion's lr)"  # fmt: skip
        lr = an.chosen.get(label)
        edge = ""
        if tried and lr is not None and lr in (tried[0][0], tried[-1][0]):
            edge = " (edge of the grid)"
        rows.append([label, f"{lr:.3g}{edge}" if lr is not None else "n/a", grid])
    lines += _table(["optimizer", "chosen lr", "lr: validation loss"], rows) + [""]
    lines += ["## Per arm (T design: N = {}, T = {})".format(m["n_main"], m["t_max"]), ""]
    rows = []
    for label, a in an.arms.items():
        rows.append([
            label, str(len(a.end)) + (f" ({a.failed} failed)" if a.failed else ""),
            Estimate.of(list(a.per_seed("test_loss").values())).text("{:.3f}"),
            Estimate.of(list(a.per_seed("drift", True).values())).pow10(),
            Estimate.of(list(a.per_seed("rel_drift", True).values())).pow10(),
            Estimate.of([abs(v) for v in a.per_seed("loss_diff").values()]).text("{:.2g}"),
            Estimate.of(list(a.exponent.values())).text("{:.2f}"),
            Estimate.of(list(a.rate.values())).text("{:.2f}"),
            a.mean_over_curve("any_diff").text("{:.3g}"),
            a.mean_over_curve("sign_fraction").text("{:.3f}"),
            Estimate.of(list(a.n_slope.values())).text("{:.2f}"),
        ])  # fmt: skip
    lines += _table(["optimizer", "pairs", "held-out loss at T", "drift at T (geo. mean)",
                     "relative drift at T", "abs held-out loss diff at T", "exponent a (t^a)",
                     "rate r /1000 steps", "coords differing in sign/branch per step",
                     "sign-branch fraction", "slope in log N"], rows) + [""]  # fmt: skip
    lines += ["## Findings", "", FINDINGS_BEGIN, *findings(an), FINDINGS_END, ""]
    if plots:
        lines += ["## Plots", "",
                  "Drift curves start at the first logged step where every pair's drift is "
                  "positive (before the replaced example first enters a batch the two runs are "
                  "identical). The N plot shows the arms run in the N design.", ""]
        lines += [f"![{name}]({path})" for name, path in plots.items()] + [""]
    if problems:
        lines += ["## Problems", "", *(f"- {p}" for p in problems), ""]
    return lines


# ------------------------------------------------------------------------------ plots


def _band(ax, pts_by_seed: list[list[tuple[int, float]]], label: str, **kw) -> None:  # noqa: ANN001
    """Geometric mean over pairs at each step, with the 95% t band (of log10 drift)."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for pts in pts_by_seed:
        for s, v in pts:
            if v is not None and v > 0 and math.isfinite(v):
                by_step[s].append(math.log10(v))
    steps = [s for s in sorted(by_step) if len(by_step[s]) == len(pts_by_seed)]
    if not steps:
        return
    mean = [10 ** statistics.fmean(by_step[s]) for s in steps]
    (line,) = ax.plot(steps, mean, label=label, **kw)
    if len(pts_by_seed) >= 2:
        lo, hi = zip(*(t_interval(by_step[s], LEVEL) for s in steps), strict=True)  # fmt: skip
        ax.fill_between(steps, [10**v for v in lo], [10**v for v in hi], alpha=0.2,
                        color=line.get_color())  # fmt: skip


def display(label: str) -> str:
    """A plot legend's name for an arm (the tables keep the spec labels)."""
    if label == GLOBAL:
        return "clion global ν=1e-4 (identity branch)"
    if label.startswith("clion:nu="):
        return f"clion global ν={label.split('=')[1]} (control: lion's update)"
    if _nu_of(label) is not None:
        return f"clion element ν={_nu_of(label):g}"
    return label


def _axes(ax, **kw) -> None:  # noqa: ANN001
    """``ax.set(**kw)``, log scales only where something was drawn (an empty log axis
    cannot be laid out), a legend where there are labels."""
    drawn = [np.asarray(ln.get_ydata(), dtype=float) for ln in ax.lines]
    if not any((np.isfinite(y) & (y > 0)).any() for y in drawn):
        kw = {k: v for k, v in kw.items() if k not in ("xscale", "yscale")}
        ax.text(0.5, 0.5, "no data yet", ha="center", transform=ax.transAxes)
    ax.set(**kw)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=LEGEND_SIZE)


def make_plots(an: Analysis, plot_dir: Path, figures: dict | None = None
               ) -> tuple[dict[str, str], list[str]]:  # fmt: skip
    """Draw the study's plots into ``plot_dir``; ``figures`` (tests) keeps them, by name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, str] = {}
    errors: list[str] = []
    m = an.meta
    main = [lb for lb in an.arms if _nu_of(lb) is None]
    nus = [lb for lb in an.arms if _nu_of(lb) is not None]

    cmap = plt.get_cmap("viridis")

    def arm_colour(label: str) -> Any:
        """The reports' colour per optimizer; the ν points on one colour scale; the control
        (Lion's update) in Lion's colour."""
        if label in nus:
            return cmap(nus.index(label) / max(1, len(nus) - 1) * 0.9)
        return colour(LION if label.startswith("clion:nu=") else label)

    def curves(label: str, key: str) -> list[list[tuple[int, float]]]:
        return [[(s, r.get(key)) for s, r in pts] for pts in an.arms[label].curves.values()]

    def save(name: str, fig) -> None:  # noqa: ANN001
        try:
            save_figure(fig, plot_dir / name)
            plots[name.removesuffix(".png")] = f"plots/{name}"
            if figures is not None:
                figures[name.removesuffix(".png")] = fig
        except Exception as err:  # a plot is not worth losing the report for
            errors.append(f"plot {name}: {type(err).__name__}: {err}")
        finally:
            plt.close(fig)

    def plot_t() -> None:
        fig, axes = plt.subplots(2, 2, figsize=(13, 9))
        ax = axes[0][0]
        for lb in main:
            style = {"linestyle": "--"} if lb.startswith("clion:nu=") else {}
            _band(ax, curves(lb, "drift"), display(lb), color=arm_colour(lb), **style)
        _axes(ax, xscale="log", yscale="log", xlabel="step t", ylabel="‖θ_t − θ′_t‖₂",
              title="drift against t (geometric mean over pairs, 95% band)")
        ax = axes[0][1]
        if LION in an.arms:
            _band(ax, curves(LION, "drift"), LION, color=arm_colour(LION))
        for lb in nus:
            _band(ax, curves(lb, "drift"), f"element ν={_nu_of(lb):g}", color=arm_colour(lb))
        _axes(ax, xscale="log", yscale="log", xlabel="step t", ylabel="‖θ_t − θ′_t‖₂",
              title="Lion and CLion element (same lr)")
        ax = axes[1][0]
        for lb in [LION, GLOBAL, *nus]:
            if lb in an.arms and an.arms[lb].curves:
                _band(ax, curves(lb, "tau"), display(lb), color=arm_colour(lb))
        # ν against τ: global signs only if τ_t >= its ν; element compares each abs(c_j)
        for lb in [GLOBAL, *nus]:
            if lb in an.arms and an.arms[lb].curves:
                nu = _nu_of(lb) if lb in nus else OPTION_KEYS["clion"]["nu"][1]
                ax.axhline(nu, color=arm_colour(lb), linestyle=":", linewidth=1,
                           label=f"ν = {nu:g}" + (" (clion global)" if lb == GLOBAL else ""))
        _axes(ax, xscale="log", yscale="log", xlabel="step t",
              ylabel="τ_t = min non-zero abs(c)",
              title="τ_t of the S run (geometric mean over pairs; dotted: ν)")
        ax = axes[1][1]
        # the control is Lion's update (same curve); the ν sweep's middle points: plot 2
        shown = [lb for lb in main if not lb.startswith("clion:nu=")] + nus[:1] + nus[-1:]
        for lb in dict.fromkeys(shown):
            _band(ax, curves(lb, "any_diff"), display(lb), color=arm_colour(lb))
        _axes(ax, xscale="log", yscale="log", xlabel="step t", ylabel="fraction of coordinates",
              title="update differs in sign or branch (mean per step since the last log)")
        reg = regime(m)
        what = "digits softmax" if reg is None else reg[0]
        fig.suptitle(f"Neighbouring-set drift, {what}, N = {m['n_main']}, "
                     f"{m['pairs']} pairs")  # fmt: skip
        fig.tight_layout()
        save("drift-vs-t.png", fig)

    def plot_nu() -> None:
        if an.nu_vs_lion:
            fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
            ax = axes[0]
            xs = [nu for nu, _ in an.nu_vs_lion]
            ests = [Estimate.of(list(an.arms[f"clion:mode=element,nu={nu:g}"]
                                     .per_seed("drift", True).values())) for nu in xs]  # fmt: skip
            ok = [(x, e) for x, e in zip(xs, ests, strict=True)
                  if e.mean is not None and e.lo is not None]  # fmt: skip
            if ok:
                ax.errorbar([x for x, _ in ok], [10 ** e.mean for _, e in ok],
                            yerr=[[10 ** e.mean - 10 ** e.lo for _, e in ok],
                                  [10 ** e.hi - 10 ** e.mean for _, e in ok]],
                            marker="o", capsize=3, label="CLion element",
                            color=colour("clion:mode=element"))  # fmt: skip
            for lb in (LION, SGD, "adamw", GLOBAL):
                color = arm_colour(lb)
                if lb in an.arms and an.arms[lb].end:
                    e = Estimate.of(list(an.arms[lb].per_seed("drift", True).values()))
                    if e.mean is not None:
                        ax.axhline(10 ** e.mean, color=color, linestyle="--",
                                   label=f"{display(lb)} (own lr)" if lb != LION
                                   else "lion (same lr)")  # fmt: skip
            _axes(ax, xscale="log", yscale="log", xlabel="ν",
                  ylabel=f"drift ‖θ_T − θ′_T‖₂ at T = {m['t_max']}",
                  title="drift against ν (geo. mean, unpaired 95% interval)")
            ax = axes[1]

            def means(key: str) -> list[float]:
                es = [an.arms[f"clion:mode=element,nu={nu:g}"].mean_over_curve(key) for nu in xs]
                return [e.mean if e.mean is not None else math.nan for e in es]

            ax.plot(xs, means("sign_fraction"), marker="o", color=colour("clion:mode=element"),
                    label="sign-branch fraction (left axis)")  # fmt: skip
            ax.set(xscale="log", ylim=(0, 1), xlabel="ν",
                   ylabel="sign-branch fraction (mean over logged steps)",
                   title="CLion element: branch and disagreement")  # fmt: skip
            # the disagreement is ~1% of coordinates: its own (log) axis, in grey
            twin = ax.twinx()
            twin.plot(xs, means("any_diff"), marker="s", color="dimgray", linestyle="--",
                      label="coordinates differing in sign/branch (right axis)")  # fmt: skip
            twin.set(yscale="log", ylabel="fraction differing between S and S′ runs")
            handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
            ax.legend(handles=handles, fontsize=LEGEND_SIZE, loc="center left")
            fig.tight_layout()
            save("drift-vs-nu.png", fig)

    def plot_n() -> None:
        fig, ax = plt.subplots(figsize=(7, 5))
        for lb, a in an.arms.items():
            sizes = sorted({n for d in a.n_drift.values() for n in d})
            if len(sizes) < 2:  # arms run in the T design only
                continue
            ys = []
            for n in sizes:
                v = [math.log10(d[n]) for d in a.n_drift.values() if d.get(n, 0) and d[n] > 0]
                ys.append(10 ** statistics.fmean(v) if v else math.nan)
            ax.plot(sizes, ys, marker="o", label=display(lb), color=arm_colour(lb))
            if lb == LION:  # a slope -1 guide through Lion's first point (the bounds' 1/N)
                ax.plot(sizes, [ys[0] * sizes[0] / n for n in sizes], color="gray",
                        linestyle=":", label="slope −1 (guide)")  # fmt: skip
        _axes(ax, xscale="log", yscale="log", xlabel="N",
              ylabel=f"drift ‖θ_T − θ′_T‖₂ at T = {m['t_fixed']}",
              title="drift against N (geometric mean over pairs)")
        save("drift-vs-n.png", fig)

    for name, fn in (("drift-vs-t", plot_t), ("drift-vs-nu", plot_nu),
                     ("drift-vs-n", plot_n)):
        try:
            fn()
        except Exception as err:  # a plot is not worth losing the report for
            plt.close("all")
            errors.append(f"plot {name}: {type(err).__name__}: {err}")
    return plots, errors


# ------------------------------------------------------------------------------ writing


def load_stability_results(out_dir: Path) -> tuple[list[dict], list[str]]:
    results, problems = [], []
    for path in sorted((out_dir / "results").glob("*.json")):
        problem = stability_result_problem(read_json(path))
        if problem is not None:  # listed, and redone by the next run of the study
            problems.append(f"`{path.name}`: {problem}")
        else:
            results.append(read_json(path))
    return results, problems


def csv_text_of(results: list[dict]) -> str:
    rows = [r for res in sorted(results, key=lambda x: (x["stage"], x["optimizer"], x["n"],
                                                          x["steps"], x["seed"], x["lr"]))
            for r in result_rows(res)]  # fmt: skip
    return rows_csv(rows, CSV_COLUMNS)


def findings_from_csv(csv_text: str, meta: dict) -> list[str]:
    """The Findings lines recomputed from ``results.csv`` and ``bench.json`` alone."""
    return findings(analyze(_parse(csv_text), meta))


def _parse(csv_text: str) -> list[dict]:
    """The rows :func:`rows_csv` wrote, numbers parsed back (repr round-trips floats)."""
    rows = []
    for raw in csv.DictReader(io.StringIO(csv_text)):
        row: dict[str, Any] = {}
        for k in CSV_COLUMNS:
            v = raw.get(k, "")
            row[k] = v if k in _TEXT else (None if v == "" else float(v))
        for k in ("n", "steps", "step", "seed"):
            if row[k] is not None:
                row[k] = int(row[k])
        rows.append(row)
    return rows


def findings_block(report_text: str) -> list[str]:
    begin = report_text.index(FINDINGS_BEGIN) + len(FINDINGS_BEGIN)
    return report_text[begin:report_text.index(FINDINGS_END)].strip("\n").splitlines()


# the bench.json fields the report reads, and their types (a hand-edited one gets one line)
META_FIELDS: dict[str, tuple[type, ...]] = {
    **{k: (int,) for k in ("t_max", "t_fixed", "n_main", "pairs", "batch", "test_size",
                           "val_size", "tune_seed")},
    "sizes": (list,), "arms": (list,), "preset": (str,), "description": (str,),
}  # fmt: skip


def write_stability_report(out_dir: Path, plots: bool = True) -> dict[str, Path]:
    """Write ``report.md``, ``results.csv`` and ``plots/*.png`` of a stability directory."""
    meta = read_json(out_dir / "bench.json")
    if not isinstance(meta, dict) or meta.get("study") != "stability":
        raise ReportError(f"{out_dir}/bench.json is not a stability study's")
    for key, kind in META_FIELDS.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise ReportError(f"{out_dir}/bench.json: field {key!r} must be "
                              f"{' or '.join(k.__name__ for k in kind)}, not {meta.get(key)!r}")
    results, problems = load_stability_results(out_dir)
    csv_text = csv_text_of(results)
    an = analyze(_parse(csv_text), meta)
    made, errors = make_plots(an, out_dir / "plots") if plots else ({}, [])
    atomic_write_text(out_dir / "results.csv", csv_text)
    atomic_write_text(out_dir / "report.md",
                      "\n".join(report_markdown(an, made, problems + errors)))
    return {"report": out_dir / "report.md", "csv": out_dir / "results.csv",
            **{k: out_dir / v for k, v in made.items()}}
