"""Turn a results directory into ``report.md``, ``results.csv`` and PNG plots.

The report is a function of the results: every number and every sentence of its
"Verdict" section is computed here (nothing is typed in by hand), and the verdicts can be
recomputed from ``results.csv`` and ``bench.json`` alone (:func:`findings_from_csv`), which
is how the committed reports are checked. The verdicts test only the comparisons the preset
declares (paired t-test, TOST for "the same", Holm over the whole report; see
:mod:`clion_hf.bench.stats`); a directory holding ``results.csv`` but no per-run files (a
committed report) is regenerated from the CSV, without the curves over steps. Definitions
are written into the report itself (:data:`PROTOCOL_TEXT`). The report never refuses to be
written: whatever is missing (unreadable result files, runs still to do, rows without a
choice, a plot that cannot be drawn) is listed in it with the reason.

Hand-written: no report library knows this protocol's searches, declared comparisons and
verdict wording; the numbers come from pandas (reading ``results.csv``), scipy
(:mod:`.stats`) and matplotlib, and the tables from :mod:`.render`.
"""

from __future__ import annotations

import io
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clion_hf._files import atomic_write_text, probe_writable, read_json
from clion_hf.integrations._names import MIN_ABS_C_KEY, SIGN_FRACTION_KEY

from . import render
from .protocol import (
    Matrix,
    RowPlan,
    final_metric,
    load_results,
    matrix_from,
    number,
    test_metric,
)
from .render import Figures, csv_text, label_axes, run_environment_line, table
from .specs import (
    MARGINS,
    MODES,
    PRIMARY,
    WORKLOADS,
    SpecError,
    fmt_float,
    get_preset,
    parse_optimizer,
    removal_fraction,
    spec_from_recipe_args,
)
from .stats import (
    MIN_PAIRS,
    PairedTest,
    WidthTrend,
    holm_tests,
    performance_profile,
    t_interval,
)

ALPHA = 0.05
REFERENCES = ("adamw", "lion")  # untested estimates: every other row against these
PROFILE_TAUS = (1.0, 1.25, 1.5, 2.0, 3.0, 4.0)
FINDINGS_BEGIN = "<!-- findings:begin -->"
FINDINGS_END = "<!-- findings:end -->"


class ReportError(Exception):
    """The report cannot be written (e.g. a read-only directory); one-line message."""


# ------------------------------------------------------------------------------ per run


