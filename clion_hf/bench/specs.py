"""What ``clion-bench`` runs: optimizer specs, workloads, presets and the declared search.

An optimizer spec is ``NAME[:KEY=VALUE,...]``, e.g. ``adamw``, ``lion:caution=true``,
``clion:mode=element,nu=1e-4``. Keys are checked here, at parse time, so a typo fails
before any training starts. ``lr=`` pins the learning rate (no lr search); the other
keys are the optimizer's own options (``nu=`` is the centre of CLion's ν grid).

The protocol (AlgoPerf's external tuning): every optimizer gets a declared search space and
the same trial budget.

* Learning rate: a grid of ``lr_points`` values 2x apart around a centre (AdamW: the
  workload's AdamW lr; Lion and CLion ``element``/``soft``: the Lion lr, about AdamW/3 as
  the Lion paper advises; CLion ``global``/``tensor``: an SGD-sized lr, since with
  ``min |c|`` around 1e-18 they never take the sign branch and are momentum SGD). When
  the best point is on an edge, the grid is extended by one more 2x step in that
  direction, up to ``lr_extend`` points; an optimum still on an edge makes the row
  inconclusive.
* One second hyper-parameter at the chosen lr (coordinate search), on a 3-point grid with
  one extension: CLion ``element``/``soft`` tune ν (×1/10, ×1, ×10 around ``nu``); AdamW,
  Lion and CLion ``global``/``tensor`` tune the weight-decay scale ``s`` (0, 1/4, 1; then
  4 if 1 is best; 0, no decay, is a bound of the space, not an edge to extend).
* Weight decay is coupled to the lr (the Lion paper's advice: keep lr·wd, not wd, equal):
  ``wd = s · K / lr`` with ``K`` chosen so that at ``s = 1`` decay alone removes
  ``wd_removal`` (10%) of a weight over the run (linear schedule: the lrs sum to
  lr·steps/2, so ``K = 2·ln(1/(1 - 0.1)) / steps``): at the usual wd = 0.01 a run of a
  few hundred steps removes well under 1%, i.e. weight decay would be off.
* Each trial (one configuration) runs on every tuning seed; configurations are compared
  on the mean final validation metric (validation loss for language models), a trial
  with a diverged or failed seed is out. The chosen configuration then runs on fresh
  final seeds (same seeds for every optimizer: same init, same data order), which the
  report compares, paired, on the held-out test split.

The presets ``cpu-ladder``, ``gpu-ladder`` and ``gpu`` declare ``tuned``
instead: one local search per row over the same dimensions for every optimizer (lr, beta2
and the weight-decay scale; ν too for CLion element/soft) that spends exactly
``trials_per_row`` configurations in every row (:meth:`Preset.search`,
:meth:`clion_hf.bench.protocol.Matrix.plan_row`). The scale ladder's rungs are workloads
``NAME@WIDTH`` (see :func:`rung_args`).

Hand-written: these are declarations (data), checked by :mod:`clion_hf.optim.validate`'s
parsers and read by :func:`clion_hf.integrations.transformers.key_values`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from clion_hf.integrations.transformers import OptimArgsError, key_values
from clion_hf.optim.validate import MODES as MODES  # report.py imports it from here
from clion_hf.optim.validate import parse_option


class SpecError(ValueError):
    """A bad optimizer spec, workload, preset or option value (one-line message)."""


# ------------------------------------------------------------------------------ values


def fmt_float(value: float) -> str:
    """Short, stable text for a float: ``1e-4``, ``0.003``, ``0.9``, ``2``."""
    if value == 0 or not math.isfinite(value):
        return repr(float(value))
    if 1e-3 <= abs(value) < 1e4:
        text = f"{value:.6g}"
    else:
        mantissa, exponent = f"{value:.5e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        text = f"{mantissa}e{int(exponent)}"
    return text


def round_sig(value: float, digits: int = 3) -> float:
    """Round to ``digits`` significant digits, so grid points (and run ids) stay readable."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def _option(name: str, check: Callable[[Any], Any] | None = None) -> Callable[[str], Any]:
    """A spec option's parser: clion_hf.optim.validate's, with ``check`` added."""

    def parse(text: str) -> Any:
        value = parse_option(name, text)
        if check is not None:
            check(value)
        return value

    return parse


def _pinned_lr(value: float) -> None:
    if value <= 0:  # a pinned lr of 0 would train nothing
        raise SpecError(f"invalid lr={value!r}: must be > 0")


_positive_lr = _option("lr", _pinned_lr)
_beta1, _beta2 = _option("beta1"), _option("beta2")


# ------------------------------------------------------------------------------ optimizers

# Per optimizer: option -> (parser, default). Order here is the canonical order in labels.
# ``lr`` is the runner's (pins the lr); every other key goes to the optimizer.
OPTION_KEYS: dict[str, dict[str, tuple[Callable[[str], Any], Any]]] = {
    "adamw": {"beta1": (_beta1, 0.9), "beta2": (_beta2, 0.999), "lr": (_positive_lr, None)},
    "lion": {
        "caution": (_option("caution"), False),
        "track_stats": (_option("track_stats"), False),  # tau_t, for the gen-gap study
        "beta1": (_beta1, 0.9),
        "beta2": (_beta2, 0.99),
        "lr": (_positive_lr, None),
    },
    "clion": {
        "mode": (_option("mode"), "global"),
        "nu": (_option("nu"), 1e-4),
        "beta1": (_beta1, 0.9),
        "beta2": (_beta2, 0.99),
        "lr": (_positive_lr, None),
    },
}
OPTIMIZERS = tuple(OPTION_KEYS)
# transformers' ``--optim`` name for each optimizer
OPTIM_NAMES = {"adamw": "adamw_torch", "lion": "lion", "clion": "clion"}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return fmt_float(value)
    return str(value)


