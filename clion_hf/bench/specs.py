"""What ``clion-bench`` runs: optimizer specs, workloads, presets and the lr/wd grid.

An optimizer spec is ``NAME[:KEY=VALUE,...]``, e.g. ``adamw``, ``lion:caution=true``,
``clion:mode=element,nu=1e-4``. Keys are checked here, at parse time, so a typo fails
before any training starts. ``lr=`` pins the learning rate (skips the grid); the other
keys are the optimizer's own options.

Fairness rules (``CLION.md``, "How a fair optimizer comparison is run"):

* each optimizer gets its own lr grid around the workload's AdamW lr ``c``: AdamW on
  ``c × adamw_factors``, Lion/CLion on ``c × lion_factors`` (AdamW/3 … AdamW/10 and one
  point above), CLion ``global``/``tensor`` also on an SGD-sized lr, because with the
  typical ``min |c| ≈ 1e-15`` those modes never take the sign branch and act as momentum
  SGD;
* ``η·λ`` is the same in every run of a workload: ``wd = c · adamw_wd / lr``, so a Lion
  run at ``c/10`` gets 10× AdamW's weight decay, as the Lion paper advises;
* the lr is tuned on the first seed, then the chosen lr is run on the remaining seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    if rest.strip():
        for item in rest.split(","):
            key, eq, raw = item.partition("=")
            key, raw = key.strip(), raw.strip()
            if not eq or not key or not raw:
                raise SpecError(f"bad option {item.strip()!r} in {text!r}; expected KEY=VALUE")
            if key not in allowed:
                raise SpecError(
                    f"unknown option {key!r} for {name} in {text!r}; allowed: {', '.join(allowed)}"
                )
            if key in values:
                raise SpecError(f"option {key!r} given twice in {text!r}")
            try:
                values[key] = allowed[key][0](raw)
            except ValueError as err:  # SpecError too
                raise SpecError(f"{name} option {key}: {err}") from None
    options = tuple(
        (key, values[key]) for key in allowed if key in values and values[key] != allowed[key][1]
    )
    return OptimizerSpec(name, options)


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
        raise SpecError("no optimizer given")
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


def parse_workloads(text: str) -> list[str]:
    names = [w.strip() for w in text.split(",") if w.strip()]
    if not names:
        raise SpecError("no workload given")
    for name in names:
        if name not in WORKLOADS:
            raise SpecError(f"unknown workload {name!r}; allowed: {', '.join(WORKLOADS)}")
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------------------ presets


@dataclass(frozen=True)
class WorkloadSettings:
    """A workload's size and AdamW reference point within one preset."""

    max_steps: int
    adamw_lr: float  # centre of AdamW's grid, and the reference of η·λ
    adamw_wd: float = 0.01
    sgd_lr: float = 0.1  # the extra grid point of CLion global/tensor (momentum-SGD sized)
    extra_args: tuple[str, ...] = ()


# Flags every run gets: divergence must show in the logs (Trainer otherwise replaces a
# NaN/inf training loss by the running mean), and per-step progress bars would bloat logs.
COMMON_RECIPE_ARGS = ("--logging_nan_inf_filter", "false", "--disable_tqdm", "true",
                      "--save_strategy", "no", "--report_to", "none")  # fmt: skip


@dataclass(frozen=True)
class Preset:
    """A named matrix: workloads, optimizers, seeds, grid and where it runs."""

    name: str
    description: str
    accelerate_config: str  # file stem in recipes/accelerate_configs/
    optimizers: tuple[str, ...]
    seeds: int
    adamw_factors: tuple[float, ...]
    lion_factors: tuple[float, ...]
    with_sgd_point: bool  # add WorkloadSettings.sgd_lr to CLion global/tensor's grid
    workloads: dict[str, WorkloadSettings]
    jobs: int = 1
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    def settings(self, workload: str, max_steps: int | None = None) -> WorkloadSettings:
        ws = self.workloads[workload]
        if max_steps is not None:
            ws = WorkloadSettings(max_steps, ws.adamw_lr, ws.adamw_wd, ws.sgd_lr, ws.extra_args)
        return ws

    def lr_grid(self, spec: OptimizerSpec, ws: WorkloadSettings) -> list[float]:
        """The lr grid of one optimizer on one workload (ascending)."""
        if spec.pinned_lr is not None:
            return [spec.pinned_lr]
        factors = self.adamw_factors if spec.name == "adamw" else self.lion_factors
        grid = {round_sig(ws.adamw_lr * f) for f in factors}
        if self.with_sgd_point and spec.sign_test_is_global:
            grid.add(ws.sgd_lr)
        return sorted(grid)