def curve(result: dict, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every log entry that has ``key``, last one per step."""
    points: dict[int, float] = {}
    for entry in result.get("log_history") or []:
        value = number(entry.get(key))
        if value is not None and "step" in entry:
            points[int(entry["step"])] = value
    return sorted(points.items())


def better(a: float, b: float, greater_is_better: bool) -> bool:
    return a > b if greater_is_better else a < b


def reaches(value: float, target: float, greater_is_better: bool) -> bool:
    return value == target or better(value, target, greater_is_better)


def summarize(result: dict, target: float | None = None) -> dict[str, Any]:
    """The numbers of one run that go into the tables and ``results.csv``."""
    w = WORKLOADS[result["workload"]]
    res = result.get("all_results") or {}
    history = result.get("log_history") or []
    final = final_metric(result)
    evals = [(s, w.curve_to_metric(v)) for s, v in curve(result, w.curve_key)]
    evals = [(s, v) for s, v in evals if math.isfinite(v)]
    candidates = [v for _, v in evals] + ([final] if final is not None else [])
    best = (max if w.greater_is_better else min)(candidates) if candidates else None
    train_losses = curve(result, "loss")
    train_end = train_losses[-1][1] if train_losses else None
    eval_loss = number(res.get("eval_loss"))
    gap = eval_loss - train_end if eval_loss is not None and train_end is not None else None
    train_s = dict(curve(result, "train_s"))
    opt_s = curve(result, "optimizer_s")

    def column_max(key: str) -> float | None:
        values = [v for e in history if (v := number(e.get(key))) is not None]
        return max(values) if values else None

    signs = [v for _, v in curve(result, SIGN_FRACTION_KEY)]
    mins = [v for _, v in curve(result, MIN_ABS_C_KEY)]
    steps_to = seconds_to = None
    if target is not None and result.get("status") == "ok":
        points = evals + ([(int(result["max_steps"]), final)] if final is not None else [])
        for step, value in sorted(points):
            if reaches(value, target, w.greater_is_better):
                steps_to, seconds_to = step, train_s.get(step)
                break
    second = result.get("second") or [None, None]
    spec = spec_from_recipe_args(result.get("recipe_args") or ())
    steps_done = opt_s[-1][0] if opt_s else None
    return {
        "run_id": result["run_id"],
        "workload": result["workload"],
        "optimizer": result["optimizer"],
        "phase": result.get("phase", ""),
        "stage": result.get("stage", ""),
        "second": second[0] or "",
        "second_value": second[1],
        "lr": result["lr"],
        "weight_decay": result.get("weight_decay"),
        # what the optimizer ran with: the spec's, a tuned ν's or a local search's value
        "beta2": spec.get("beta2") if spec else None,
        "nu": spec.get("nu") if spec and spec.name == "clion" else None,
        "seed": result["seed"],
        "max_steps": result.get("max_steps"),
        "status": result["status"],
        "reason": result.get("reason", ""),
        "metric": w.metric,
        "final_metric": final,
        "best_metric": best,
        "test_metric": test_metric(result),
        "eval_loss": eval_loss,
        "test_loss": number(res.get("test_loss")),
        "train_loss_end": train_end,
        "gen_gap": gap,
        "train_samples": number(res.get("train_samples")),
        "eval_samples": number(res.get("eval_samples")),
        "test_samples": number(res.get("test_samples")),
        "wall_s": result.get("wall_s"),
        "cpu_s": result.get("cpu_s"),
        "train_s": max(train_s.values()) if train_s else None,
        "optimizer_ms_per_step": (1000 * opt_s[-1][1] / steps_done
                                  if opt_s and steps_done else None),  # fmt: skip
        "steps_to_target": steps_to,
        "train_s_to_target": seconds_to,
        "optimizer_state_mb": column_max("optimizer_state_mb"),
        "peak_mem_mb": column_max("peak_mem_mb"),
        "sign_fraction_mean": statistics.fmean(signs) if signs else None,
        "sign_fraction_max": max(signs) if signs else None,
        "min_abs_c_min": min(mins) if mins else None,
        "min_abs_c_median": statistics.median(mins) if mins else None,
        "returncode": result.get("returncode"),
    }


CSV_COLUMNS = [
    "run_id", "workload", "optimizer", "phase", "stage", "second", "second_value", "lr",
    "weight_decay", "beta2", "nu", "seed", "max_steps", "status", "reason", "metric",
    "final_metric", "best_metric", "test_metric", "eval_loss", "test_loss", "train_loss_end",
    "gen_gap", "train_samples", "eval_samples", "test_samples", "wall_s", "cpu_s", "train_s",
    "optimizer_ms_per_step", "steps_to_target", "train_s_to_target", "optimizer_state_mb",
    "peak_mem_mb", "sign_fraction_mean", "sign_fraction_max", "min_abs_c_min",
    "min_abs_c_median", "returncode",
]  # fmt: skip
_TEXT_COLUMNS = {"run_id", "workload", "optimizer", "phase", "stage", "second", "status",
                 "reason", "metric"}  # fmt: skip
_INT_COLUMNS = {"seed", "max_steps", "steps_to_target", "returncode"}


def rows_csv(rows: list[dict], columns: list[str] = CSV_COLUMNS) -> str:
    return csv_text(rows, columns)


def rows_from_csv(text: str, columns: list[str] = CSV_COLUMNS,
                  text_columns: set[str] = _TEXT_COLUMNS,
                  int_columns: set[str] = _INT_COLUMNS) -> list[dict]:  # fmt: skip
    """The rows :func:`rows_csv` wrote, read back by pandas with the table's column types
    (text, integers, the rest floats, parsed exactly); a blank number is None."""
    import pandas as pd

    types = {k: str if k in text_columns else "Int64" if k in int_columns else "float64"
             for k in columns}  # fmt: skip
    frame = pd.read_csv(io.StringIO(text), dtype=types, keep_default_na=False, engine="python",
                        na_values={k: [""] for k in columns if k not in text_columns}
                        ).reindex(columns=columns)  # fmt: skip
    texts = [k for k in columns if k in text_columns]
    frame[texts] = frame[texts].fillna("")
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def as_result(row: dict) -> dict:
    """The part of a result :meth:`Matrix.plan` (and a study's ``--tuned`` check) reads,
    rebuilt from a summary row."""
    w = WORKLOADS[row["workload"]]
    res: dict[str, Any] = {}
    if row.get("eval_loss") is not None:
        res["eval_loss"] = row["eval_loss"]
    if row.get("final_metric") is not None:
        res[w.metric] = row["final_metric"]
    return {"run_id": row["run_id"], "workload": row["workload"], "status": row["status"],
            "optimizer": row["optimizer"], "phase": row["phase"], "all_results": res}  # fmt: skip


# ------------------------------------------------------------------------------ analysis


def describe_optimizer(label: str) -> str:
    """``clion:mode=element`` -> ``clion element``; unparsable labels as they are."""
    try:
        spec = parse_optimizer(label)
    except SpecError:
        return label
    if spec.name != "clion":
        return label
    extra = [f"{k}={fmt_float(v) if isinstance(v, float) else v}" for k, v in spec.options
             if k != "mode"]  # fmt: skip
    return " ".join([f"clion {spec.get('mode')}", *extra])


def optimizer_order(label: str) -> tuple:
    """Tables list AdamW, then Lion, then CLion by mode (global … soft)."""
    try:
        spec = parse_optimizer(label)
    except SpecError:
        return (9, 0, label)
    rank = ("adamw", "lion", "clion").index(spec.name)
    mode = MODES.index(spec.get("mode")) if spec.name == "clion" else 0
    return (rank, mode, label)


@dataclass
class Row:
    """One (workload, optimizer) row: its search and its final runs."""

    optimizer: str
    plan: RowPlan | None
    tune: list[dict]  # summary rows of its tuning runs
    finals: list[dict]  # summary rows of its final runs (at the chosen configuration)

    @property
    def chosen(self) -> dict | None:
        """lr, weight decay and second hyper-parameter of the final runs."""
        if self.finals:
            f = self.finals[0]
            return {"lr": f["lr"], "weight_decay": f["weight_decay"], "second": f["second"],
                    "second_value": f["second_value"]}  # fmt: skip
        if self.plan is not None and self.plan.chosen is not None:
            run = self.plan.chosen.runs[0]
            second = run.second or ("", None)
            return {"lr": run.lr, "weight_decay": run.weight_decay, "second": second[0],
                    "second_value": second[1]}  # fmt: skip
        return None

    def ok_finals(self) -> list[dict]:
        return [r for r in self.finals if r["status"] == "ok" and r["test_metric"] is not None]


@dataclass
class WorkloadAnalysis:
    name: str
    max_steps: int
    rows: dict[str, Row]
    target: float | None = None
    target_rule: str = ""
    tests: list[PairedTest] = field(default_factory=list)  # declared, Holm over the report
    estimates: list[PairedTest] = field(default_factory=list)  # the other pairs, untested
    uses_test: bool = True  # False: no run had a test metric, validation is compared

    @property
    def workload(self):
        return WORKLOADS[self.name]


def comparison_value(row: dict) -> float | None:
    """The per-run number the paired comparison uses: test loss (nats) for language models
    (differences are log perplexity ratios), test accuracy for classifiers."""
    if WORKLOADS[row["workload"]].metric == "perplexity":
        if row.get("test_loss") is not None:
            return row["test_loss"]
        return math.log(row["test_metric"]) if row.get("test_metric") else None
    return row.get("test_metric")


@dataclass
class Analysis:
    """Everything the report says, computed from summary rows (and the matrix, if known)."""

    rows: list[dict]
    matrix: Matrix | None
    meta: dict | None
    workloads: list[WorkloadAnalysis] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    primary: tuple[tuple[str, str], ...] = ()  # the declared comparisons found in the runs
    margins: dict[str, float] = field(default_factory=dict)
    fallback: bool = False  # no declared comparison present: every row vs AdamW is tested
    trends: list[WidthTrend] = field(default_factory=list)  # ladders: smallest vs largest width

    def __post_init__(self) -> None:
        by_w: dict[tuple[str, int], list[dict]] = defaultdict(list)
        for r in self.rows:
            by_w[(r["workload"], int(r["max_steps"] or 0))].append(r)
        plans: dict[tuple[str, str], RowPlan] = {}
        if self.matrix is not None:
            results = {r["run_id"]: as_result(r) for r in self.rows}
            for p in self.matrix.plan(results):
                plans[(p.workload, p.optimizer)] = p
        order = list(WORKLOADS)
        for w, steps in sorted(by_w, key=lambda k: (order.index(k[0]), k[1])):
            runs = by_w[(w, steps)]
            labels = {r["optimizer"] for r in runs} | {o for (pw, o) in plans if pw == w}
            rows = {}
            for opt in sorted(labels, key=optimizer_order):
                mine = [r for r in runs if r["optimizer"] == opt]
                rows[opt] = Row(opt, plans.get((w, opt)),
                                [r for r in mine if r["phase"] != "final"],
                                sorted((r for r in mine if r["phase"] == "final"),
                                       key=lambda r: r["seed"]))  # fmt: skip
            wa = WorkloadAnalysis(w, steps, rows)
            self._target(wa)
            self.workloads.append(wa)
        self._compare()
        for (w, opt), p in plans.items():
            if p.needed:
                kind = "tuning" if p.needed[0].phase == "tune" else "final"
                self.missing.append(f"{w} {describe_optimizer(opt)}: {len(p.needed)} {kind} "
                                    "run(s) not done yet (rerun `clion-bench run` to finish)")
            elif p.chosen is None:
                self.missing.append(f"{w} {describe_optimizer(opt)}: no configuration "
                                    "finished ok on every tuning seed, so nothing was chosen")

    @staticmethod
    def _target(wa: WorkloadAnalysis) -> None:
        ref = wa.rows.get("adamw")
        values = [r["final_metric"] for r in (ref.finals if ref else [])
                  if r["status"] == "ok" and r["final_metric"] is not None]  # fmt: skip
        if values:
            wa.target = statistics.median(values)
            wa.target_rule = "median final validation metric of tuned AdamW's final seeds"
        else:
            wa.target_rule = "none: no final AdamW run finished ok"

    def _declared(self) -> tuple[tuple[tuple[str, str], ...], dict[str, float]]:
        """The primary comparisons and margins: bench.json's, else its preset's, else ours."""
        meta = self.meta or {}
        preset = self.matrix.preset if self.matrix is not None else None
        primary = meta.get("primary") or (preset.primary if preset else PRIMARY)
        margins = meta.get("equivalence_margin") or (preset.equivalence_margin if preset
                                                     else MARGINS)  # fmt: skip
        try:
            pairs = tuple((parse_optimizer(a).label, parse_optimizer(b).label) for a, b in primary)
        except (SpecError, TypeError, ValueError):
            pairs = PRIMARY
        return pairs, {**MARGINS, **dict(margins)}

    def _compare(self) -> None:
        """Every declared comparison of every workload is one test; Holm runs over all of
        them (the whole report); the other pairs against AdamW and Lion are estimates."""
        pairs, self.margins = self._declared()
        present = [p for p in pairs if any(p[0] in wa.rows and p[1] in wa.rows
                                           for wa in self.workloads)]  # fmt: skip
        if not present and self.workloads:
            self.fallback = True
            present = sorted({(o, "adamw") for wa in self.workloads if "adamw" in wa.rows
                              for o in wa.rows if o != "adamw"},
                             key=lambda p: optimizer_order(p[0]))  # fmt: skip
        self.primary = tuple(present)
        tests = []
        for wa in self.workloads:
            runs = [r for row in wa.rows.values() for r in row.tune + row.finals
                    if r["status"] == "ok"]  # fmt: skip
            wa.uses_test = not runs or any(r["test_metric"] is not None for r in runs)
            margin = self.margins.get(wa.workload.metric, math.nan)
            values = {opt: {r["seed"]: v for r in row.ok_finals()
                            if (v := comparison_value(r)) is not None}
                      for opt, row in wa.rows.items()}  # fmt: skip

            def pair(a: str, b: str, wa=wa, margin=margin, values=values) -> PairedTest:
                seeds = sorted(set(values[a]) & set(values[b]))
                return PairedTest(a, b, [values[a][s] - values[b][s] for s in seeds], margin,
                                  wa.name)  # fmt: skip

            wa.tests = [pair(a, b) for a, b in self.primary if a in wa.rows and b in wa.rows]
            tests += wa.tests
            seen = set(self.primary)
            for ref in REFERENCES:
                for opt in wa.rows:
                    if ref in wa.rows and opt != ref and (opt, ref) not in seen \
                            and (ref, opt) not in seen:
                        seen.add((opt, ref))
                        est = pair(opt, ref)
                        if est.n >= 2:
                            est.mean = statistics.fmean(est.diffs)
                            est.lo, est.hi = t_interval(est.diffs, 1 - ALPHA)
                            est.level = 1 - ALPHA
                        wa.estimates.append(est)
        self.trends = self._width_trends()
        holm_tests(tests, ALPHA, self.trends)

    def _width_trends(self) -> list[WidthTrend]:
        """On a ladder (rungs ``NAME@WIDTH``), each declared comparison at the smallest and
        the largest width where it has paired seeds: does it change with width?"""
        out = []
        bases = sorted({wa.workload.base for wa in self.workloads if wa.workload.width})
        for base in bases:
            for a, b in self.primary:
                found = sorted(((wa.workload.width, t) for wa in self.workloads
                                if wa.workload.base == base and wa.workload.width
                                for t in wa.tests if (t.a, t.b) == (a, b) and t.n >= MIN_PAIRS),
                               key=lambda x: x[0])  # fmt: skip
                if len(found) >= 2:
                    (w0, t0), (w1, t1) = found[0], found[-1]
                    out.append(WidthTrend(base, a, b, w0, w1, list(t0.diffs), list(t1.diffs)))
        return out

    def rung(self, base: str, width: int) -> WorkloadAnalysis:
        return next(wa for wa in self.workloads
                    if wa.workload.base == base and wa.workload.width == width)  # fmt: skip


def analyze(rows: list[dict], meta: dict | None) -> Analysis:
    return Analysis(rows, matrix_from(meta) if isinstance(meta, dict) else None, meta)


# ------------------------------------------------------------------------------ wording


def _f(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def effect_text(wa: WorkloadAnalysis, t: PairedTest, unit: bool = True) -> str:
    """``test perplexity ×1.05 [1.02, 1.08]`` / ``test accuracy −2.1 pp [−3.0, −1.2]``."""
    if wa.workload.metric == "perplexity":
        text = f"×{math.exp(t.mean):.3f} [{math.exp(t.lo):.3f}, {math.exp(t.hi):.3f}]"
        return f"test perplexity {text}" if unit else text
    text = f"{100 * t.mean:+.1f} pp [{100 * t.lo:+.1f}, {100 * t.hi:+.1f}]"
    return f"test accuracy {text}" if unit else text


def margin_text(wa: WorkloadAnalysis, margin: float) -> str:
    if wa.workload.metric == "perplexity":
        return f"×{math.exp(-margin):.3f} to ×{math.exp(margin):.3f} in test perplexity"
    return f"±{100 * margin:g} pp of test accuracy"


_SECOND_WORDS = {"wd_scale": "weight-decay scale", "nu": "ν", "beta2": "β2",
                 "lr": "learning rate"}  # fmt: skip


def _params_text(params: Iterable[tuple[str, float]]) -> str:
    """The local search's tuned values other than lr: ``, β2 0.95, wd scale 0.25, ν 1e-5``."""
    names = {"wd_scale": "wd scale", "nu": "ν", "beta2": "β2"}
    return "".join(f", {names.get(k, k)} {fmt_float(v)}" for k, v in params)


def edge_text(row: Row) -> str:
    """``lion's tuned weight-decay scale``: which of a row's tuned values sits on an edge."""
    plan = row.plan
    what = []
    if plan is not None and plan.edges:  # the local search names its dimensions
        what = [_SECOND_WORDS.get(e, e) for e in plan.edges]
    elif plan is not None and plan.lr_on_edge:
        what.append("learning rate")
    if plan is not None and plan.second_on_edge and not plan.edges:
        what.append(_SECOND_WORDS.get(plan.search.second or "", str(plan.search.second)))
    return f"{describe_optimizer(row.optimizer)}'s tuned {' and '.join(what)}"


def _edge_names(wa: WorkloadAnalysis, t: PairedTest) -> list[str]:
    return [edge_text(wa.rows[o]) for o in (t.a, t.b) if _inconclusive(wa.rows.get(o))]


def verdict(wa: WorkloadAnalysis, t: PairedTest) -> str:
    """One word for a tested comparison: not compared, inconclusive, better, worse, the same,
    or no difference detected (an interval too wide to call them the same)."""
    if t.n < 2:
        return "not compared"
    if _edge_names(wa, t):
        return "inconclusive"
    if t.different:
        good = (t.mean > 0) if wa.workload.greater_is_better else (t.mean < 0)
        return "better" if good else "worse"
    if t.equivalent:
        return "the same"
    return "no difference detected"


def verdict_sentence(wa: WorkloadAnalysis, t: PairedTest) -> str:
    """A tested comparison in words a user can act on, with its estimate and interval."""
    a, b = describe_optimizer(t.a), describe_optimizer(t.b)
    v = verdict(wa, t)
    if v == "not compared":
        return (f"{a} vs {b}: not compared ({t.n} paired seed{'s' if t.n != 1 else ''}; "
                "a comparison needs at least 2).")  # fmt: skip
    effect = f"{effect_text(wa, t)}, {100 * t.level:.2f}% CI"
    if v == "inconclusive":
        edge = " and ".join(_edge_names(wa, t))
        return (f"{a} vs {b}: **inconclusive**: {edge} sat on the edge of the searched "
                f"grid, so the row may be under-tuned (measured {effect}; no verdict).")
    if v in ("better", "worse"):
        winner = a if v == "better" else b
        return f"{a} vs {b}: **{a} is {v}** ({effect}): prefer {winner} here."
    if v == "the same":
        return (f"{a} vs {b}: **the same** within the declared margin "
                f"({margin_text(wa, t.margin)}; {effect}): either will do.")
    return (f"{a} vs {b}: **no difference detected**, but the interval is too wide to call "
            f"them the same ({effect}; margin {margin_text(wa, t.margin)}): more seeds needed.")


def estimate_sentence(wa: WorkloadAnalysis, t: PairedTest) -> str:
    """An untested pair: the estimate and its unadjusted 95% t interval, no verdict."""
    a, b = describe_optimizer(t.a), describe_optimizer(t.b)
    if t.n < 2:
        return f"{a} vs {b}: {t.n} paired seed{'s' if t.n != 1 else ''}, no interval."
    return f"{a} vs {b}: {effect_text(wa, t)} (95% CI, not tested)."


def trend_verdict(an: Analysis, tr: WidthTrend) -> str:
    """inconclusive (a row on a grid edge at either width), not compared (too few seeds),
    toward parity, away from parity, or no change detected."""
    if not tr.usable or math.isnan(tr.level):
        return "not compared"
    if trend_edges(an, tr):
        return "inconclusive"
    if tr.different:
        return "toward parity" if tr.toward_zero else "away from parity"
    return "no change detected"


def trend_edges(an: Analysis, tr: WidthTrend) -> list[str]:
    out = []
    for width in (tr.small_width, tr.large_width):
        wa = an.rung(tr.base, width)
        out += [f"{edge_text(wa.rows[o])} at width {width}" for o in (tr.a, tr.b)
                if _inconclusive(wa.rows.get(o))]  # fmt: skip
    return out


def trend_sentence(an: Analysis, tr: WidthTrend) -> str:
    """A declared comparison across the widths of a ladder, and whether it moves toward
    parity (ratio 1, 0 pp) between the smallest and the largest width."""
    a, b = describe_optimizer(tr.a), describe_optimizer(tr.b)
    rungs = sorted((wa for wa in an.workloads if wa.workload.base == tr.base
                    and wa.workload.width), key=lambda wa: wa.workload.width)  # fmt: skip
    lm = rungs[0].workload.metric == "perplexity"
    show = (lambda v: f"×{math.exp(v):.3f}") if lm else (lambda v: f"{100 * v:+.1f} pp")
    per = []
    for wa in rungs:
        t = next((t for t in wa.tests if (t.a, t.b) == (tr.a, tr.b)), None)
        if t is not None and t.n >= MIN_PAIRS:
            lo, hi = t_interval(t.diffs, 1 - ALPHA)
            per.append(f"{show(statistics.fmean(t.diffs))} [{show(lo)}, {show(hi)}] at width "
                       f"{wa.workload.width}")  # fmt: skip
    measure = "test perplexity ratio" if lm else "test accuracy difference"
    head = (f"**{tr.base}**, {a} vs {b} against width: {measure} " + ", ".join(per)
            + " (95% CIs)")  # fmt: skip
    v = trend_verdict(an, tr)
    if v == "not compared":
        return f"{head}; too few seeds to test the change."
    if lm:
        change = (f"×{math.exp(tr.delta):.3f} [{math.exp(tr.lo):.3f}, {math.exp(tr.hi):.3f}]")
    else:
        change = f"{100 * tr.delta:+.1f} pp [{100 * tr.lo:+.1f}, {100 * tr.hi:+.1f}]"
    change = (f"from width {tr.small_width} to {tr.large_width} the "
              f"{'ratio' if lm else 'difference'} changes by {change} (Welch t, "
              f"{100 * tr.level:.2f}% CI)")  # fmt: skip
    parity = "×1" if lm else "0 pp"
    if v == "inconclusive":
        edges = " and ".join(trend_edges(an, tr))
        return (f"{head}; {change}: **inconclusive**: {edges} sat on the edge of the "
                "searched grid (no verdict).")
    words = {"toward parity": f"**moves toward parity** ({parity})",
             "away from parity": f"**moves away from parity** ({parity})",
             "no change detected": "**no change with width detected**"}  # fmt: skip
    return f"{head}; {change}: {words[v]}."


def _inconclusive(row: Row | None) -> bool:
    return bool(row and row.plan and row.plan.inconclusive)


def against_margin(wa: WorkloadAnalysis, t: PairedTest) -> str:
    """Where a tested comparison sits against its declared margin: ``beyond the margin``
    (different, and the Holm-level interval lies wholly outside ±margin), ``detected, not
    shown beyond the margin``, or its verdict otherwise."""
    v = verdict(wa, t)
    if v in ("better", "worse"):
        outside = t.lo >= t.margin or t.hi <= -t.margin
        return "beyond the margin" if outside else "detected, not shown beyond the margin"
    return v


MARGIN_WORDS = {"beyond the margin": "beyond the margin",
                "detected, not shown beyond the margin":
                    "a difference detected but not shown beyond the margin",
                "the same": "the same", "no difference detected": "no difference detected",
                "inconclusive": "inconclusive (a row on a grid edge)"}  # fmt: skip


def margin_sentences(an: Analysis) -> list[str]:
    """Per declared pair, the rungs (workloads) on which it differs beyond the declared
    margin, differs less surely, is the same, or is undecided: the question "where does A
    differ from B by more than the margin" answered from the tests above."""
    by_pair: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    margins: dict[tuple[str, str], set[str]] = defaultdict(set)
    for wa in an.workloads:
        for t in wa.tests:
            if t.n >= 2:
                cls = against_margin(wa, t)
                where = wa.name
                if cls in ("beyond the margin", "detected, not shown beyond the margin"):
                    where += f" ({verdict(wa, t)}, {effect_text(wa, t, unit=False)})"
                by_pair[(t.a, t.b)][cls].append(where)
                margins[(t.a, t.b)].add(margin_text(wa, t.margin))
    out = []
    for (a, b), classes in by_pair.items():
        parts = [f"{words} on {', '.join(classes[cls])}" for cls, words in MARGIN_WORDS.items()
                 if classes.get(cls)]  # fmt: skip
        out.append(f"{describe_optimizer(a)} vs {describe_optimizer(b)} against the declared "
                   f"margin ({'; '.join(sorted(margins[(a, b)]))}; beyond it: the whole "
                   "Holm-level interval outside it): " + "; ".join(parts) + ".")
    return out


def _global_findings(an: Analysis) -> list[str]:
    """Sentences about the sign branch of every CLion mode, from the runs' diagnostics, and
    what the paper's ``global`` rule amounts to against the references."""
    out = []
    for mode in MODES:
        label = "clion" if mode == "global" else f"clion:mode={mode}"
        runs = [r for wa in an.workloads for r in (wa.rows[label].tune + wa.rows[label].finals
                if label in wa.rows else []) if r["status"] == "ok"]  # fmt: skip
        logged = [r for r in runs if r["sign_fraction_mean"] is not None]
        if not logged:
            continue
        means = [r["sign_fraction_mean"] for r in logged]
        top = max(r["sign_fraction_max"] for r in logged)
        took = sum(r["sign_fraction_max"] > 0 for r in logged)
        name = "`global` (the paper's rule)" if mode == "global" else f"`{mode}`"
        span = (f"{_f(min(means), 2)} in every run" if min(means) == max(means) else
                f"{_f(min(means), 2)} to {_f(max(means), 2)} (mean per run; largest logged "
                f"{_f(top, 2)}; above 0 in {took} runs)")  # fmt: skip
        text = (f"CLion {name}: over {len(logged)} runs that finished ok, the fraction of "
                f"coordinates that took the sign branch was {span}")
        mins = [r["min_abs_c_min"] for r in logged if r["min_abs_c_min"] is not None]
        meds = [r["min_abs_c_median"] for r in logged if r["min_abs_c_median"] is not None]
        if mins and mode in ("global", "tensor"):
            nu = parse_optimizer(label).get("nu")
            text += (f"; the smallest non-zero abs(c) per run was {_f(min(mins), 2)} to "
                     f"{_f(max(mins), 2)} (median over logged steps {_f(min(meds), 2)} to "
                     f"{_f(max(meds), 2)}), against ν = {fmt_float(nu)}")
        text += "."
        if mode == "global":
            lrs = sorted({wa.rows[label].chosen["lr"] for wa in an.workloads
                          if label in wa.rows and wa.rows[label].chosen})  # fmt: skip
            if lrs and top == 0:
                text += (" Without the sign branch its update is the momentum c itself, i.e. "
                         "momentum SGD; its tuned lr: "
                         f"{', '.join(fmt_float(x) for x in lrs)}.")
            tally = defaultdict(list)
            for wa in an.workloads:
                for t in wa.tests:
                    if t.a == label and t.n >= 2:
                        tally[(t.b, verdict(wa, t))].append(wa.name)
            for ref in REFERENCES:
                parts = [f"{v} on {len(ws)} ({', '.join(ws)})" for (b, v), ws in
                         sorted(tally.items()) if b == ref]  # fmt: skip
                if parts:
                    text += f" Tested against tuned {ref}: {'; '.join(parts)}."
        out.append(text)
    return out


def best_row(wa: WorkloadAnalysis) -> tuple[str, float] | None:
    """The optimizer with the best mean held-out metric over its final seeds, and that mean."""
    means = {}
    for opt, row in wa.rows.items():
        values = [r["test_metric"] for r in row.ok_finals()]
        if values:
            means[opt] = statistics.fmean(values)
    if not means:
        return None
    pick = (max if wa.workload.greater_is_better else min)(means, key=means.__getitem__)
    return pick, means[pick]


def metric_name(wa: WorkloadAnalysis, held_out: bool = True) -> str:
    """``test perplexity`` / ``validation accuracy``: plain words for a column or a label."""
    split = ("test" if wa.uses_test else "validation") if held_out else "validation"
    return f"{split} {wa.workload.metric.removeprefix('eval_')}"


def findings(an: Analysis) -> list[str]:
    """The verdict section: per workload the best optimizer and every tested comparison in
    words, then the sign branch of each CLion mode and the performance profile."""
    lines = []
    for wa in an.workloads:
        n = max((t.n for t in wa.tests + wa.estimates), default=0)
        direction = "higher" if wa.workload.greater_is_better else "lower"
        head = (f"**{wa.name}** ({wa.max_steps} steps, {n} paired final seed"
                f"{'s' if n != 1 else ''}; {metric_name(wa)}, {direction} is better")
        head += ")" if wa.uses_test else "; no test split: validation, which also chose)"
        best = best_row(wa)
        if best is None:
            lines.append(f"- {head}: no final run finished ok, nothing to compare yet.")
            continue
        opt, mean = best
        edge = (f" ({edge_text(wa.rows[opt])} is on the edge of its grid)"
                if _inconclusive(wa.rows[opt]) else "")  # fmt: skip
        tail = ("" if n >= 2 else "; one seed: a check, not a comparison")
        lines.append(f"- {head}. Best mean: **{describe_optimizer(opt)}** "
                     f"({metric_name(wa)} {mean:.4g}){edge}{tail}.")
        lines += [f"  - {verdict_sentence(wa, t)}" for t in wa.tests]
        broken = []
        for o, row in wa.rows.items():
            bad = [r for r in row.finals if r["status"] != "ok"]
            if bad:
                kinds = ", ".join(sorted({r["status"] for r in bad}))
                broken.append(f"{describe_optimizer(o)} {len(bad)} of {len(row.finals)} "
                              f"({kinds})")
        if broken:
            lines.append("  - Final seeds not ok: " + "; ".join(broken) + ".")
        unchosen = [describe_optimizer(o) for o, r in wa.rows.items()
                    if r.plan is not None and not r.plan.needed and r.plan.chosen is None]
        if unchosen:
            lines.append("  - Nothing chosen (every trial diverged or failed): "
                         + ", ".join(unchosen) + ".")
    lines += [f"- {trend_sentence(an, tr)}" for tr in an.trends]
    lines += [f"- {t}" for t in margin_sentences(an)]
    lines += [f"- {t}" for t in _global_findings(an)]
    profile = _profile(an)
    if profile:
        measures, rho = profile
        order = sorted(rho, key=optimizer_order)
        k = PROFILE_TAUS.index(2.0)
        lines.append(
            f"- Performance profile over {len(measures)} workload"
            f"{'s' if len(measures) != 1 else ''} (median steps to tuned AdamW's median "
            "validation metric): fraction of workloads where fastest: "
            + ", ".join(f"{describe_optimizer(o)} {rho[o][0]:.2f}" for o in order)
            + "; within 2× of the fastest: "
            + ", ".join(f"{describe_optimizer(o)} {rho[o][k]:.2f}" for o in order) + "."
        )  # fmt: skip
    return lines


def _profile(an: Analysis) -> tuple[dict, dict] | None:
    measures: dict[str, dict[str, float]] = {}
    for wa in an.workloads:
        if wa.target is None:
            continue
        per = {}
        for opt, row in wa.rows.items():
            ok = [r for r in row.finals if r["status"] == "ok"]
            if not ok:
                continue
            # median_low: a median that is one of the runs' values (inf when most missed)
            per[opt] = statistics.median_low(
                r["steps_to_target"] if r["steps_to_target"] is not None else math.inf
                for r in ok
            )
        if per:
            measures[wa.name] = per
    if not measures:
        return None
    return measures, performance_profile(measures, PROFILE_TAUS)


# ------------------------------------------------------------------------------ markdown


def _mean_sd(values: Iterable[float | None], digits: int = 4) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "–"
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} ± {statistics.stdev(vals):.2g}"


def _median(values: Iterable[float | None], fmt: str = "{:.3g}") -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return fmt.format(statistics.median(vals)) if vals else "–"


def _second_text(chosen: dict | None, steps: int) -> str:
    if not chosen:
        return "–"
    wd = chosen["weight_decay"] or 0.0
    removal = removal_fraction(chosen["lr"], wd, steps)
    text = f"wd {fmt_float(wd)} ({100 * removal:.0f}%)"
    if chosen["second"] == "nu":
        text += f", ν {fmt_float(chosen['second_value'])}"
    return text


def workload_markdown(an: Analysis, wa: WorkloadAnalysis, plots: dict[str, str]) -> list[str]:
    w = wa.workload
    direction = "higher" if w.greater_is_better else "lower"
    target = "–" if wa.target is None else f"{wa.target:.4g}"
    held, val = metric_name(wa), metric_name(wa, held_out=False)
    lines = [f"## {w.name} ({wa.max_steps} steps)", "",
             f"Judged on {held} ({direction} is better). Target for steps-to-target: "
             f"{val} {target} ({wa.target_rule}).", ""]  # fmt: skip
    sizes = [r for row in wa.rows.values() for r in row.finals + row.tune
             if r["test_samples"] is not None or r["eval_samples"] is not None]  # fmt: skip
    if sizes:
        r = sizes[0]
        lines += [f"Data: {_f(r['train_samples'], 6)} training rows, {_f(r['eval_samples'], 6)} "
                  f"validation rows per evaluation, {_f(r['test_samples'], 6)} test rows "
                  f"(blocks of tokens for language models, pairs, images).", ""]  # fmt: skip
    if not wa.uses_test:
        lines += ["**No test split**: the held-out columns below show the *validation* "
                  "metric, which also chose the configurations (optimistic).", ""]  # fmt: skip
    # three narrow tables rather than one wide one: result, cost, CLion's sign branch
    result, cost, diag = [], [], []
    for opt, row in wa.rows.items():
        ok = [r for r in row.finals if r["status"] == "ok"]
        chosen = row.chosen
        lr_text = "–" if not chosen else fmt_float(chosen["lr"])
        second_text = _second_text(chosen, wa.max_steps)
        if row.plan is not None and row.plan.chosen is not None and row.plan.chosen.params:
            second_text += _params_text(p for p in row.plan.chosen.params if p[0] != "wd_scale")
        if row.plan is not None and row.plan.lr_on_edge:
            lr_text += " (on the grid's edge)"
        if row.plan is not None and row.plan.second_on_edge:
            second_text += " (on the grid's edge)"
        reached = [r for r in ok if r["steps_to_target"] is not None]
        name = describe_optimizer(opt)
        result.append([name, lr_text, second_text,
                       f"{len(ok)} of {len(row.finals)}",
                       _mean_sd(r["test_metric"] for r in ok),
                       _mean_sd(r["final_metric"] for r in ok)])  # fmt: skip
        cost.append([
            name,
            f"{_median((r['steps_to_target'] for r in reached), '{:.0f}')} "
            f"({len(reached)} of {len(ok)})",
            _median(r["train_s_to_target"] for r in reached),
            _median(r["optimizer_ms_per_step"] for r in ok),
            _median(r["optimizer_state_mb"] for r in ok),
            _median((r["peak_mem_mb"] for r in ok), "{:.0f}"),
        ])  # fmt: skip
        if opt.startswith("clion"):
            mins = [r["min_abs_c_min"] for r in ok if r["min_abs_c_min"] is not None]
            tuned = dict(row.plan.chosen.params) if row.plan and row.plan.chosen else {}
            nu = (chosen["second_value"] if chosen and chosen["second"] == "nu"
                  else tuned.get("nu", parse_optimizer(opt).get("nu")))  # local search's ν
            diag.append([name, fmt_float(nu), _median(r["sign_fraction_mean"] for r in ok),
                         f"{min(mins):.2g}" if mins else "–"])  # fmt: skip
    lines += table(["optimizer", "learning rate", "weight decay (share removed), ν",
                     "final runs ok", f"{held} (mean ± sd)", f"{val} (mean ± sd)"], result)
    lines += ["", "Cost (medians over the final runs; times on a shared host):", ""]
    lines += table(["optimizer", "steps to target (runs reaching it)", "training s to target",
                     "optimizer ms per step", "optimizer state MB", "peak memory MB"], cost)
    if diag:
        lines += ["", "CLion's sign branch (final runs):", ""]
        lines += table(["optimizer", "ν", "fraction of coordinates on the sign branch "
                         "(median of run means)", "smallest non-zero abs(c) seen"], diag)
    if wa.tests:
        lines += ["", f"Tested comparisons (declared in the preset; paired by seed; Holm over "
                  f"all {sum(len(x.tests) for x in an.workloads)} tests of this report):", ""]
        lines += [f"- {verdict_sentence(wa, t)}" for t in wa.tests]
    if wa.estimates:
        lines += ["", "Other pairs, estimates only (A − B, paired by seed; not tested, so no "
                  "verdict):", ""]  # fmt: skip
        lines += [f"- {estimate_sentence(wa, t)}" for t in wa.estimates]
    lines += ["", "Search (mean final validation metric over the tuning seeds; **bold** = "
              "chosen; trials in the order run):", ""]  # fmt: skip
    spend = []
    for opt, row in wa.rows.items():
        every = row.tune + row.finals
        spend.append([describe_optimizer(opt),
                      f"{row.plan.trials_used} of {row.plan.search.budget}" if row.plan else "?",
                      str(sum(r["status"] == "diverged" for r in every)),
                      str(sum(r["status"] == "failed" for r in every))])  # fmt: skip
        if not row.plan:
            continue
        cells = []
        for t in row.plan.trials:
            vals = [r for r in t.results if r is not None]
            metric = [final_metric(r) for r in vals]
            metric = [m for m in metric if m is not None]
            status = {r.get("status") for r in vals} - {"ok"}
            text = (f"{_f(statistics.fmean(metric))}" if metric and not status
                    else ("/".join(sorted(status)) if status else "pending"))  # fmt: skip
            sec = "" if t.second is None else f", {row.plan.search.second} {fmt_float(t.second)}"
            sec += _params_text(t.params)
            cell = f"lr {fmt_float(t.lr)}{sec}: {text}"
            if row.plan.chosen is t:
                cell = f"**{cell}**"
            cells.append(cell)
        ext = []
        if row.plan.lr_extensions:
            ext.append("lr extended to " + ", ".join(fmt_float(x) for x in row.plan.lr_extensions))
        if row.plan.second_extensions:
            ext.append(f"{row.plan.search.second} extended to "
                       + ", ".join(fmt_float(x) for x in row.plan.second_extensions))
        if row.plan.lr_on_edge:
            ext.append("**lr optimum still on an edge: inconclusive**")
        if row.plan.second_on_edge:
            what = (" and ".join(_SECOND_WORDS.get(e, e) for e in row.plan.edges if e != "lr")
                    or row.plan.search.second)  # fmt: skip
            ext.append(f"**{what} optimum still on an edge: inconclusive**")
        tail = f" ({'; '.join(ext)})" if ext else ""
        lines.append(f"- {describe_optimizer(opt)}: " + "; ".join(cells) + tail)
    lines += [""]
    lines += table(["optimizer", "trials used of budget", "diverged runs", "failed runs"],
                    spend)
    bad = [r for row in wa.rows.values() for r in row.tune + row.finals if r["status"] != "ok"]
    if bad:
        lines += ["", "Runs that did not finish ok:", ""]
        lines += [f"- `{r['run_id']}` {describe_optimizer(r['optimizer'])} "
                  f"lr={fmt_float(r['lr'])} seed={r['seed']} ({r['phase']}): {r['status']} "
                  f"({r['reason']})" for r in bad]  # fmt: skip
    for key, alt in (("loss", "training and validation loss"),
                     ("sign", "CLion sign-branch fraction over steps"),
                     ("minc", "CLion smallest non-zero abs(c) over steps")):
        if f"{key}:{w.name}:{wa.max_steps}" in plots:
            lines += ["", f"![{w.name}: {alt}]({plots[f'{key}:{w.name}:{wa.max_steps}']})"]
    lines.append("")
    return lines


PROTOCOL_TEXT = """\
Protocol (AlgoPerf-style external tuning; the searches are in `bench.json`):
- *Search*: each optimizer has a declared search space and the same trial budget. A trial is
  one configuration run on every tuning seed; trials are compared on the mean final
  validation metric (validation loss for language models); a trial with a diverged or failed
  seed is out. First the learning rate on a grid 2x apart (AdamW around the workload's AdamW
  lr; Lion and CLion `element`/`soft` around the Lion lr, about AdamW/3; CLion
  `global`/`tensor` around an SGD-sized lr), extended one 2x step at a time while the best
  point is on an edge, up to the stated bound; then, at the best lr, one second
  hyper-parameter: the weight-decay scale for AdamW, Lion and CLion `global`/`tensor`, ν for
  CLion `element`/`soft`. A row whose optimum is still on an edge after the extensions is
  marked inconclusive.
- *Weight decay*: coupled to the lr (lr·wd, not wd, is the same for every lr, as the Lion
  paper advises), at a scale where it acts: at scale 1 decay alone removes 10% of a weight
  over the run (the "removed" column gives the chosen configuration's share); the second
  stage tries scales 0 and 1/4 (and 4 if 1 is best).
- *Seeds*: the chosen configuration runs on fresh final seeds that took no part in the
  choice; seed s of every optimizer has the same initialization and data order, so
  comparisons are paired by seed.
- *Statistics*: the comparisons the preset declares (`primary` in `bench.json` or the preset)
  are tested on the held-out test split, paired by seed: a paired t-test of the mean
  per-seed difference, Holm's step-down over every tested comparison of the report (all
  workloads together), each interval a t interval at the level its test used. A difference
  is "better"/"worse" only when Holm rejects "no difference"; "the same" only when the two
  one-sided tests (TOST, Holm over the report as well) put the difference inside the
  declared margin; otherwise "no difference detected". A comparison involving a row whose
  tuned optimum is still on a grid edge is "inconclusive", whatever the test says. Other
  pairs are shown as estimates with an unadjusted 95% t interval and no verdict; "best
  mean" is descriptive. Language models are compared on test loss (reported as the
  perplexity ratio exp(difference)); classifiers on test accuracy (percentage points).
- *Divergence*: a run whose logged loss or final metric is NaN/inf, or whose last training
  loss is above 3× its first, is "diverged" (a result, not a crash).
- *Efficiency*: the target is the median final validation metric of tuned AdamW's final
  seeds; steps to target = first evaluation reaching it (median over final seeds; reached
  count in brackets); training s to target = time inside training steps up to then
  (evaluation, logging and data loading excluded); optimizer ms per step = time inside
  `optimizer.step()` alone. Time figures depend on the host's load (noted above).
- *CLion diagnostics*: sign-branch fraction = median over final runs of the mean fraction of
  coordinates that took the sign branch (`optim/sign_fraction`); min abs(c) = the smallest
  logged non-zero abs(c) (`optim/min_abs_c`); the plots show both over time for every trial.
"""


LOCAL_SEARCH_TEXT = (
    "*This preset's search* replaces the lr-then-second-hyper-parameter search above: every "
    "row spends exactly {trials} configurations (each on every tuning seed) in one local "
    "search over the same dimensions for everyone ({dims}; ν only for CLion element/soft; "
    "beta2 on a declared list, 0.9 to 0.999 for the sign methods and up to 0.9999 for "
    "AdamW). From the first lr grid it steps past the best point in any dimension whose "
    "best value is the smallest or largest tried there, then looks closer around the best. "
    "A row whose choice is still the smallest or largest value tried in a dimension (other "
    "than a bound of the space: no weight decay, beta2's ends) is inconclusive."
)
PROBE_TEXT = (
    "Before any edge is followed further, every dimension with fewer than 3 values tried "
    "comes first, so that each one (ν included) is bracketed around the best point once "
    "(the protocol since cpu-ladder's first run, where 9 trials spent in order left ν "
    "untried)."
)


def timing_lines(results: list[dict], load_log: Path | None = None,
                 jobs: int | None = None) -> list[str]:  # fmt: skip
    """How long the matrix took: CPU time, wall time, and the host's load while it ran
    (``results``: result files, or summary rows with ``jobs`` given)."""
    cpu = [r["cpu_s"] for r in results if isinstance(r.get("cpu_s"), int | float)]
    starts = [r["started_at"] for r in results if r.get("started_at")]
    ends = [r["finished_at"] for r in results if r.get("finished_at")]
    lines = []
    if starts and ends:
        from datetime import datetime

        span = (datetime.fromisoformat(max(ends)) - datetime.fromisoformat(min(starts)))
        lines.append(f"Wall time from the first run's start to the last run's end: "
                     f"{span.total_seconds() / 60:.0f} min (interruptions included).")
    if cpu:
        jobs = jobs or max((r.get("jobs") or 1 for r in results), default=1)
        lines.append(f"CPU time of the {len(cpu)} runs: {sum(cpu) / 3600:.2f} h, i.e. "
                     f"{sum(cpu) / 60 / jobs:.0f} min on {jobs} dedicated cores running "
                     f"{jobs} at a time.")
    loads = [r["load_avg_1m"] for r in results if isinstance(r.get("load_avg_1m"), int | float)]
    source = "as runs ended"
    if not loads and load_log is not None and load_log.is_file():
        loads = [float(ln.split()[1]) for ln in load_log.read_text().splitlines()
                 if len(ln.split()) > 1]  # fmt: skip
        source = f"sampled each minute, `{load_log.name}`"
    if loads:
        lines.append(f"Host load average (1 min) during the runs: median "
                     f"{statistics.median(loads):.1f}, range {min(loads):.1f} to "
                     f"{max(loads):.1f} ({source}); time figures are inflated by it.")
    return lines


def _host_text(env: Mapping[str, Any]) -> str:
    """``CPU, `platform``` of one run's recorded environment (the CPU is recorded since
    ladder-cpu-v2 finished; older results have the platform alone)."""
    cpu = f"{env['cpu']}, " if env.get("cpu") else ""
    return f"{cpu}`{env.get('platform') or 'platform not recorded'}`"


def cost_model_lines(an: Analysis, results: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """This run against the cost model ``clion-bench run --dry_run`` estimates with: the
    measured seconds per run (CPU seconds on a CPU preset, one thread per run; wall seconds
    otherwise) against the model's, per workload and over every run, and the hosts the runs
    recorded (hosts of one VM kind differ by about 30% per run: the README of
    docs/benchmarks/ladder-cpu-v2-2026-12-06)."""
    m = an.matrix
    if m is None:
        return []
    key = "cpu_s" if m.preset.accelerate_config == "cpu" else "wall_s"
    measured: dict[str, list[float]] = defaultdict(list)
    for r in an.rows:
        if r["workload"] in m.workloads and isinstance(r.get(key), int | float):
            measured[r["workload"]].append(r[key])
    if not measured:
        return []
    model = {w: m.run_seconds(w) for w in measured}
    took = sum(sum(v) for v in measured.values()) / m.jobs
    expected = sum(model[w] * len(v) for w, v in measured.items()) / m.jobs
    kind = "CPU" if key == "cpu_s" else "wall"
    note = f"; cost model: {m.preset.cost_note}" if m.preset.cost_note else ""
    rows = [[w, str(len(v)), f"{model[w]:.1f}", f"{statistics.median(v):.1f}",
             f"×{statistics.median(v) / model[w]:.2f}"]
            for w in m.workloads if (v := measured.get(w))]  # fmt: skip
    hosts_seen = Counter(_host_text(r.get("environment") or {}) for r in results)
    hosts = "; ".join(f"{h} ({n} runs)" for h, n in hosts_seen.most_common())
    return ["", f"Against the cost model (`--dry_run` estimated {m.estimate_text()} for the "
            f"whole matrix{note}): the {sum(map(len, measured.values()))} runs here took "
            f"×{took / expected:.2f} the model's time for the same runs ({took / 60:.0f} min "
            f"against {expected / 60:.0f} min on {m.jobs} dedicated cores)."
            + (f" Hosts the runs recorded (`environment`: CPU, platform): {hosts}."
               if hosts_seen else ""), "",
            *table(["workload", "runs", "model s per run", f"median {kind} s per run",
                    "measured / model"], rows)]  # fmt: skip


def next_step_lines(an: Analysis) -> list[str]:
    """What a run with fewer than 2 final seeds shows (nothing compared) and the command
    for a comparison, with the estimate ``clion-bench run --dry_run`` would print."""
    seeds = max((len(row.finals) for wa in an.workloads for row in wa.rows.values()),
                default=0)  # fmt: skip
    if seeds >= 2:
        return []
    workloads = [wa.name for wa in an.workloads]
    preset = an.matrix.preset if an.matrix is not None else None
    if an.matrix is not None and len(an.matrix.final_seeds) >= 2:
        # a comparison that has not finished yet (the runner resumes): say so, not "smoke"
        return [f"**This run is not finished: no optimizer has 2 final seeds yet, so nothing "
                f"is compared.** Resume it with the command that started it, e.g. "
                f"`clion-bench run --preset {preset.name} --out DIR` on this directory "
                f"(`--dry_run` prints the plan), then `clion-bench report DIR`.", ""]
    name = (preset.comparison_preset or preset.name) if preset else "cpu"
    target = get_preset(name)
    extra = ""
    if preset is not None and not preset.comparison_preset:
        # no comparison preset: the same preset with the cpu preset's seeds
        ref = get_preset("cpu")
        tuning, final = ref.tuning_seeds, ref.final_seeds
        extra = f" --seeds {len(final)} --tuning_seeds {len(tuning)}"
    else:
        tuning, final = target.tuning_seeds, target.final_seeds
    if set(workloads) != set(target.workloads) and workloads:
        extra += f" --workloads {','.join(workloads)}"
    kept = [w for w in workloads if w in target.workloads] or list(target.workloads)
    matrix = Matrix(target, kept, [parse_optimizer(o) for o in target.optimizers], tuning, final)
    out = f"{name}-run"
    return [f"**{'One final seed' if seeds == 1 else 'No final seed'} per optimizer: this run "
            "checks that everything trains; it compares nothing.** For a comparison (tuned "
            "learning rates, tested differences), run "
            f"`clion-bench run --preset {name}{extra} --out {out}` and then "
            f"`clion-bench report {out}`: estimated {matrix.estimate_text()} "
            f"({target.jobs} runs at a time; {target.cost_note}; "
            "`clion-bench run --dry_run` prints the plan).", ""]


def report_markdown(an: Analysis, plots: dict[str, str], problems: list[str],
                    plot_errors: list[str], timing: list[str] = (),
                    ladder: list[str] = ()) -> str:  # fmt: skip
    n = len(an.rows)
    counts: dict[str, int] = defaultdict(int)
    for r in an.rows:
        counts[r["status"]] += 1
    host = run_environment_line(an.meta.get("environment") or {}) if an.meta else None
    lines = ["# clion-bench report", ""]
    lines += next_step_lines(an)
    lines += ["Which optimizer trains each workload best: every optimizer tuned on its own "
              "grid, the chosen configuration run on fresh seeds, and the comparisons the "
              "preset declares tested on held-out data. The verdicts come first; tables, "
              "searches and plots follow.", ""]
    if an.meta:
        opts = ", ".join(f"`{o}`" for o in an.meta.get("optimizers", []))
        lines.append(f"Preset: `{an.meta.get('preset')}`; optimizers: {opts}; tuning seeds "
                     f"{an.meta.get('tuning_seeds')}, final seeds {an.meta.get('final_seeds')}.")
    else:
        lines.append("`bench.json` is missing or unreadable: the search (budgets, extensions, "
                     "edges) cannot be reconstructed; tables show the runs as found.")
    lines += [f"Runs: {n} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})."]
    lines += [host] if host else []
    lines += list(timing)
    lines.append("")
    tested = sum(t.n >= 2 for wa in an.workloads for t in wa.tests)
    trends = sum(tr.usable for tr in an.trends)
    counted = (f"{tested} tests in all, paired by seed (paired t-test)" if not trends else
               f"{tested} tests paired by seed (paired t-test) and, per ladder and declared "
               f"comparison, {trends} tests of its change from the smallest to the largest "
               f"width (Welch t-test), {tested + trends} in all")  # fmt: skip
    declared = ("no comparison the preset declares is in these runs, so every optimizer "
                "against AdamW" if an.fallback else "; ".join(
                    f"{describe_optimizer(a)} vs {describe_optimizer(b)}"
                    for a, b in an.primary) or "none")  # fmt: skip
    margins = "; ".join(
        f"perplexity: {v:g} nats of test loss (a ratio within ×{math.exp(v):.3f})"
        if k == "perplexity" else f"{k.removeprefix('eval_')}: {100 * v:g} pp"
        for k, v in sorted(an.margins.items(), reverse=True))  # fmt: skip
    lines += ["## Verdict", "",
              f"Generated from the results by `clion-bench report`. Tested, per workload: "
              f"{declared}; {counted}, Holm over "
              f"all of them; intervals at each test's Holm level. \"The same\" needs an "
              f"equivalence test (TOST) inside the margin the preset declares ({margins}); "
              "a comparison with a row whose "
              "tuned optimum sits on the edge of its grid is inconclusive."
              + ("" if not an.meta or "primary" in an.meta else
                 " `bench.json` records no declared comparisons (it predates them): those of "
                 "the preset in this version of the code are used, declared after these runs."),
              "", FINDINGS_BEGIN]  # fmt: skip
    lines += findings(an)
    lines += [FINDINGS_END, ""]
    lines += list(ladder)  # the scale ladder's section (clion_hf/bench/ladder.py), if any
    if problems or an.missing or plot_errors:
        lines += ["## Missing or unreadable", ""]
        lines += [f"- {p}" for p in problems + an.missing + plot_errors]
        lines.append("")
    lines += ["## Protocol", "", PROTOCOL_TEXT]
    if an.matrix is not None and an.matrix.preset.tuned:  # the local search, not the above
        lines += [LOCAL_SEARCH_TEXT.format(trials=an.matrix.preset.trials_per_row,
                                           dims=", ".join(an.matrix.preset.tuned))
                  + (" " + PROBE_TEXT if an.matrix.preset.probe_first else ""), ""]
    if "profile" in plots:
        lines += ["## Performance profile", "",
                  "Fraction of workloads on which each optimizer reaches the target within "
                  "τ times the steps of the fastest (median over final seeds; AlgoPerf-style, "
                  "on steps rather than time since the host is shared).", "",
                  f"![performance profile]({plots['profile']})", ""]  # fmt: skip
        prof = _profile(an)
        if prof:
            _, rho = prof
            lines += table(["optimizer", *[f"τ={t:g}" for t in PROFILE_TAUS]],
                            [[describe_optimizer(o), *[f"{v:.2f}" for v in rho[o]]]
                             for o in sorted(rho, key=optimizer_order)])  # fmt: skip
            lines.append("")
    if "final" in plots:
        lines += [f"![held-out metric per workload]({plots['final']})", ""]
    if "diag" in plots:
        lines += ["CLion's sign branch, every run: the fraction of coordinates that took it, "
                  "and the smallest non-zero abs(c) against ν.", "",
                  f"![CLion sign branch per run]({plots['diag']})", ""]  # fmt: skip
    for wa in an.workloads:
        lines += workload_markdown(an, wa, plots)
    return "\n".join(lines)


# ------------------------------------------------------------------------------ plots




def _mean_curve(results: list[dict], key: str, median: bool = False
                ) -> tuple[list[int], list[float], list[float], list[float]]:  # fmt: skip
    """Per logged step: the mean (or median) over ``results``, the min and the max."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for r in results:
        for step, value in curve(r, key):
            by_step[step].append(value)
    steps = sorted(by_step)
    centre = statistics.median if median else statistics.fmean
    return (steps, [centre(by_step[s]) for s in steps],
            [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps])  # fmt: skip


def run_nu(row: dict) -> float | None:
    """The ν a CLion run used (its ``nu`` column; in a results.csv written before that
    column, its tuned ν, else its spec's); None for other optimizers."""
    if row.get("nu") is not None:
        return float(row["nu"])
    try:
        spec = parse_optimizer(row["optimizer"])
    except SpecError:
        return None
    if spec.name != "clion":
        return None
    if row.get("second") == "nu" and row.get("second_value") is not None:
        return float(row["second_value"])
    return spec.get("nu")


def _seeds_text(n: int) -> str:
    return f"{n} final seed{'s' if n != 1 else ''}"


def make_plots(an: Analysis, results: list[dict], plot_dir: Path,
               figures: dict[str, Any] | None = None) -> tuple[dict[str, str], list[str]]:
    """Write the PNGs; returns (plot key -> path relative to the report, errors). With
    ``figures``, each matplotlib figure is also kept there (open) by key, for inspection.

    The rules: one colour per optimizer (:mod:`.plotstyle`), units on the y axes,
    legends at a readable size, markers on sparse validation points, sign fractions on
    [0, 1], ν drawn wherever abs(c) is, titles that say which statistic is drawn, bars on
    linear axes with their values printed, error bars only with at least 2 seeds.
    Curves over steps need the per-run result files; the rest is drawn from the rows.
    """
    book = Figures(plot_dir, figures)
    import matplotlib.pyplot as plt

    from .plotstyle import LABEL_SIZE, LEGEND_SIZE, colour, loss_unit

    plots: dict[str, str] = {}
    by_id = {r["run_id"]: r for r in results}

    def attempt(key: str, fname: str, draw) -> None:
        path = book.draw(fname, draw, key)
        if path is not None:
            plots[key] = path

    def nu_marks(ax, runs: Iterable[dict]) -> None:
        """ν of the runs drawn: a line per ν of the modes that gate on min abs(c) (global,
        tensor), a band over the ν tried by the per-coordinate modes (element, soft)."""
        gate, coord = set(), set()
        for r in runs:
            nu = run_nu(r)
            if nu is not None:
                (gate if parse_optimizer(r["optimizer"]).sign_test_is_global else coord).add(nu)
        for nu, style in zip(sorted(gate), ("--", "-.", ":"), strict=False):
            ax.axhline(nu, color="black", linestyle=style, linewidth=1.2,
                       label=f"ν = {fmt_float(nu)} (global/tensor: sign branch only if "
                             "min abs(c) ≥ ν)")  # fmt: skip
        if coord:
            lo, hi = min(coord), max(coord)
            text = fmt_float(lo) if lo == hi else f"{fmt_float(lo)} to {fmt_float(hi)}"
            ax.axhspan(lo * 0.9, hi * 1.1, color="gray", alpha=0.25,
                       label=f"ν of element/soft runs: {text}")  # fmt: skip

    for wa in an.workloads:
        name = f"{wa.name}-{wa.max_steps}"
        unit = loss_unit(wa.name)

        def loss_plot(wa=wa, unit=unit):
            fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
            drawn, seeds = False, set()
            for opt, row in wa.rows.items():
                runs = [by_id[r["run_id"]] for r in row.finals
                        if r["status"] == "ok" and r["run_id"] in by_id]  # fmt: skip
                seeds.add(len(runs))
                for ax, key in zip(axes, ("loss", "eval_loss"), strict=True):
                    steps, mean, lo, hi = _mean_curve(runs, key)
                    if not steps:
                        continue
                    c = colour(opt)
                    # validation is evaluated a few times per run: mark each point
                    ax.plot(steps, mean, color=c, label=describe_optimizer(opt),
                            marker="o" if key == "eval_loss" else None, markersize=4)
                    if len(runs) >= 2:
                        ax.fill_between(steps, lo, hi, alpha=0.15, color=c, linewidth=0)
                    drawn = True
            if not drawn:
                plt.close(fig)
                return None
            n = max(seeds)
            stat = (f"mean over {_seeds_text(n)}, band = min to max" if n >= 2
                    else _seeds_text(n))  # fmt: skip
            for ax, what in zip(axes, ("training loss", "validation loss"), strict=True):
                label_axes(ax, f"{wa.name}: {what}\n({stat})", "step", f"{what} ({unit})",
                           LABEL_SIZE, grid=True)
            # one legend for both panels, below them: it never hides a curve
            handles, names = axes[1].get_legend_handles_labels()
            if not handles:
                handles, names = axes[0].get_legend_handles_labels()
            fig.legend(handles, names, loc="lower center", ncol=min(len(names), 6),
                       fontsize=LEGEND_SIZE, frameon=False)  # fmt: skip
            fig.tight_layout(rect=(0, 0.08, 1, 1))
            return fig

        attempt(f"loss:{wa.name}:{wa.max_steps}", f"loss-{name}.png", loss_plot)

        def clion_runs(opt: str, wa=wa) -> list[dict]:
            row = wa.rows[opt]
            return [by_id[r["run_id"]] for r in row.finals + row.tune
                    if r["status"] != "failed" and r["run_id"] in by_id]  # fmt: skip

        def sign_plot(wa=wa):
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            drawn, count = False, 0
            for opt in (o for o in wa.rows if o.startswith("clion")):
                runs = clion_runs(opt)
                steps, mean, _, _ = _mean_curve(runs, SIGN_FRACTION_KEY)
                if steps:
                    count = max(count, len(runs))
                    ax.plot(steps, mean, color=colour(opt), marker=".",
                            label=f"{describe_optimizer(opt)} ({len(runs)} runs)")  # fmt: skip
                    drawn = True
            if not drawn:
                plt.close(fig)
                return None
            ax.set_ylim(-0.01, 1.01)  # a fraction: flat at 0 must look flat at 0
            label_axes(ax, f"{wa.name}: CLion sign-branch fraction per logged step\n(mean "
                       "over every run of the row, tuning and final)", "step",
                       "fraction of coordinates on the sign branch", LABEL_SIZE, grid=True)
            ax.legend(fontsize=LEGEND_SIZE)
            fig.tight_layout()
            return fig

        def minc_plot(wa=wa):
            fig, ax = plt.subplots(figsize=(6.4, 5.2))
            drawn, summaries = False, []
            for opt in (o for o in wa.rows if o.startswith("clion")):
                runs = clion_runs(opt)
                steps, med, _, _ = _mean_curve(runs, MIN_ABS_C_KEY, median=True)
                # an exact 0 (no non-zero coordinate) cannot be drawn on a log axis
                kept = [(s, v) for s, v in zip(steps, med, strict=True) if v > 0]
                if kept:
                    ax.plot([s for s, _ in kept], [v for _, v in kept], color=colour(opt),
                            marker=".", label=f"{describe_optimizer(opt)} ({len(runs)} runs)")
                    summaries += wa.rows[opt].tune + wa.rows[opt].finals
                    drawn = True
            if not drawn:
                plt.close(fig)
                return None
            nu_marks(ax, summaries)
            ax.set_yscale("log")
            label_axes(ax, f"{wa.name}: smallest non-zero abs(c) per logged step\n(median "
                       "over every run of the row, tuning and final)", "step",
                       "smallest non-zero abs(c) (gradient units)", LABEL_SIZE, grid=True)
            ax.legend(fontsize=LEGEND_SIZE - 1, loc="upper center", bbox_to_anchor=(0.5, -0.16))
            fig.tight_layout()
            return fig

        attempt(f"sign:{wa.name}:{wa.max_steps}", f"clion-sign-{name}.png", sign_plot)
        attempt(f"minc:{wa.name}:{wa.max_steps}", f"clion-minc-{name}.png", minc_plot)

    def final_plot():
        shown = [wa for wa in an.workloads if any(r.ok_finals() for r in wa.rows.values())]
        if not shown:
            return None
        cols = min(3, len(shown))
        nrows = math.ceil(len(shown) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 4.2 * nrows), squeeze=False)
        most = 0
        for ax, wa in zip(axes.flat, shown, strict=False):
            labels, means, sds, colours = [], [], [], []
            for opt, row in wa.rows.items():
                values = [r["test_metric"] for r in row.ok_finals()]
                most = max(most, len(values))
                labels.append(describe_optimizer(opt))
                means.append(statistics.fmean(values) if values else math.nan)
                sds.append(statistics.stdev(values) if len(values) > 1 else math.nan)
                colours.append(colour(opt))
            x = range(len(labels))
            bars = ax.bar(x, means, color=colours)
            if any(math.isfinite(v) for v in sds):  # only rows with 2 or more seeds
                ax.errorbar(x, means, yerr=[0 if math.isnan(v) else v for v in sds], fmt="none",
                            ecolor="black", capsize=4)  # fmt: skip
            # inside the bars, clear of the error bars
            ax.bar_label(bars, labels=[f"{m:.4g}" if math.isfinite(m) else "" for m in means],
                         label_type="center", rotation=90, color="white", fontsize=9,
                         fontweight="bold")  # fmt: skip
            ax.set_xticks(list(x), labels, rotation=30, ha="right", fontsize=9)
            ax.set_title(f"{wa.name} ({wa.max_steps} steps)", fontsize=LABEL_SIZE)
            direction = "higher" if wa.workload.greater_is_better else "lower"
            ax.set_ylabel(f"{metric_name(wa)} ({direction} is better)", fontsize=LABEL_SIZE)
            ax.margins(y=0.12)
        for ax in list(axes.flat)[len(shown):]:
            ax.set_visible(False)
        bars_are = ("mean over the final seeds; error bars: ±1 standard deviation over seeds"
                    if most >= 2 else "one final seed per optimizer: no error bars")
        fig.suptitle(f"Held-out metric of the chosen configurations ({bars_are})",
                     fontsize=LABEL_SIZE + 1)  # fmt: skip
        fig.tight_layout()
        return fig

    attempt("final", "final-metric.png", final_plot)

    def diag_plot():
        """Per run, from the summary rows (so also when the curves are gone)."""
        rows = [r for r in an.rows if r["optimizer"].startswith("clion") and r["status"] == "ok"]
        if not any(r["sign_fraction_mean"] is not None for r in rows):
            return None
        names = [wa.name for wa in an.workloads]
        labels = sorted({r["optimizer"] for r in rows}, key=optimizer_order)
        fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
        drawn_c: list[dict] = []
        width = 0.8 / max(1, len(labels))
        for j, opt in enumerate(labels):
            for ax, key in zip(axes, ("sign_fraction_mean", "min_abs_c_min"), strict=True):
                xs, ys = [], []
                for i, w in enumerate(names):
                    vals = [r[key] for r in rows if r["optimizer"] == opt and r["workload"] == w
                            and r[key] is not None and (key != "min_abs_c_min" or r[key] > 0)]
                    xs += [i - 0.4 + width * (j + 0.5)] * len(vals)
                    ys += vals
                    if key == "min_abs_c_min" and vals:
                        drawn_c += [r for r in rows if r["optimizer"] == opt
                                    and r["workload"] == w]  # fmt: skip
                ax.scatter(xs, ys, s=12, color=colour(opt), alpha=0.7,
                           label=describe_optimizer(opt))  # fmt: skip
        a0, a1 = axes
        a0.set_ylim(-0.01, 1.01)
        a0.set_ylabel("fraction of coordinates on the sign branch", fontsize=LABEL_SIZE)
        a0.set_title("CLion sign-branch fraction of each run\n(its mean over logged steps; "
                     "every tuning and final run)", fontsize=LABEL_SIZE)  # fmt: skip
        nu_marks(a1, drawn_c)
        a1.set_yscale("log")
        a1.set_ylabel("smallest non-zero abs(c) (gradient units)", fontsize=LABEL_SIZE)
        a1.set_title("smallest non-zero abs(c) of each run\n(its minimum over logged "
                     "steps; every tuning and final run)", fontsize=LABEL_SIZE)  # fmt: skip
        for ax in axes:
            ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=9)
            ax.grid(alpha=0.3, axis="y")
        a0.legend(fontsize=LEGEND_SIZE, loc="upper center", bbox_to_anchor=(0.5, -0.22),
                  ncol=len(labels))  # fmt: skip
        a1.legend(fontsize=LEGEND_SIZE, loc="upper center", bbox_to_anchor=(0.5, -0.22),
                  ncol=2)  # fmt: skip
        fig.tight_layout()
        return fig

    attempt("diag", "clion-sign-branch-per-run.png", diag_plot)

    def profile_plot():
        prof = _profile(an)
        if prof is None:
            return None
        measures, _ = prof
        taus = [1 + i * 0.01 for i in range(301)]
        rho = performance_profile(measures, taus)
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for i, opt in enumerate(sorted(rho, key=optimizer_order)):
            # offset a little so that optimizers with the same profile stay visible
            ax.step(taus, [v + 0.006 * (i - 2.5) for v in rho[opt]], where="post",
                    label=describe_optimizer(opt), color=colour(opt),
                    linestyle=("-", "--", ":", "-.")[i % 4], linewidth=1.8)  # fmt: skip
        ax.set_xlabel("τ = steps to target / the fastest optimizer's", fontsize=LABEL_SIZE)
        ax.set_ylabel("fraction of workloads within τ", fontsize=LABEL_SIZE)
        ax.set_ylim(-0.04, 1.04)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=LEGEND_SIZE, loc="center right")
        ax.set_title(f"performance profile over {len(measures)} workloads (median steps to "
                     "the target\nover final seeds; equal lines offset slightly to stay "
                     "visible)", fontsize=LABEL_SIZE)  # fmt: skip
        fig.tight_layout()
        return fig

    attempt("profile", "performance-profile.png", profile_plot)
    return plots, book.errors