@dataclass(frozen=True)
class OptimizerSpec:
    """A parsed optimizer spec; ``options`` holds only non-default values, canonically ordered
    (so ``clion``, ``clion:mode=global`` and ``clion:nu=0.0001`` are the same spec)."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def get(self, key: str) -> Any:
        """An option's value, its default when not given."""
        return dict(self.options).get(key, OPTION_KEYS[self.name][key][1])

    @property
    def label(self) -> str:
        """Canonical spec text, e.g. ``clion:mode=element``; stable across runs."""
        if not self.options:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_text(v)}" for k, v in self.options)

    def with_option(self, key: str, value: Any) -> OptimizerSpec:
        """The same spec with ``key`` set to ``value`` (canonical: defaults are dropped)."""
        values = {**dict(self.options), key: value}
        allowed = OPTION_KEYS[self.name]
        return OptimizerSpec(self.name, tuple(
            (k, values[k]) for k in allowed if k in values and values[k] != allowed[k][1]
        ))  # fmt: skip

    @property
    def pinned_lr(self) -> float | None:
        return self.get("lr")

    @property
    def sign_test_is_global(self) -> bool:
        """CLion modes whose sign test takes one min over many coordinates (see module doc)."""
        return self.name == "clion" and self.get("mode") in ("global", "tensor")

    def recipe_args(self) -> list[str]:
        """The recipe's ``--optim`` (and ``--optim_args`` / AdamW beta) flags."""
        args = ["--optim", OPTIM_NAMES[self.name]]
        given = {k: v for k, v in self.options if k != "lr"}
        if self.name == "adamw":
            for key, flag in (("beta1", "--adam_beta1"), ("beta2", "--adam_beta2")):
                if key in given:
                    args += [flag, _text(given[key])]
            return args
        if self.name == "clion":
            # mode and nu always explicit: the run must not depend on the integration's defaults
            given = {"mode": self.get("mode"), "nu": self.get("nu"), **given}
        if given:
            args += ["--optim_args", ",".join(f"{k}={_text(v)}" for k, v in given.items())]
        return args


def parse_optimizer(text: str) -> OptimizerSpec:
    """Parse ``NAME[:KEY=VALUE,...]``; raises :class:`SpecError` with a one-line message."""
    name, _, rest = text.strip().partition(":")
    name = name.strip().lower()
    if name not in OPTION_KEYS:
        raise SpecError(f"unknown optimizer {name!r} in {text!r}; allowed: {', '.join(OPTIMIZERS)}")
    allowed = OPTION_KEYS[name]
    values: dict[str, Any] = {}
    try:
        given = key_values(rest, f"optimizer {text.strip()!r}")
    except OptimArgsError as err:
        raise SpecError(str(err)) from None
    for key, raw in given.items():
        if key not in allowed:
            raise SpecError(
                f"unknown option {key!r} for {name} in {text!r}; allowed: {', '.join(allowed)}"
            )
        try:
            values[key] = allowed[key][0](raw)
        except ValueError as err:  # SpecError too
            raise SpecError(f"{name} option {key}: {err}") from None
    options = tuple(
        (key, values[key]) for key in allowed if key in values and values[key] != allowed[key][1]
    )
    return OptimizerSpec(name, options)


def spec_from_recipe_args(args: Iterable[str]) -> OptimizerSpec | None:
    """The spec a run's recipe flags give (the inverse of :meth:`OptimizerSpec.recipe_args`,
    less a pinned lr); None when the flags name no optimizer of ours. A results row reads its
    effective beta2 and ν here, whether the spec, a tuned ν or a local search set them."""
    flags: dict[str, str] = {}
    items = list(args)
    for flag, value in zip(items, items[1:], strict=False):
        if flag.startswith("--"):
            flags[flag] = value
    names = {v: k for k, v in OPTIM_NAMES.items()}
    name = names.get(flags.get("--optim", ""))
    if name is None:
        return None
    if name == "adamw":
        betas = (("beta1", "--adam_beta1"), ("beta2", "--adam_beta2"))
        given = [f"{k}={flags[f]}" for k, f in betas if f in flags]
        return parse_optimizer(f"adamw:{','.join(given)}" if given else "adamw")
    options = flags.get("--optim_args")
    return parse_optimizer(f"{name}:{options}" if options else name)


def parse_optimizers(text: str) -> list[OptimizerSpec]:
    """A list of specs separated by ``;`` or by ``,`` before a new optimizer name.

    ``adamw,lion,clion:mode=element,nu=1e-4`` is three specs: a comma starts a new spec only
    when what follows is an optimizer name (``nu=1e-4`` is not).
    """
    pieces: list[str] = []
    for chunk in text.split(";"):
        for item in chunk.split(","):
            head = item.strip().split(":")[0].strip().lower()
            if not pieces or head in OPTION_KEYS or "=" not in item:
                pieces.append(item)
            else:
                pieces[-1] += "," + item
    specs = [parse_optimizer(p) for p in pieces if p.strip()]
    if not specs:
        raise SpecError(f"no optimizer given in {text!r}; allowed: {', '.join(OPTIMIZERS)}")
    labels = [s.label for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise SpecError(f"optimizer given twice: {', '.join(dupes)}")
    return specs


# ------------------------------------------------------------------------------ workloads


@dataclass(frozen=True)
class Workload:
    """One recipe and the validation metric it is judged on."""

    name: str
    recipe: str  # file in recipes/
    family: str  # gpt2 / bert / vit
    metric: str  # final metric in all_results.json
    greater_is_better: bool
    curve_key: str  # the metric's key in the eval entries of log_history
    finetune: bool
    width: int = 0  # a rung of the scale ladder: the model's width; 0: the recipe's default
    base: str = ""  # a rung's workload at the default size (gpt2-pretrain for gpt2-pretrain@256)

    def curve_to_metric(self, value: float) -> float:
        """Map a ``curve_key`` value to the metric (``perplexity = exp(eval_loss)``)."""
        if self.metric == "perplexity":
            return math.exp(value) if value < 700 else math.inf
        return value


def _lm(name: str, recipe: str, family: str, finetune: bool) -> Workload:
    return Workload(name, recipe, family, "perplexity", False, "eval_loss", finetune)


def _cls(name: str, recipe: str, family: str, finetune: bool) -> Workload:
    return Workload(name, recipe, family, "eval_accuracy", True, "eval_accuracy", finetune)


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        _lm("gpt2-pretrain", "gpt2_pretrain.py", "gpt2", False),
        _lm("gpt2-finetune", "gpt2_finetune.py", "gpt2", True),
        _lm("bert-pretrain", "bert_pretrain.py", "bert", False),
        _cls("bert-finetune", "bert_finetune.py", "bert", True),
        _cls("vit-pretrain", "vit_pretrain.py", "vit", False),
        _cls("vit-finetune", "vit_finetune.py", "vit", True),
    )
}