def weight_decay_for(lr: float, ws: WorkloadSettings) -> float:
    """Weight decay that keeps ``lr · wd`` equal to AdamW's ``adamw_lr · adamw_wd``."""
    return round_sig(ws.adamw_lr * ws.adamw_wd / lr)


ALL_WORKLOADS = tuple(WORKLOADS)
CPU_OPTIMIZERS = (
    "adamw",
    "lion",
    "clion",  # mode=global: the paper's definition
    "clion:mode=tensor",
    "clion:mode=element,nu=1e-4",
    "clion:mode=soft,nu=1e-4",
)


def _offline(
    steps: dict[str, int], lr: dict[str, float], sgd_lr: float = 0.1
) -> dict[str, WorkloadSettings]:
    return {w: WorkloadSettings(steps[w], lr[w], 0.01, sgd_lr) for w in ALL_WORKLOADS}


# AdamW reference lrs of the tiny offline models (the recipes' own defaults)
OFFLINE_LR = {
    "gpt2-pretrain": 1e-3,
    "gpt2-finetune": 5e-4,
    "bert-pretrain": 1e-3,
    "bert-finetune": 5e-4,
    "vit-pretrain": 1e-3,
    "vit-finetune": 5e-4,
}

PRESETS: dict[str, Preset] = {}

PRESETS["smoke"] = Preset(
    name="smoke",
    description="all six workloads x adamw/lion/clion x 1 seed, one lr each, offline, CPU",
    accelerate_config="cpu",
    optimizers=("adamw", "lion", "clion"),
    seeds=1,
    adamw_factors=(1.0,),
    lion_factors=(1 / 3,),
    with_sgd_point=False,
    workloads=_offline(dict.fromkeys(ALL_WORKLOADS, 50), OFFLINE_LR),
    # tiny models: a run is mostly single-threaded start-up; on 2 cores two runs with one
    # torch thread each finish the matrix ~2x faster than one run with two threads (measured)
    jobs=2,
    extra_args=("--eval_steps", "0.5", "--logging_steps", "0.1"),
)

PRESETS["cpu"] = Preset(
    name="cpu",
    description="offline, CPU: 3 seeds, a 4-point lr grid per optimizer (+SGD-sized lr for "
    "CLion global/tensor), CLion global/tensor/element/soft",
    accelerate_config="cpu",
    optimizers=CPU_OPTIMIZERS,
    seeds=3,
    # 4 points each: a first 3-point run put the chosen lr on the grid's upper edge for
    # AdamW (4 of 6 workloads) and Lion (3 of 6) on these tiny models
    adamw_factors=(1 / 3, 1.0, 3.0, 10.0),
    lion_factors=(1 / 10, 1 / 3, 1.0, 3.0),
    with_sgd_point=True,
    workloads=_offline(
        {
            "gpt2-pretrain": 200,
            "gpt2-finetune": 120,
            "bert-pretrain": 200,
            "bert-finetune": 120,
            "vit-pretrain": 200,
            "vit-finetune": 120,
        },  # fmt: skip
        OFFLINE_LR,
    ),
    # 228 runs; measured per run, two at a time on 2 cores: ~12 s start-up + 0.03-0.08 s/step
    # (GPT-2/BERT; idle machine vs. one loaded by other work): ~35 min idle, ~55 min loaded
    jobs=2,  # see smoke
    extra_args=("--eval_steps", "0.125", "--logging_steps", "0.05"),
)