# ------------------------------------------------------------------------------ entry points


def ladder_plots(an: Analysis, points: list[dict[str, Any]], levels: dict[str, dict[str, float]],
                 results: list[dict], plot_dir: Path) -> tuple[dict[str, str], list[str]]:
    """Ratio (or difference) to AdamW against width with intervals, and the mean validation
    curves of every rung's final runs with the plateau levels drawn; (plots, errors)."""
    book = Figures(plot_dir)
    import matplotlib.pyplot as plt

    from .plotstyle import LABEL_SIZE, LEGEND_SIZE, colour, loss_unit

    plots: dict[str, str] = {}

    def ratio_plot(base: str):
        mine = [p for p in points if p["base"] == base]
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for opt in sorted({p["optimizer"] for p in mine}):
            ps = [p for p in mine if p["optimizer"] == opt]
            x = [p["width"] for p in ps]
            y = [p["value"] for p in ps]
            err = [[p["value"] - p["lo"] for p in ps], [p["hi"] - p["value"] for p in ps]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=4, color=colour(opt),
                        label=f"{describe_optimizer(opt)} (n = {ps[0]['n']})")  # fmt: skip
        ref = 1.0 if mine[0]["measure"] == "perplexity ratio" else 0.0
        ax.axhline(ref, color="black", linewidth=1, label="AdamW")
        # Scale the axis to the optimizers run at every width; a row run at one width only
        # (all modes are on the smallest rung) far outside that range is written, not drawn,
        # so that it does not flatten the curves the ladder is about.
        widths = {p["width"] for p in mine}
        full = [p for p in mine if {q["width"] for q in mine if q["optimizer"] == p["optimizer"]}
                == widths] if len(widths) > 1 else mine  # fmt: skip
        lo = min([ref, *(p["lo"] for p in full)])
        hi = max([ref, *(p["hi"] for p in full)])
        pad = 0.15 * (hi - lo or 1.0)
        off = [p for p in mine if p["hi"] < lo - pad or p["lo"] > hi + pad]
        if off:
            ax.set_ylim(lo - pad, hi + pad)
            ax.text(0.02, 0.02, "off scale: " + "; ".join(
                f"{describe_optimizer(p['optimizer'])} {p['value']:.3g} at width {p['width']}"
                for p in off), transform=ax.transAxes, fontsize=LEGEND_SIZE)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({p["width"] for p in mine}),
                      [str(w) for w in sorted({p["width"] for p in mine})])  # fmt: skip
        ax.set_xlabel("model width (hidden size)", fontsize=LABEL_SIZE)
        ax.set_ylabel(f"test {mine[0]['measure']} vs AdamW", fontsize=LABEL_SIZE)
        ax.set_title(f"{base}: mean over paired final seeds, 95% t interval")
        ax.legend(fontsize=LEGEND_SIZE)
        return fig

    for base in sorted({p["base"] for p in points}):
        path = book.draw(f"ladder-{base}.png", lambda base=base: ratio_plot(base))
        if path is not None:
            plots[f"ladder-{base}"] = path
    by_id = {r["run_id"]: r for r in results}
    rungs: dict[str, list[WorkloadAnalysis]] = {}
    for wa in an.workloads:
        if WORKLOADS[wa.name].width:
            rungs.setdefault(WORKLOADS[wa.name].base, []).append(wa)

    def curves_plot(base: str, was: list[WorkloadAnalysis]):
        was = sorted(was, key=lambda wa: WORKLOADS[wa.name].width)
        fig, axes = plt.subplots(1, len(was), figsize=(4.2 * len(was), 5.2), squeeze=False)
        key = WORKLOADS[was[0].name].curve_key
        for ax, wa in zip(axes[0], was, strict=True):
            for opt, row in wa.rows.items():
                runs = [by_id[r["run_id"]] for r in row.finals if r["run_id"] in by_id]
                steps, mean, lo, hi = _mean_curve(runs, key)
                if steps:
                    ax.plot(steps, mean, marker=".", color=colour(opt),
                            label=f"{describe_optimizer(opt)} (validation)")  # fmt: skip
                    # the seeds' range: a mean can hide seeds stuck at a plateau
                    ax.fill_between(steps, lo, hi, color=colour(opt), alpha=0.12, linewidth=0)
                if key == "eval_loss":  # the training loss too, in the same units
                    steps, mean, _, _ = _mean_curve(runs, "loss")
                    if steps:
                        ax.plot(steps, mean, color=colour(opt), linewidth=0.8, alpha=0.6,
                                label=f"{describe_optimizer(opt)} (training)")  # fmt: skip
            for (name, value), style in zip(levels.get(base, {}).items(), ("--", ":"),
                                            strict=False):  # fmt: skip
                ax.axhline(value, color="black", linestyle=style, linewidth=1,
                           label=f"{name} level {value:.3g}")  # fmt: skip
            ax.set_title(f"width {WORKLOADS[wa.name].width}")
            ax.set_xlabel("step", fontsize=LABEL_SIZE)
        what = (f"loss ({loss_unit(was[0].name)})" if key == "eval_loss"
                else "validation accuracy")  # fmt: skip
        axes[0][0].set_ylabel(f"{what}, mean of final seeds\n(band: their range)",
                              fontsize=LABEL_SIZE)  # fmt: skip
        # one legend for every panel (a row present at one width only is listed too), below
        seen: dict[str, Any] = {}
        for ax in axes[0]:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                seen.setdefault(label, handle)
        fig.legend(list(seen.values()), list(seen), fontsize=LEGEND_SIZE, loc="lower center",
                   ncol=min(4, len(seen)), frameon=False)  # fmt: skip
        fig.tight_layout(rect=(0, 0.045 * math.ceil(len(seen) / 4) + 0.01, 1, 1))
        return fig

    for base, was in sorted(rungs.items()) if results else ():
        path = book.draw(f"ladder-curves-{base}.png",
                         lambda base=base, was=was: curves_plot(base, was))
        if path is not None:
            plots[f"ladder-curves-{base}"] = path
    return plots, book.errors