# The scale ladder: a pretraining workload at another model width is a workload of
# its own, ``NAME@WIDTH`` (gpt2-pretrain@256), run with the model preset ``FAMILY-wWIDTH``
# (clion_hf/workloads/models.py: the tiny preset's 2 layers, vocabulary and images at that
# width; ``@64`` is the tiny model itself) through the recipes' own ``--config_name`` flag.
LADDER_BASES = ("gpt2-pretrain", "bert-pretrain", "vit-pretrain")
LADDER_WIDTHS = (64, 128, 256, 512, 768)  # models.LADDER_WIDTHS (bench does not import it)
BASE_WORKLOADS = tuple(WORKLOADS)  # the six recipes at their default sizes


def rung_name(base: str, width: int) -> str:
    return f"{base}@{width}"


def rung_args(name: str) -> tuple[str, ...]:
    """The recipe flags that select a rung's model (``()`` for a workload that is none)."""
    w = WORKLOADS[name]
    return ("--config_name", f"{w.family}-w{w.width}") if w.width else ()


for _base in LADDER_BASES:
    for _width in LADDER_WIDTHS:
        _w = WORKLOADS[_base]
        WORKLOADS[rung_name(_base, _width)] = Workload(
            rung_name(_base, _width), _w.recipe, _w.family, _w.metric, _w.greater_is_better,
            _w.curve_key, _w.finetune, _width, _base)  # fmt: skip


def parse_workloads(text: str, in_preset: Iterable[str] | None = None) -> list[str]:
    """Workload names from a comma list; with ``in_preset``, each must be one of those."""
    names = [w.strip() for w in text.split(",")]
    if not any(names):
        raise SpecError(f"no workload given in {text!r}; allowed: {', '.join(WORKLOADS)}")
    if "" in names:
        raise SpecError(f"empty workload name in {text!r}")
    for name in names:
        if name not in WORKLOADS:
            raise SpecError(f"unknown workload {name!r}; allowed: {', '.join(WORKLOADS)}")
        if in_preset is not None and name not in (allowed := list(in_preset)):
            raise SpecError(f"workload {name!r} is not in this preset; allowed: "
                            f"{', '.join(allowed)}")  # fmt: skip
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------------------ the search


@dataclass(frozen=True)
class Cost:
    """Stated cost model of one run, seconds on the preset's device (``--dry_run`` uses it).

    ``startup_s``: process start, imports, data and model set-up, saving; ``step_s``: one
    training step; ``eval_s``: every evaluation of the run together (periodic, final, test).
    """

    startup_s: float
    step_s: float
    eval_s: float

    def run_s(self, steps: int) -> float:
        return self.startup_s + steps * self.step_s + self.eval_s


@dataclass(frozen=True)
class WorkloadSettings:
    """A workload's size, its grid centres and its cost within one preset."""

    max_steps: int
    adamw_lr: float  # centre of AdamW's lr grid
    lion_lr: float  # centre of Lion's and CLion element/soft's grids
    sgd_lr: float  # centre of CLion global/tensor's grid (momentum-SGD sized)
    cost: Cost
    extra_args: tuple[str, ...] = ()
    # the preset's optimizers this workload runs (labels); (): all of them. The ladder's
    # larger rungs run only the ones its primary comparisons need.
    optimizers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Dim:
    """One tuned dimension of a local search: its values are indexed by an integer ``k``,
    ``k = 0`` is where the search starts, and ``lo``/``hi`` (None: unbounded) are bounds of
    the declared space (the end of a range that makes sense), not edges of a grid.

    ``ladder`` given: the values are ``ladder[start + k]`` (the ends are the bounds);
    otherwise ``centre · factor**k``, with ``floor`` (e.g. 0, no decay) at ``k = lo``.
    """

    name: str  # lr, beta2, wd_scale or nu
    centre: float = 1.0
    factor: float = 2.0
    lo: int | None = None
    hi: int | None = None
    ladder: tuple[float, ...] = ()
    start: int = 0
    floor: float | None = None

    def value(self, k: int) -> float:
        if self.ladder:
            return self.ladder[self.start + k]
        if self.floor is not None and k == self.lo:
            return self.floor
        return round_sig(self.centre * self.factor**k)

    def in_bounds(self, k: int) -> bool:
        return (self.lo is None or k >= self.lo) and (self.hi is None or k <= self.hi)


def ladder_dim(name: str, values: tuple[float, ...], default: float) -> Dim:
    """A bounded dimension over ``values`` (ascending), starting at ``default``."""
    if default not in values:
        raise SpecError(f"{name}={default!r} is not in the declared values {list(values)}")
    start = values.index(default)
    return Dim(name, lo=-start, hi=len(values) - 1 - start, ladder=values, start=start)