# Online defaults: the Hub models and datasets of the table (a GPU and network needed).
_GPU = ("--bf16", "true", "--dataloader_num_workers", "4")
PRESETS["gpu"] = Preset(
    name="gpu",
    description="online defaults (Hub models and datasets), one GPU, 3 seeds, 3-point lr grid",
    accelerate_config="single_gpu",
    optimizers=CPU_OPTIMIZERS,
    seeds=3,
    adamw_factors=(1 / 3, 1.0, 3.0),
    lion_factors=(1 / 10, 1 / 3, 1.0),
    with_sgd_point=True,
    workloads={
        "gpt2-pretrain": WorkloadSettings(
            5000,
            6e-4,
            0.1,
            0.1,
            (
                "--dataset_name",
                "wikitext",
                "--dataset_config_name",
                "wikitext-103-raw-v1",
                "--block_size",
                "1024",
                "--per_device_train_batch_size",
                "16",
                "--per_device_eval_batch_size",
                "16",
                "--max_eval_samples",
                "512",
                "--warmup_steps",
                "500",
            ),
        ),
        "gpt2-finetune": WorkloadSettings(
            1000,
            5e-5,
            0.01,
            0.1,
            (
                "--model_name_or_path",
                "gpt2",
                "--dataset_name",
                "wikitext",
                "--dataset_config_name",
                "wikitext-2-raw-v1",
                "--block_size",
                "1024",
                "--per_device_train_batch_size",
                "8",
                "--per_device_eval_batch_size",
                "8",
                "--warmup_steps",
                "100",
            ),
        ),
        "bert-pretrain": WorkloadSettings(
            5000,
            1e-4,
            0.01,
            0.1,
            (
                "--dataset_name",
                "wikitext",
                "--dataset_config_name",
                "wikitext-103-raw-v1",
                "--max_seq_length",
                "128",
                "--per_device_train_batch_size",
                "64",
                "--per_device_eval_batch_size",
                "64",
                "--max_eval_samples",
                "2048",
                "--warmup_steps",
                "500",
            ),
        ),
        "bert-finetune": WorkloadSettings(
            1000,
            2e-5,
            0.01,
            0.1,
            (
                "--model_name_or_path",
                "bert-base-uncased",
                "--dataset_name",
                "glue",
                "--dataset_config_name",
                "mrpc",
                "--max_seq_length",
                "128",
                "--per_device_train_batch_size",
                "32",
                "--warmup_steps",
                "100",
            ),
        ),
        "vit-pretrain": WorkloadSettings(
            5000,
            1e-3,
            0.05,
            0.1,
            (
                "--dataset_name",
                "cifar10",
                "--per_device_train_batch_size",
                "128",
                "--per_device_eval_batch_size",
                "128",
                "--max_eval_samples",
                "2000",
                "--warmup_steps",
                "500",
            ),
        ),
        "vit-finetune": WorkloadSettings(
            1000,
            1e-4,
            0.01,
            0.1,
            (
                "--model_name_or_path",
                "google/vit-base-patch16-224-in21k",
                "--dataset_name",
                "cifar10",
                "--per_device_train_batch_size",
                "64",
                "--per_device_eval_batch_size",
                "64",
                "--max_eval_samples",
                "2000",
                "--warmup_steps",
                "100",
            ),
        ),
    },  # fmt: skip
    jobs=1,
    extra_args=_GPU + ("--eval_steps", "0.1", "--logging_steps", "0.01"),
)

PRESETS["gpu-short"] = Preset(
    name="gpu-short",
    description="offline data on one GPU, < 8 minutes on an H200: 1 seed, one lr each, "
    "adamw/lion/clion global and element, 4 runs at a time",
    accelerate_config="single_gpu",
    optimizers=("adamw", "lion", "clion", "clion:mode=element,nu=1e-4"),
    seeds=1,
    adamw_factors=(1.0,),
    lion_factors=(1 / 3,),
    with_sgd_point=False,
    workloads=_offline(dict.fromkeys(ALL_WORKLOADS, 300), OFFLINE_LR),
    # tiny models leave an H200 mostly idle; 4 concurrent runs share it
    jobs=4,
    extra_args=("--eval_steps", "0.125", "--logging_steps", "0.05"),
)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise SpecError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    return PRESETS[name]