def summary_rows(results: list[dict]) -> list[dict]:
    """Summaries of every run, with steps-to-target against each workload's target."""
    first = [summarize(r) for r in results]
    an = Analysis(first, None, None)
    targets = {(wa.name, wa.max_steps): wa.target for wa in an.workloads}
    return [summarize(r, targets.get((r["workload"], int(r.get("max_steps") or 0))))
            for r in results]  # fmt: skip


def write_report(out_dir: Path) -> dict[str, Path]:
    """Write ``report.md``, ``results.csv`` and ``plots/*.png`` into ``out_dir``.

    Raises :class:`ReportError` only when ``out_dir`` cannot be written.
    """
    try:
        probe_writable(out_dir)
        return _write_report(out_dir)
    except OSError as err:  # read-only, or a disk that filled up on the way
        raise ReportError(f"cannot write the report into {out_dir}: "
                          f"{err.strerror or err}") from None


def _write_report(out_dir: Path) -> dict[str, Path]:
    results, problems = load_results(out_dir)
    meta = read_json(out_dir / "bench.json")
    if meta is not None and matrix_from(meta) is None:
        problems.append("`bench.json` is from another version or unreadable: the search "
                        "details are not shown")  # fmt: skip
        meta = None  # its fields are not what the report reads: show the runs as found
    from_csv = not results and (out_dir / "results.csv").is_file()
    if from_csv:
        # a committed report keeps results.csv, not the per-run files: regenerate from it
        rows = rows_from_csv((out_dir / "results.csv").read_text())
        problems.append("the per-run result files (`results/*.json`) are not here: this "
                        "report is regenerated from `results.csv`, so the curves over steps "
                        "(loss, sign-branch fraction, abs(c)), the host and the versions "
                        "(recorded in those files) are not shown")  # fmt: skip
    else:
        rows = summary_rows(results)
    an = analyze(rows, meta if isinstance(meta, dict) else None)
    if an.meta is not None and results:
        env = next((r.get("environment") for r in results if r.get("environment")), None)
        an.meta = {**an.meta, "environment": env or {}}
    plots, plot_errors = make_plots(an, results, out_dir / "plots")
    ladder = _ladder_section(an, results, out_dir, plots, plot_errors)
    if not from_csv:
        atomic_write_text(out_dir / "results.csv", rows_csv(rows))
    timing = timing_lines(results or rows, out_dir / "host-load.log",
                          an.matrix.preset.jobs if from_csv and an.matrix else None)
    timing += cost_model_lines(an, results)
    atomic_write_text(out_dir / "report.md",
                      report_markdown(an, plots, problems, plot_errors, timing,
                                      ladder))  # fmt: skip
    return {
        "report": out_dir / "report.md",
        "csv": out_dir / "results.csv",
        **{k: out_dir / v for k, v in plots.items()},
    }