@dataclass(frozen=True)
class Search:
    """The declared search of one optimizer on one workload (see the module doc).

    Two kinds. The coordinate search (``dims`` empty; the presets up to cpu-2026-11-29):
    an lr grid extended on an edge, then one second hyper-parameter at the chosen lr, with a
    per-row cap but a data-dependent spend. The local search (``dims`` given):
    every row spends exactly ``trials`` configurations over the same declared dimensions
    (lr, beta2 and the weight-decay scale for everyone, ν too for CLion element/soft); see
    :meth:`clion_hf.bench.protocol.Matrix.plan_row`.
    """

    lrs: tuple[float, ...]  # initial grid, ascending
    lr_extend: int  # extra lr points allowed beyond the grid's edges, in total
    second: str | None  # "wd_scale", "nu" or None
    second_values: tuple[float, ...] = ()  # ascending, includes second_default
    second_default: float = 1.0
    second_extend: int = 0
    second_factor: float = 1.0  # spacing of an extension of the second grid
    second_floor: float | None = None  # a natural bound (no decay): never extended past
    dims: tuple[Dim, ...] = ()  # the local search's dimensions (lr first); () = coordinate
    trials: int = 0  # the local search's spend: exactly this many configurations per row
    # the local search tries a value on each side of the best one in every dimension before
    # following edges (so no dimension, ν included, goes untried when the spend runs out)
    probe: bool = False

    @property
    def local(self) -> bool:
        return bool(self.dims)

    @property
    def budget(self) -> int:
        """The most trials (configurations) this search may use."""
        if self.local:
            return self.trials
        extra = len(self.second_values) - 1 + self.second_extend if self.second else 0
        return len(self.lrs) + self.lr_extend + extra

    def describe(self) -> str:
        """The search in a line, as ``clion-bench run --dry_run`` prints it."""
        if self.local:
            dims = "; ".join(
                f"{d.name} " + ", ".join(fmt_float(d.value(k)) for k in range(-1, 2)
                                         if d.in_bounds(k))
                for d in self.dims)  # fmt: skip
            first = ", every dimension bracketed first" if self.probe else ""
            return (f"the same {self.trials} trials for every row{first}, from the lrs "
                    f"{list(self.lrs)} out along {', '.join(d.name for d in self.dims)} "
                    f"(around the start: {dims})")  # fmt: skip
        second = (f"; then {self.second} in {list(self.second_values)} "
                  f"(+{self.second_extend})" if self.second else "")  # fmt: skip
        return (f"lr {list(self.lrs)} (+{self.lr_extend} on an edge){second}; "
                f"budget {self.budget} trials")  # fmt: skip

    @property
    def min_trials(self) -> int:
        if self.local:
            return self.trials  # the spend is fixed
        return len(self.lrs) + (len(self.second_values) - 1 if self.second else 0)


LR_STEP = 2.0  # lr grids and their extensions are 2x apart
WD_SCALES = (0.0, 0.25, 1.0)  # 0: no decay, the natural lower bound; extended upwards x4
NU_FACTORS = (0.1, 1.0, 10.0)


# The local search's dimensions, in the order it explores them around the best point.
TUNED_DIMS = ("lr", "beta2", "wd_scale", "nu")
# beta2 values searched (their ends are the bounds of the space). Sign methods: Lion's
# 0.99 and below (Lion's authors use 0.98-0.99; at width 64 0.95 is worth ~0.8 nats);
# AdamW: around its 0.999, down to 0.95 (the usual LM choice).
SIGN_BETA2 = (0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)
ADAMW_BETA2 = (0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999)


def lr_grid(centre: float, points: int) -> tuple[float, ...]:
    """``points`` values ``LR_STEP`` apart, centred (geometrically) on ``centre``."""
    return tuple(round_sig(centre * LR_STEP ** (k - (points - 1) / 2)) for k in range(points))


# The declared primary comparisons: is Lion worth it over AdamW, does CLion's
# practical mode change Lion, and what does the paper's rule amount to against AdamW.
PRIMARY = (("lion", "adamw"), ("clion:mode=element", "lion"), ("clion", "adamw"))
# Wen et al. 2025 call tuned optimizers within ~0.02 validation loss "the same"; 1 pp of
# accuracy is the classification counterpart.
MARGINS = {"perplexity": 0.02, "eval_accuracy": 0.01}

# Flags every run gets: divergence must show in the logs (Trainer otherwise replaces a
# NaN/inf training loss by the running mean), and per-step progress bars would bloat logs.
COMMON_RECIPE_ARGS = ("--logging_nan_inf_filter", "false", "--disable_tqdm", "true",
                      "--save_strategy", "no", "--report_to", "none")  # fmt: skip


