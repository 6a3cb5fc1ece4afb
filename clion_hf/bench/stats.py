"""Statistics of the reports: paired t-tests, t intervals and TOST with Holm's correction
(the benchmark report over all its comparisons, the studies within each family),
performance profiles.

Why hand-written: Holm's step-down procedure needs a p-value per comparison and intervals at
per-comparison levels; SciPy gives the t-tests and quantiles, the step-down is a few lines.

Paired design: run ``s`` of optimizer A and run ``s`` of optimizer B share the seed, so the
same initialization and data order; the unit is the per-seed difference ``d_s = A_s - B_s``
and the statistic its mean.

Holm (1979) over the comparisons of one family: sort the p-values
``p_(1) <= ... <= p_(m)``; reject ``H_(k)`` while ``p_(j) <= alpha / (m - j + 1)`` for every
``j <= k``. Each comparison's interval is reported at the level its test used,
``1 - alpha / (m - j + 1)``, and at the level of the first non-rejected test for every test
after it; so an interval excludes 0 exactly when the difference is "detected", and a
difference whose interval contains 0 is reported as "no difference detected".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> tuple[list[bool], list[float]]:
    """Holm's step-down: (rejected, the level each test's interval uses), in input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    rejected = [False] * m
    levels = [1 - alpha] * m
    stopped_at: float | None = None
    for rank, i in enumerate(order):
        threshold = alpha / (m - rank)
        if stopped_at is None and pvalues[i] <= threshold:
            rejected[i] = True
            levels[i] = 1 - threshold
        else:
            if stopped_at is None:
                stopped_at = threshold
            levels[i] = 1 - stopped_at
    return rejected, levels


@dataclass
class Comparison:
    """One paired comparison, A minus B, after Holm's correction within its family."""

    a: str
    b: str
    diffs: list[float]
    mean: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    level: float = math.nan
    p: float = math.nan
    detected: bool = False

    @property
    def n(self) -> int:
        return len(self.diffs)


MIN_PAIRS = 2  # below this there is no interval to give


def compare_family(comparisons: list[Comparison], alpha: float = 0.05) -> list[Comparison]:
    """Fill in mean, paired t-test p, Holm-adjusted t interval and verdict of every comparison
    with at least :data:`MIN_PAIRS` pairs (the others stay undecided: ``detected`` False)."""
    # The paired t-test, not the bootstrap: a percentile bootstrap gives p = 0 whenever every
    # pair's difference has one sign, below what any exact test allows at a few seeds.
    usable = [c for c in comparisons if c.n >= MIN_PAIRS]
    for c in usable:
        c.mean = float(np.mean(c.diffs))
        c.p = paired_t_p(c.diffs)
    rejected, levels = holm([c.p for c in usable], alpha)
    for c, rej, level in zip(usable, rejected, levels, strict=True):
        c.level = level
        c.lo, c.hi = t_interval(c.diffs, level)
        c.detected = rej and (c.lo > 0 or c.hi < 0)
    return comparisons


def performance_profile(measures: dict[str, dict[str, float]], taus: Sequence[float]
                        ) -> dict[str, list[float]]:  # fmt: skip
    """Dolan-Moré / AlgoPerf performance profiles.

    ``measures[workload][optimizer]`` is a cost (steps to the target; ``inf`` when not
    reached). For each optimizer, ``rho(tau)`` is the fraction of workloads on which its
    cost is within ``tau`` times the best optimizer's on that workload. Workloads no
    optimizer solved count against everyone.
    """
    optimizers = sorted({o for per in measures.values() for o in per})
    ratios: dict[str, list[float]] = {o: [] for o in optimizers}
    for per in measures.values():
        finite = [v for v in per.values() if math.isfinite(v) and v > 0]
        best = min(finite) if finite else math.inf
        for o in optimizers:
            v = per.get(o, math.inf)
            ratios[o].append(v / best if math.isfinite(v) and math.isfinite(best) else math.inf)
    n = max(len(measures), 1)
    return {o: [sum(r <= t for r in ratios[o]) / n for t in taus] for o in optimizers}


def ratio_interval(ratios: list[float]) -> tuple[float, float, float]:
    """(median, low, high): the median per-round ratio and a 95% t interval (log scale)."""
    med = statistics.median(ratios)
    if len(ratios) < 2:
        return med, float("nan"), float("nan")
    low, high = t_interval([math.log(r) for r in ratios], 0.95)
    return med, math.exp(low), math.exp(high)


# ------------------------------------------------------------------------------ paired t-tests
#
# The report's tests: at 5 paired seeds a percentile bootstrap gives p = 0 whenever
# all five differences share a sign, although no exact test can go below 1/16 there. The
# report therefore uses the paired t-test (scipy.stats), its t interval, and Schuirmann's
# two one-sided tests (TOST) for equivalence within a declared margin, with Holm's step-down
# over every comparison of the report (one family for "different", one for "equivalent").