def _ladder_section(an: Analysis, results: list[dict], out_dir: Path, plots: dict[str, str],
                    plot_errors: list[str]) -> list[str]:  # fmt: skip
    """The scale ladder (rungs ``NAME@WIDTH``): plateau levels, ratios to AdamW against
    width, their plots and ``ladder.csv``; ``[]`` when the results hold no rung."""
    from .ladder import ladder_csv, ladder_levels, ladder_markdown, ladder_points, plateau_exits

    if not any(wa.workload.width for wa in an.workloads):
        return []
    points, levels = ladder_points(an), ladder_levels(an)
    drawn, errors = ladder_plots(an, points, levels, results, out_dir / "plots")
    plots.update(drawn)
    plot_errors += errors
    atomic_write_text(out_dir / "ladder.csv", ladder_csv(points, levels))
    curves = {r["run_id"]: curve(r, "eval_loss") for r in results}
    return ladder_markdown(points, levels, plots, plateau_exits(an, curves, levels))


def findings_from_csv(csv_text: str, meta: dict | None) -> list[str]:
    """The Findings lines recomputed from ``results.csv`` and ``bench.json`` alone."""
    return findings(analyze(rows_from_csv(csv_text), meta))


def findings_block(report_text: str) -> list[str]:
    """The Findings lines of a written report (between the markers)."""
    return render.findings_block(report_text, FINDINGS_BEGIN, FINDINGS_END)