@dataclass(frozen=True)
class Preset:
    """A named matrix: workloads, optimizers, seeds, the search and where it runs."""

    name: str
    description: str
    accelerate_config: str  # file stem in recipes/accelerate_configs/
    optimizers: tuple[str, ...]
    tuning_seeds: tuple[int, ...]
    final_seeds: tuple[int, ...]
    workloads: dict[str, WorkloadSettings]
    lr_points: int = 3
    lr_extend: int = 3
    tune_second: bool = True
    second_extend: int = 1
    wd_removal: float = 0.1  # fraction of a weight that decay alone removes at scale 1
    jobs: int = 1
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cost_note: str = ""  # where the cost model's numbers come from
    # The comparisons the report tests (A, B), declared before running; Holm runs over all of
    # them across the report's workloads. Other pairs are shown as estimates, untested.
    primary: tuple[tuple[str, str], ...] = PRIMARY
    # Equivalence margins of the TOST, per metric: perplexity rows on test loss (nats, so
    # 0.02 = a perplexity ratio within x1.02), accuracy rows in accuracy (0.01 = 1 pp).
    equivalence_margin: dict[str, float] = field(default_factory=lambda: dict(MARGINS))
    comparison_preset: str = ""  # a check's report names this preset for a comparison
    # The local search: the dimensions every optimizer tunes where they apply
    # (of TUNED_DIMS; ν only for CLion element/soft) and the trials every row spends.
    # Empty: the coordinate search of the presets before it (their reports stay readable).
    tuned: tuple[str, ...] = ()
    trials_per_row: int = 0
    probe_first: bool = False  # see Search.probe

    def settings(self, workload: str, max_steps: int | None = None) -> WorkloadSettings:
        ws = self.workloads[workload]
        if max_steps is not None:
            ws = WorkloadSettings(max_steps, ws.adamw_lr, ws.lion_lr, ws.sgd_lr, ws.cost,
                                  ws.extra_args, ws.optimizers)  # fmt: skip
        return ws

    def search(self, spec: OptimizerSpec, ws: WorkloadSettings) -> Search:
        """The declared search of ``spec`` on a workload with settings ``ws``."""
        if spec.pinned_lr is not None:
            lrs, extend = (spec.pinned_lr,), 0
        else:
            lrs, extend = lr_grid(lr_centre(spec, ws), self.lr_points), self.lr_extend
        if self.tuned:
            return self._local_search(spec, ws, lrs)
        if not self.tune_second:
            return Search(lrs, extend, None)
        if spec.name == "clion" and spec.get("mode") in ("element", "soft"):
            nu = spec.get("nu")
            values = tuple(round_sig(nu * f) for f in NU_FACTORS)
            return Search(lrs, extend, "nu", values, nu, self.second_extend, 10.0)
        return Search(lrs, extend, "wd_scale", WD_SCALES, 1.0, self.second_extend, 4.0, 0.0)

    def _local_search(self, spec: OptimizerSpec, ws: WorkloadSettings,
                      lrs: tuple[float, ...]) -> Search:  # fmt: skip
        unknown = [d for d in self.tuned if d not in TUNED_DIMS]
        if unknown or "lr" not in self.tuned:
            raise SpecError(f"preset {self.name}: tuned dimensions {list(self.tuned)} must "
                            f"include lr and come from {', '.join(TUNED_DIMS)}")  # fmt: skip
        if self.trials_per_row < len(lrs):
            raise SpecError(f"preset {self.name}: trials_per_row={self.trials_per_row} is "
                            f"fewer than the {len(lrs)} points of the first lr grid")  # fmt: skip
        pinned = spec.pinned_lr is not None
        dims = [Dim("lr", lrs[0] if pinned else lr_centre(spec, ws), LR_STEP,
                    0 if pinned else None, 0 if pinned else None)]  # fmt: skip
        # a beta2 the spec gives is pinned, like a given lr
        if "beta2" in self.tuned and "beta2" not in dict(spec.options):
            values = ADAMW_BETA2 if spec.name == "adamw" else SIGN_BETA2
            dims.append(ladder_dim("beta2", values, spec.get("beta2")))
        if "wd_scale" in self.tuned:
            dims.append(Dim("wd_scale", 1.0, 4.0, lo=-2, floor=0.0))  # 0, 1/4, 1, 4, 16, ...
        if "nu" in self.tuned and spec.name == "clion" and spec.get("mode") in ("element", "soft"):
            dims.append(Dim("nu", spec.get("nu"), 10.0))
        return Search(lrs, 0, None, dims=tuple(dims), trials=self.trials_per_row,
                      probe=self.probe_first)

    def coupling(self, ws: WorkloadSettings) -> float:
        """``K = lr · wd`` at weight-decay scale 1 (see the module doc)."""
        return 2 * math.log(1 / (1 - self.wd_removal)) / ws.max_steps


def lr_centre(spec: OptimizerSpec, ws: WorkloadSettings) -> float:
    if spec.name == "adamw":
        return ws.adamw_lr
    if spec.sign_test_is_global:
        return ws.sgd_lr
    return ws.lion_lr


def weight_decay_for(lr: float, scale: float, coupling: float) -> float:
    """``wd = scale · K / lr``: lr·wd is the same for every lr of a workload."""
    return round_sig(scale * coupling / lr)


def removal_fraction(lr: float, wd: float, steps: int) -> float:
    """Fraction of a weight that decoupled decay alone removes over a linear-schedule run."""
    return 1 - math.exp(-wd * lr * steps / 2)


# ------------------------------------------------------------------------------ presets

ALL_WORKLOADS = BASE_WORKLOADS
CPU_OPTIMIZERS = (
    "adamw",
    "lion",
    "clion",  # mode=global: the paper's definition
    "clion:mode=tensor",
    "clion:mode=element",
    "clion:mode=soft",
)

# The protocol of the cpu-ladder, gpu and gpu-ladder presets.
LADDER_OPTIMIZERS = ("adamw", "lion", "clion", "clion:mode=element")  # the larger rungs
LADDER_TUNED = TUNED_DIMS
# Trials per row: 3 lrs and both neighbours in beta2, weight-decay scale and ν is 9, the
# fewest for which CLion element/soft can end with no optimum on an edge; the others spend
# the same 9 (two more points, further out or around a better one).
LADDER_TRIALS = 9
# cpu-ladder's first run (docs/benchmarks/ladder-cpu-2026-12-06) showed that 9 trials
# spent following edges in order (lr, beta2, weight decay, then ν) left ν at its start in
# five of six CLion element rows, and every element verdict inconclusive. The protocol
# since (gpu, gpu-ladder, cpu-ladder-v2): first a value on each side of the best one in
# every dimension (3 lrs + 2 per other dimension: 9 for element/soft, 7 for the others),
# then 3 more to follow edges or look closer: 12 per row for everyone.
PROBE_TRIALS = 12
LADDER_FINAL_SEEDS = tuple(range(100, 110))  # 10 paired final seeds

# Per workload of the offline presets: steps, grid centres (from a first sweep of these
# tiny models: Lion's optimum about AdamW/3, momentum SGD's around 0.2) and cost.
_OFFLINE = {
    "gpt2-pretrain": (200, 3e-3, 1e-3, 0.2),
    "gpt2-finetune": (120, 4e-3, 1.5e-3, 0.2),
    "bert-pretrain": (200, 3e-3, 1e-3, 0.2),
    "bert-finetune": (120, 2e-3, 1e-3, 0.2),
    "vit-pretrain": (200, 1e-3, 4e-4, 0.2),
    "vit-finetune": (120, 4e-3, 1e-3, 0.2),
}
# CPU seconds per run measured in docs/benchmarks/cpu-2026-11-29 (median over its runs of
# each workload, split into set-up, steps and evaluations by their share of the run's wall
# time). Two runs at a time on 2 dedicated cores take about this long; a shared host longer.
_CPU_COST = {
    "gpt2-pretrain": Cost(1.0, 0.045, 3.2),
    "gpt2-finetune": Cost(0.7, 0.044, 3.1),
    "bert-pretrain": Cost(1.0, 0.042, 2.7),
    "bert-finetune": Cost(0.8, 0.071, 4.4),
    "vit-pretrain": Cost(2.5, 0.013, 0.8),
    "vit-finetune": Cost(2.1, 0.014, 0.8),
}
_CPU_NOTE = ("CPU seconds per run measured in docs/benchmarks/cpu-2026-11-29, on 2 dedicated "
             "cores; a shared host takes longer")  # fmt: skip