@dataclass
class PairedTest:
    """One paired comparison, A minus B, tested against 0 and for equivalence (|d| < margin)."""

    a: str
    b: str
    diffs: list[float]
    margin: float  # equivalence margin, in the units of the differences
    key: str = ""  # what the caller groups by (e.g. the workload)
    mean: float = math.nan
    sd: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    level: float = math.nan  # the Holm level of the interval
    p: float = math.nan  # two-sided paired t-test of mean 0
    p_equiv: float = math.nan  # TOST: the larger of the two one-sided p-values
    different: bool = False  # rejected "mean = 0" after Holm, and the interval excludes 0
    equivalent: bool = False  # rejected "|mean| >= margin" after Holm (its own family)

    @property
    def n(self) -> int:
        return len(self.diffs)


def _t_parts(diffs: Sequence[float]) -> tuple[float, float, int]:
    data = np.asarray(diffs, dtype=np.float64)
    return float(data.mean()), float(data.std(ddof=1)), len(data) - 1


def paired_t_p(diffs: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test of "mean difference = 0"."""
    from scipy import stats as st

    mean, sd, _ = _t_parts(diffs)
    if sd == 0:  # every pair differs by the same amount: t is infinite (or 0/0)
        return 0.0 if mean != 0 else 1.0
    return float(st.ttest_1samp(np.asarray(diffs, dtype=np.float64), 0.0).pvalue)


def tost_p(diffs: Sequence[float], margin: float) -> float:
    """p-value of TOST for equivalence: H0 ``|mean| >= margin`` (the larger one-sided p)."""
    from scipy import stats as st

    mean, sd, df = _t_parts(diffs)
    if sd == 0:
        return 0.0 if abs(mean) < margin else 1.0
    se = sd / math.sqrt(len(diffs))
    p_low = float(st.t.sf((mean + margin) / se, df))  # H0: mean <= -margin
    p_high = float(st.t.cdf((mean - margin) / se, df))  # H0: mean >= +margin
    return max(p_low, p_high)


def t_interval(diffs: Sequence[float], level: float) -> tuple[float, float]:
    """The ``level`` t interval of the mean difference."""
    from scipy import stats as st

    mean, sd, df = _t_parts(diffs)
    half = float(st.t.ppf(1 - (1 - level) / 2, df)) * sd / math.sqrt(len(diffs))
    return mean - half, mean + half


@dataclass
class WidthTrend:
    """How one declared comparison (A minus B) changes with width on a ladder: ``small`` and
    ``large`` are its per-seed differences at the smallest and largest width. Different
    models, so unpaired: Welch's t-test of ``mean(large) − mean(small)``, tested in the same
    Holm family as the paired tests of the report."""

    base: str
    a: str
    b: str
    small_width: int
    large_width: int
    small: list[float]
    large: list[float]
    delta: float = math.nan  # mean(large) − mean(small)
    lo: float = math.nan
    hi: float = math.nan
    level: float = math.nan
    p: float = math.nan
    different: bool = False

    @property
    def usable(self) -> bool:
        return min(len(self.small), len(self.large)) >= MIN_PAIRS

    @property
    def toward_zero(self) -> bool:
        """The difference at the largest width is smaller in size than at the smallest."""
        return abs(float(np.mean(self.large))) < abs(float(np.mean(self.small)))


def welch(large: Sequence[float], small: Sequence[float], level: float
          ) -> tuple[float, float, float, float]:  # fmt: skip
    """(difference of means, its ``level`` Welch interval, two-sided p) of large − small."""
    from scipy import stats as st

    a, b = np.asarray(large, dtype=np.float64), np.asarray(small, dtype=np.float64)
    delta = float(a.mean() - b.mean())
    if a.std(ddof=1) == 0 and b.std(ddof=1) == 0:  # no spread at all: t is infinite (or 0/0)
        return delta, delta, delta, (0.0 if delta != 0 else 1.0)
    res = st.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence_level=level)
    return delta, float(ci.low), float(ci.high), float(res.pvalue)


def holm_tests(tests: list[PairedTest], alpha: float = 0.05,
               trends: Sequence[WidthTrend] = ()) -> list[PairedTest]:  # fmt: skip
    """Fill in every test with at least :data:`MIN_PAIRS` pairs: t-test and TOST p-values,
    Holm over all of them and the usable width trends together (``different``; the interval
    at its Holm level) and, separately, Holm over the equivalence tests (``equivalent``).
    Others stay undecided."""
    usable = [t for t in tests if t.n >= MIN_PAIRS]
    ok_trends = [t for t in trends if t.usable]
    for t in usable:
        t.mean, t.sd, _ = _t_parts(t.diffs)
        t.p = paired_t_p(t.diffs)
        t.p_equiv = tost_p(t.diffs, t.margin)
    for w in ok_trends:
        w.p = welch(w.large, w.small, 1 - alpha)[3]
    rejected, levels = holm([t.p for t in usable] + [w.p for w in ok_trends], alpha)
    equivalent, _ = holm([t.p_equiv for t in usable], alpha)
    k = len(usable)
    for t, rej, level, eq in zip(usable, rejected[:k], levels[:k], equivalent, strict=True):
        t.level = level
        t.lo, t.hi = t_interval(t.diffs, level)
        t.different = rej and (t.lo > 0 or t.hi < 0)
        t.equivalent = eq
    for w, rej, level in zip(ok_trends, rejected[k:], levels[k:], strict=True):
        w.level = level
        w.delta, w.lo, w.hi, _ = welch(w.large, w.small, level)
        w.different = rej and (w.lo > 0 or w.hi < 0)
    return tests