# Validation rows each evaluation uses (a random sample, the same for every run; the
# test split is used whole). Images: all of them (225).
_OFFLINE_EVAL = {"gpt2-pretrain": 256, "gpt2-finetune": 256, "bert-pretrain": 256,
                 "bert-finetune": 512}  # fmt: skip


def _offline(steps: int | None = None, cost: dict[str, Cost] | None = None
             ) -> dict[str, WorkloadSettings]:  # fmt: skip
    out = {}
    for w, (n, a, lion, sgd) in _OFFLINE.items():
        args = ("--max_eval_samples", str(_OFFLINE_EVAL[w])) if w in _OFFLINE_EVAL else ()
        out[w] = WorkloadSettings(steps or n, a, lion, sgd, (cost or _CPU_COST)[w], args)
    return out


PRESETS: dict[str, Preset] = {}

PRESETS["smoke"] = Preset(
    name="smoke",
    description="all six workloads x adamw/lion/clion global (the paper's rule)/clion element, "
    "one lr each, 1 tuning + 1 final seed, offline, CPU: checks that everything runs, "
    "compares nothing",
    accelerate_config="cpu",
    optimizers=("adamw", "lion", "clion", "clion:mode=element"),
    tuning_seeds=(0,),
    final_seeds=(100,),
    workloads=_offline(50),
    lr_points=1,
    lr_extend=0,
    tune_second=False,
    # tiny models: a run is mostly single-threaded set-up; on 2 cores two runs with one
    # torch thread each finish the matrix ~2x faster than one run with two threads
    jobs=2,
    # a check, not a measurement: a sample of each test split is enough
    extra_args=("--eval_steps", "0.5", "--logging_steps", "0.1", "--max_test_samples", "256"),
    cost_note=_CPU_NOTE,
    comparison_preset="cpu",
)

PRESETS["cpu"] = Preset(
    name="cpu",
    description="offline, CPU: AdamW, Lion and the four CLion modes on six tiny workloads; "
    "lr grid 2x apart with edge extension, wd scale or ν, 2 tuning seeds, 5 final seeds",
    accelerate_config="cpu",
    optimizers=CPU_OPTIMIZERS,
    tuning_seeds=(0, 1),
    final_seeds=(100, 101, 102, 103, 104),
    workloads=_offline(),
    jobs=2,  # see smoke
    extra_args=("--eval_steps", "0.125", "--logging_steps", "0.05"),
    cost_note=_CPU_NOTE,
)

# Online defaults: the Hub models and datasets of the table (a GPU and network needed).
_GPU = ("--bf16", "true", "--dataloader_num_workers", "4")
_GPU_NOTE = ("a rough guess for one H200, not a measurement: 0.06-0.12 s per step for the "
             "86M-124M models at these batch sizes in bf16, start-up and evaluation per "
             "workload as listed")  # fmt: skip


def _online(steps: int, adamw: float, lion: float, cost: Cost, *args: str) -> WorkloadSettings:
    return WorkloadSettings(steps, adamw, lion, 0.2, cost, tuple(args))


PRESETS["gpu"] = Preset(
    name="gpu",
    description="online defaults (Hub models and datasets), one GPU, the cpu-ladder "
    "preset's protocol: the same 12 trials per row over lr, beta2, weight-decay scale (and "
    "ν for element/soft), every dimension's neighbours tried first, 2 tuning seeds, 10 final "
    "seeds",
    accelerate_config="single_gpu",
    optimizers=CPU_OPTIMIZERS,
    tuning_seeds=(0, 1),
    final_seeds=LADDER_FINAL_SEEDS,
    tuned=LADDER_TUNED,
    trials_per_row=PROBE_TRIALS,
    probe_first=True,
    workloads={
        "gpt2-pretrain": _online(
            5000, 6e-4, 2e-4, Cost(60, 0.12, 60),
            "--dataset_name", "wikitext", "--dataset_config_name", "wikitext-103-raw-v1",
            "--block_size", "1024", "--per_device_train_batch_size", "16",
            "--per_device_eval_batch_size", "16", "--max_eval_samples", "512",
            "--warmup_steps", "500",
        ),
        "gpt2-finetune": _online(
            1000, 5e-5, 1.5e-5, Cost(40, 0.07, 30),
            "--model_name_or_path", "gpt2", "--dataset_name", "wikitext",
            "--dataset_config_name", "wikitext-2-raw-v1", "--block_size", "1024",
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8",
            "--warmup_steps", "100",
        ),
        "bert-pretrain": _online(
            5000, 1e-4, 3e-5, Cost(60, 0.08, 40),
            "--dataset_name", "wikitext", "--dataset_config_name", "wikitext-103-raw-v1",
            "--max_seq_length", "128", "--per_device_train_batch_size", "64",
            "--per_device_eval_batch_size", "64", "--max_eval_samples", "2048",
            "--warmup_steps", "500",
        ),
        "bert-finetune": _online(
            1000, 2e-5, 7e-6, Cost(40, 0.06, 15),
            "--model_name_or_path", "bert-base-uncased", "--dataset_name", "glue",
            "--dataset_config_name", "mrpc", "--max_seq_length", "128",
            "--per_device_train_batch_size", "32", "--warmup_steps", "100",
            # MRPC's test labels are hidden: a labelled test split is carved out of train
            "--test_split_percentage", "10",
        ),
        "vit-pretrain": _online(
            5000, 1e-3, 3e-4, Cost(60, 0.1, 60),
            "--dataset_name", "cifar10", "--per_device_train_batch_size", "128",
            "--per_device_eval_batch_size", "128", "--max_eval_samples", "2000",
            "--warmup_steps", "500",
        ),
        "vit-finetune": _online(
            1000, 1e-4, 3e-5, Cost(40, 0.1, 60),
            "--model_name_or_path", "google/vit-base-patch16-224-in21k",
            "--dataset_name", "cifar10", "--per_device_train_batch_size", "64",
            "--per_device_eval_batch_size", "64", "--max_eval_samples", "2000",
            "--warmup_steps", "100",
        ),
    },  # fmt: skip
    jobs=1,
    extra_args=_GPU + ("--eval_steps", "0.1", "--logging_steps", "0.01"),
    cost_note=_GPU_NOTE,
)

PRESETS["gpu-short"] = Preset(
    name="gpu-short",
    description="offline data on one GPU: adamw/lion/clion global and element, a 3-point "
    "lr grid each (CLion global on its SGD-sized grid), 1 tuning seed, 1 final seed",
    accelerate_config="single_gpu",
    optimizers=("adamw", "lion", "clion", "clion:mode=element"),
    tuning_seeds=(0,),
    final_seeds=(100,),
    workloads=_offline(300, dict.fromkeys(ALL_WORKLOADS, Cost(12.0, 0.01, 2.0))),
    lr_extend=0,
    tune_second=False,
    # tiny models leave an H200 mostly idle; 4 concurrent runs share it
    jobs=4,
    extra_args=("--eval_steps", "0.125", "--logging_steps", "0.05"),
    cost_note="a rough guess for one H200, not a measurement: start-up as on CPU, 10 ms "
    "per step of the tiny models",
)


# ------------------------------------------------------------------------------ the ladder

# Why a ladder: the committed comparison's models (width 64) sit on the unigram plateau, where
# sign methods stall; the ladder repeats the comparison at widths 64, 128 and 256 (CPU) and up
# to 768 (GPU) with long enough runs, so a reader sees whether the ratios move toward 1.


def _ladder_lrs(base: str, width: int) -> tuple[float, float, float]:
    """Grid centres at ``width``: the width-64 centres of the offline presets, scaled by
    (64/width)**0.5 for AdamW and Lion (wider models want smaller steps; the issue's check
    found Lion's optimum at 7.7e-4 at width 128 and 6.7e-4 at 256); momentum SGD's kept."""
    _, adamw, lion, sgd = _OFFLINE[base]
    f = (64 / width) ** 0.5
    return round_sig(adamw * f, 2), round_sig(lion * f, 2), sgd


# Per-run cost of a rung on 2 dedicated cores, two one-thread runs at a time. Measured on
# this machine while other jobs loaded its 2 cores (recipes run alone under nice, one torch
# thread, 5 repeats: two of 40 steps, three of 100 (GPT-2) or 200 (ViT) steps): the per-step
# time varied up to 2.5x between repeats, so each rung's time is its ratio to width 64 in
# the same repeat (the median ratio of the longer repeats, rounded up: GPT-2 x2.9 at 128,
# x5.5 at 256; ViT x1.6 and x3.9) times the width-64 step time of cpu-2026-11-29 on 2
# dedicated cores (0.045 s GPT-2, 0.013 s ViT; the least-loaded repeats here measured
# 0.048 s for GPT-2). Evaluations scale the same way from the width-64 times measured in
# the least-loaded repeats; set-up is the runner's (torch and transformers pre-imported).
# (set-up s, s per step, s per evaluation of the validation sample, s for the test split)
_LADDER_CPU_COST = {
    ("gpt2-pretrain", 64): (3.0, 0.045, 0.17, 1.0),
    ("gpt2-pretrain", 128): (3.0, 0.13, 0.5, 3.3),
    ("gpt2-pretrain", 256): (3.0, 0.25, 0.9, 5.6),
    ("vit-pretrain", 64): (3.0, 0.013, 0.1, 0.1),
    ("vit-pretrain", 128): (3.0, 0.021, 0.13, 0.11),
    ("vit-pretrain", 256): (3.0, 0.051, 0.27, 0.29),
}
# The estimate above put cpu-ladder at 6 h; its runs took 4.2 h (8.45 h of CPU time). So each
# rung's steps and evaluations are scaled to the median CPU seconds of its 600-step runs in
# docs/benchmarks/ladder-cpu-2026-12-06 (one thread each; tests/test_ladder.py recomputes
# these medians from its results.csv). GPT-2 had been overestimated 1.4-1.8x, ViT not.
LADDER_MEASURED_CPU_S = {
    ("gpt2-pretrain", 64): 23.9, ("gpt2-pretrain", 128): 49.8, ("gpt2-pretrain", 256): 110.3,
    ("vit-pretrain", 64): 11.4, ("vit-pretrain", 128): 16.8, ("vit-pretrain", 256): 37.9,
}  # fmt: skip
_LADDER_NOTE = ("each rung's 600-step run time as measured by the cpu-ladder run "
                "(docs/benchmarks/ladder-cpu-2026-12-06, median CPU seconds per run, one "
                "thread), split between steps and evaluations as timed on a shared 2-core "
                "host")  # fmt: skip
_LADDER_EVALS = 10  # --eval_steps 0.1: a validation curve of 10 points, plus the final one


def _ladder_cost(base: str, width: int) -> Cost:
    setup, step, each_eval, test = _LADDER_CPU_COST[(base, width)]
    evals = each_eval * (_LADDER_EVALS + 1) + test
    scale = (LADDER_MEASURED_CPU_S[(base, width)] - setup) / (600 * step + evals)
    return Cost(setup, step * scale, evals * scale)


def _ladder_cpu(base: str, width: int, steps: int) -> WorkloadSettings:
    adamw, lion, sgd = _ladder_lrs(base, width)
    cost = _ladder_cost(base, width)
    args = rung_args(rung_name(base, width))
    if base in _OFFLINE_EVAL:
        args += ("--max_eval_samples", str(_OFFLINE_EVAL[base]))
    optimizers = () if width == 64 else LADDER_OPTIMIZERS  # every mode on the smallest rung
    return WorkloadSettings(steps, adamw, lion, sgd, cost, args, optimizers)


# Steps: as many as 6 hours allow with 10 final seeds on every rung (3x the cpu preset's).
# The issue's check ran 600 steps: AdamW left GPT-2's unigram plateau (5.32 nats) at widths
# 64-256, and so did Lion with beta2 = 0.95 (4.32 at width 64, 3.30 at 256).
_CPU_LADDER_STEPS = {"gpt2-pretrain": 600, "vit-pretrain": 600}

PRESETS["cpu-ladder"] = Preset(
    name="cpu-ladder",
    description="offline, CPU, the scale ladder: gpt2-pretrain and vit-pretrain at widths "
    "64, 128 and 256 (2 layers), 600 steps; every optimizer on width 64, AdamW, "
    "Lion, CLion global and element above; the same 9 trials per row over lr, beta2, "
    "weight-decay scale (and ν for element/soft), 2 tuning seeds, 10 final seeds",
    accelerate_config="cpu",
    optimizers=CPU_OPTIMIZERS,
    tuning_seeds=(0, 1),
    final_seeds=LADDER_FINAL_SEEDS,
    workloads={rung_name(b, w): _ladder_cpu(b, w, n)
               for b, n in _CPU_LADDER_STEPS.items() for w in (64, 128, 256)},  # fmt: skip
    jobs=2,  # see smoke
    extra_args=("--eval_steps", "0.1", "--logging_steps", "0.01"),
    cost_note=_LADDER_NOTE,
    tuned=LADDER_TUNED,
    trials_per_row=LADDER_TRIALS,
)
# The lr each family chose per rung in the cpu-ladder run (docs/benchmarks/ladder-cpu-
# 2026-12-06; a test reads them back from its results.csv): AdamW's, Lion's and CLion
# global's. cpu-ladder-v2 centres its first lr grids there rather than on the width rule
# above, which put CLion global's centre (0.2) up to 32x below where it ended (6.4 on
# gpt2@64) and Lion's 8x above (vit@256): following an lr edge that far spends the trials
# the other dimensions need. Element and soft share Lion's centre, tensor CLion global's.
LADDER_V1_LRS = {  # (base, width): (adamw, lion, clion global)
    ("gpt2-pretrain", 64): (0.003, 0.002, 6.4),
    ("gpt2-pretrain", 128): (0.0021, 0.000355, 1.6),
    ("gpt2-pretrain", 256): (0.003, 0.0005, 3.2),
    ("vit-pretrain", 64): (0.0005, 0.0001, 0.8),
    ("vit-pretrain", 128): (0.00071, 0.00056, 0.4),
    ("vit-pretrain", 256): (0.00025, 2.5e-05, 0.2),
}


def _v1_centred(name: str, ws: WorkloadSettings) -> WorkloadSettings:
    base, width = name.split("@")
    adamw, lion, sgd = LADDER_V1_LRS[(base, int(width))]
    return replace(ws, adamw_lr=adamw, lion_lr=lion, sgd_lr=sgd)


# The same ladder with the protocol since its first run: every dimension's neighbours are
# tried first (ν included), 12 trials per row, and each lr grid centred where the first run
# tuned it. cpu-ladder stays as it was, so that its committed report plans the runs it was
# made of.
PRESETS["cpu-ladder-v2"] = replace(
    PRESETS["cpu-ladder"],
    name="cpu-ladder-v2",
    description="cpu-ladder with the protocol since its first run: the same 12 trials per "
    "row, a value on each side of the best one tried first in every dimension (lr, beta2, "
    "weight-decay scale, ν for element/soft), then edges followed; the first lr grid of "
    "each family (AdamW; Lion, element, soft; CLion global, tensor) centred on the lr it "
    "chose in the cpu-ladder run; 2 tuning seeds, 10 final seeds",
    workloads={name: _v1_centred(name, ws)
               for name, ws in PRESETS["cpu-ladder"].workloads.items()},  # fmt: skip
    trials_per_row=PROBE_TRIALS,
    probe_first=True,
)


# The ladder on one GPU, offline data (dry-run here: no GPU measured it). Its cost is a
# guess: start-up as on CPU, and the width-64 CPU step time scaled by parameter count
# would be far off on a GPU, so a flat 10-40 ms per step by width, 2 runs sharing the GPU.
def _ladder_gpu(base: str, width: int, steps: int) -> WorkloadSettings:
    adamw, lion, sgd = _ladder_lrs(base, width)
    step = {64: 0.01, 128: 0.01, 256: 0.015, 512: 0.025, 768: 0.04}[width]
    args = rung_args(rung_name(base, width))
    if base in _OFFLINE_EVAL:
        args += ("--max_eval_samples", str(_OFFLINE_EVAL[base]))
    optimizers = () if width == 64 else LADDER_OPTIMIZERS
    return WorkloadSettings(steps, adamw, lion, sgd, Cost(12.0, step, 20 * step * 11), args,
                            optimizers)  # fmt: skip


PRESETS["gpu-ladder"] = Preset(
    name="gpu-ladder",
    description="offline data on one GPU, the scale ladder: gpt2-, bert- and vit-pretrain at "
    "widths 64, 256, 512 and 768 (2 layers), 2000 steps; every optimizer on width 64, "
    "AdamW, Lion, CLion global and element above; cpu-ladder-v2's search and seeds",
    accelerate_config="single_gpu",
    optimizers=CPU_OPTIMIZERS,
    tuning_seeds=(0, 1),
    final_seeds=LADDER_FINAL_SEEDS,
    workloads={rung_name(b, w): _ladder_gpu(b, w, 2000) for b in LADDER_BASES
               for w in (64, 256, 512, 768)},  # fmt: skip
    jobs=2,
    extra_args=("--eval_steps", "0.1", "--logging_steps", "0.01"),
    cost_note="a rough guess for one H100/H200, not a measurement: 12 s start-up, 10-40 ms "
    "per step by width, two runs sharing the GPU",
    tuned=LADDER_TUNED,
    trials_per_row=PROBE_TRIALS,
    probe_first=True,
)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise SpecError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    return PRESETS[name]
