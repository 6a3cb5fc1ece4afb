"""`--optim clion` / `--optim lion` with transformers' TrainingArguments, parser and Trainer."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch

import clion_hf
from clion_hf import CLion, Lion
from clion_hf.integrations import timm as timm_integration
from clion_hf.integrations.transformers import (
    LION_BETAS,
    OptimArgsError,
    parse_optim_args,
    unwrap_optimizer,
)

sys.path.insert(0, str(Path(__file__).parent))
from _tiny import TinyData, tiny_model  # noqa: E402
from transformers import (  # noqa: E402  (after clion_hf on purpose: the lazy hook path)
    HfArgumentParser,
    Trainer,
    TrainingArguments,
)
from transformers.trainer_optimizer import _OPTIMIZER_HANDLERS  # noqa: E402
from transformers.training_args import OptimizerNames  # noqa: E402


def _args(tmp_path: Path, **kw) -> TrainingArguments:
    base = dict(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, disable_tqdm=True,
        per_device_train_batch_size=8, save_strategy="no", seed=0, data_seed=0,
    )  # fmt: skip
    return TrainingArguments(**{**base, **kw})


# --------------------------------------------------------------------------- names


def test_training_arguments_accept_the_names(tmp_path: Path) -> None:
    assert _args(tmp_path, optim="clion").optim is OptimizerNames.CLION
    assert _args(tmp_path, optim="lion").optim is OptimizerNames.LION_TORCH
    # transformers' bitsandbytes Lion keeps its own names.
    assert OptimizerNames.LION.value == "lion_32bit"
    assert OptimizerNames("lion_8bit") is OptimizerNames.LION_8BIT


def test_parser_lists_and_parses(tmp_path: Path) -> None:
    parser = HfArgumentParser(TrainingArguments)
    help_text = parser.format_help()
    choices = help_text.split("--optim {", 1)[1].split("}", 1)[0].split(",")
    assert "clion" in choices and "lion" in choices and "adamw_torch" in choices
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--optim", "clion", "--optim_args", "nu=1e-5"]
    )
    assert args.optim is OptimizerNames.CLION


def test_register_is_idempotent() -> None:
    import transformers.trainer as trainer_module

    before = (len(OptimizerNames), list(trainer_module.DEFAULT_CALLBACKS))
    post_init = TrainingArguments.__post_init__
    for _ in range(3):
        clion_hf.register()
    assert (len(OptimizerNames), list(trainer_module.DEFAULT_CALLBACKS)) == before
    assert TrainingArguments.__post_init__ is post_init
    assert [m.value for m in OptimizerNames].count("clion") == 1
    assert _OPTIMIZER_HANDLERS[OptimizerNames.CLION] is _OPTIMIZER_HANDLERS["lion"]


# --------------------------------------------------------------------------- optim_args


def test_optim_args_are_typed() -> None:
    got = parse_optim_args("clion", "nu=1e-4, mode=element,beta1=0.8,beta2=0.95,foreach=true")
    assert got == {"betas": (0.8, 0.95), "nu": 1e-4, "mode": "element", "foreach": True}
    assert parse_optim_args("clion", None) == {"betas": LION_BETAS}
    got = parse_optim_args("lion", "caution=True,momentum_dtype=bf16,maximize=0")
    assert got == {
        "betas": LION_BETAS, "caution": True, "momentum_dtype": torch.bfloat16, "maximize": False
    }  # fmt: skip


BAD = [
    ("clion", "nuu=1e-4", ["'nuu'", "'1e-4'", "allowed keys: nu, mode"]),
    ("clion", "mode=elementwise", ["mode='elementwise'", "global, tensor, element, soft"]),
    ("clion", "nu=-1", ["nu='-1'", "finite number > 0"]),
    ("clion", "nu=nan", ["nu='nan'", "finite number > 0"]),
    ("clion", "beta2=1", ["beta2='1'", "[0, 1)"]),
    ("clion", "foreach=maybe", ["foreach='maybe'", "true or false"]),
    ("clion", "lr=1e-3", ["'lr'", "--learning_rate"]),
    ("clion", "nu", ["'nu' is not key=value"]),
    ("lion", "nu=1e-4", ["'nu'", "allowed keys: beta1"]),  # nu is CLion's only
]


@pytest.mark.parametrize(("optim", "optim_args", "expected"), BAD)
def test_bad_optim_args_fail_when_arguments_are_made(
    tmp_path: Path, optim: str, optim_args: str, expected: list[str]
) -> None:
    with pytest.raises(OptimArgsError) as info:
        _args(tmp_path, optim=optim, optim_args=optim_args)
    message = str(info.value)
    assert "\n" not in message
    for piece in expected:
        assert piece in message


def test_bad_hyper_parameters_fail_when_arguments_are_made(tmp_path: Path) -> None:
    with pytest.raises(OptimArgsError, match=r"--weight_decay=-0.1 is not allowed .*>= 0"):
        _args(tmp_path, optim="clion", weight_decay=-0.1)
    _args(tmp_path, optim="adamw_torch", optim_args="whatever=1")  # others: untouched


def test_cli_error_is_one_parser_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = HfArgumentParser(TrainingArguments)
    with pytest.raises(SystemExit) as info:
        parser.parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--optim", "clion", "--optim_args", "mode=elem"]
        )
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.endswith(
        "error: --optim_args for optim 'clion': mode='elem' is not allowed; "
        "mode must be one of global, tensor, element, soft"
    )


# --------------------------------------------------------------------------- Trainer


def test_trainer_builds_clion_with_decay_groups(tmp_path: Path) -> None:
    args = _args(
        tmp_path, optim="clion", learning_rate=3e-4, weight_decay=0.1,
        optim_args="nu=1e-5,mode=element,foreach=true",
    )  # fmt: skip
    trainer = Trainer(model=tiny_model(), args=args, train_dataset=TinyData())
    opt = trainer.create_optimizer()
    assert type(opt) is CLion
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    assert all("bias" not in names[id(p)] and "ln" not in names[id(p)] for p in decay["params"])
    assert any("ln_f" in names[id(p)] for p in no_decay["params"])
    for g in opt.param_groups:
        # Lion's betas, not TrainingArguments' adam_beta2=0.999.
        assert (g["lr"], g["betas"], g["nu"], g["mode"], g["foreach"]) == (
            3e-4, (0.9, 0.99), 1e-5, "element", True
        )


def test_trainer_builds_lion(tmp_path: Path) -> None:
    args = _args(tmp_path, optim="lion", optim_args="caution=true,beta2=0.98")
    opt = Trainer(model=tiny_model(), args=args, train_dataset=TinyData()).create_optimizer()
    assert type(opt) is Lion
    assert opt.param_groups[0]["caution"] and opt.param_groups[0]["betas"] == (0.9, 0.98)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _train_logs(trainer: Trainer) -> list[dict]:
    trainer.train()
    return [e for e in trainer.state.log_history if "loss" in e]


def test_diagnostics_reach_the_trainer_logs(tmp_path: Path) -> None:
    capture = _Capture()
    log = logging.getLogger("transformers.clion_hf")
    log.addHandler(capture)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        args = _args(
            tmp_path, optim="clion", optim_args="mode=element,nu=1e-30", learning_rate=1e-3,
            max_steps=6, logging_steps=2, eval_strategy="steps", eval_steps=3,
            save_strategy="steps", save_steps=6,
        )  # fmt: skip
        data = TinyData()
        trainer = Trainer(model=tiny_model(), args=args, train_dataset=data, eval_dataset=data)
        logs = _train_logs(trainer)
    finally:
        log.removeHandler(capture)
        log.setLevel(old_level)
    assert [e["step"] for e in logs] == [2, 4, 6]
    for e in logs:
        assert "learning_rate" in e
        # nu below every |c|: every non-zero coordinate takes the sign branch.
        assert 0.99 < e["optim/sign_fraction"] <= 1.0
        assert 0.0 < e["optim/min_abs_c"] < 1e-2
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert evals and not any("optim/sign_fraction" in e for e in evals)
    # What the benchmark runner reads: trainer_state.json's log_history.
    saved = json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())
    assert [e["optim/min_abs_c"] for e in saved["log_history"] if "loss" in e] == [
        e["optim/min_abs_c"] for e in logs
    ]
    described = [line for line in capture.lines if line.startswith("clion_hf: CLion(")]
    assert len(described) == 1
    assert "nu=1e-30" in described[0] and "betas=(0.9, 0.99)" in described[0]
    assert "weight_decay=0.0" in described[0]


def test_global_mode_reports_no_sign_branch(tmp_path: Path) -> None:
    args = _args(tmp_path, optim="clion", optim_args="mode=global,nu=1e3", max_steps=4,
                 logging_steps=2)  # fmt: skip
    logs = _train_logs(Trainer(model=tiny_model(), args=args, train_dataset=TinyData()))
    assert [e["optim/sign_fraction"] for e in logs] == [0.0, 0.0]


def test_lion_runs_have_no_clion_keys(tmp_path: Path) -> None:
    args = _args(tmp_path, optim="lion", max_steps=2, logging_steps=1)
    logs = _train_logs(Trainer(model=tiny_model(), args=args, train_dataset=TinyData()))
    assert logs and not any(k.startswith("optim/") for e in logs for k in e)


def test_optimizer_cls_and_kwargs(tmp_path: Path) -> None:
    args = _args(tmp_path, max_steps=4, logging_steps=2, learning_rate=1e-3)
    trainer = Trainer(
        model=tiny_model(), args=args, train_dataset=TinyData(),
        optimizer_cls_and_kwargs=(CLion, {"mode": "tensor", "nu": 1e-30}),
    )  # fmt: skip
    logs = _train_logs(trainer)
    assert type(unwrap_optimizer(trainer.optimizer)) is CLion
    assert [e["optim/sign_fraction"] for e in logs] == [1.0, 1.0]


# --------------------------------------------------------------------------- accelerate


def _toy_steps(model, opt, backward, steps: int = 5) -> list[dict]:
    torch.manual_seed(1)
    x, y = torch.randn(16, 8), torch.randn(16, 1)
    stats = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        backward(loss)
        opt.step()
        opt.zero_grad()
        stats.append(unwrap_optimizer(opt).last_step_stats())
    return stats


def test_plain_accelerate_loop() -> None:
    from accelerate import Accelerator

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        return model, CLion(model.parameters(), lr=1e-2, mode="tensor", nu=1e-3)

    ref_model, ref_opt = make()
    ref_stats = _toy_steps(ref_model, ref_opt, lambda loss: loss.backward())

    accelerator = Accelerator(cpu=True)
    model, opt = make()
    model, opt = accelerator.prepare(model, opt)
    assert type(opt).__name__ == "AcceleratedOptimizer"
    stats = _toy_steps(model, opt, accelerator.backward)
    assert stats == ref_stats
    assert 0.0 < sum(s["sign_fraction"] for s in stats) < len(stats)  # both branches taken
    consumed = unwrap_optimizer(opt).consume_stats()
    assert consumed["sign_fraction"] == pytest.approx(sum(s["sign_fraction"] for s in stats) / 5)
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(p, q)


# --------------------------------------------------------------------------- timm


# A stand-in for timm 1.0.x's `timm/optim/_optim_factory.py` (timm itself cannot be
# imported next to this torch build): the same OptimInfo fields, registry table and the
# part of `create_optimizer` that turns a name and kwargs into an optimizer.
FAKE_TIMM_FACTORY = '''
from dataclasses import dataclass
from typing import Any, Optional

@dataclass(frozen=True)
class OptimInfo:
    name: str
    opt_class: Any
    description: str = ""
    has_eps: bool = True
    has_momentum: bool = False
    has_betas: bool = False
    num_betas: int = 2
    second_order: bool = False
    defaults: Optional[dict] = None

class CautiousLionFromTimm: ...

class OptimizerRegistry:
    def __init__(self):
        self._optimizers = {}
    def register(self, info):
        self._optimizers[info.name.lower()] = info
    def get_optimizer_info(self, name):
        return self._optimizers[name.lower()]
    def create_optimizer(self, params, opt, lr=None, weight_decay=0.0, momentum=0.9,
                         foreach=None, **kwargs):
        info = self.get_optimizer_info(opt.lower().split("_")[-1])
        args = {"weight_decay": weight_decay, **kwargs}
        if lr is not None:
            args["lr"] = lr
        for k, v in (info.defaults or {}).items():
            args.setdefault(k, v)
        if info.has_momentum:
            args.setdefault("momentum", momentum)
        if not info.has_eps:
            args.pop("eps", None)
        if not info.has_betas:
            args.pop("betas", None)
        if foreach is not None:
            args.setdefault("foreach", foreach)
        return info.opt_class(params, **args)

default_registry = OptimizerRegistry()
default_registry.register(OptimInfo("clion", CautiousLionFromTimm, "Cautious Lion",
                                    has_eps=False, has_betas=True, defaults={"caution": True}))

def create_optimizer_v2(model_or_params, opt="sgd", **kwargs):
    return default_registry.create_optimizer(model_or_params, opt, **kwargs)
'''


def test_timm_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "timm" / "optim"
    pkg.mkdir(parents=True)
    (tmp_path / "timm" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from ._optim_factory import create_optimizer_v2\n")
    (pkg / "_optim_factory.py").write_text(FAKE_TIMM_FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "timm" or m.startswith("timm.")]:
        monkeypatch.delitem(sys.modules, name)
    try:
        # Importing timm's factory runs the registration (the hook `import clion_hf` set).
        import timm.optim

        factory = sys.modules["timm.optim._optim_factory"]
        table = factory.default_registry._optimizers
        assert table["clion"].opt_class is CLion and table["lion"].opt_class is Lion
        assert table["timmclion"].opt_class.__name__ == "CautiousLionFromTimm"
        assert timm_integration.register_into(factory.default_registry, factory.OptimInfo) == []

        model = torch.nn.Linear(4, 2)
        opt = timm.optim.create_optimizer_v2(
            model.parameters(), "clion", lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95),
            eps=1e-8, nu=1e-5, mode="element", foreach=False,
        )  # fmt: skip
        assert type(opt) is CLion
        g = opt.param_groups[0]
        assert (g["lr"], g["betas"], g["nu"], g["mode"], g["weight_decay"]) == (
            1e-3, (0.9, 0.95), 1e-5, "element", 0.1
        )
        opt = timm.optim.create_optimizer_v2(model.parameters(), "lion", caution=True)
        assert type(opt) is Lion and opt.param_groups[0]["caution"]
    finally:
        for name in [m for m in sys.modules if m == "timm" or m.startswith("timm.")]:
            del sys.modules[name]


def test_hook_leaves_other_modules_alone() -> None:
    import transformers.training_args

    finder = next(f for f in sys.meta_path if getattr(f, "_clion_hf_hook", False))
    assert finder.find_spec("json.decoder", None) is None
    # The patched module keeps its real loader (the wrapper only runs the registration).
    assert type(transformers.training_args.__loader__).__name__ == "SourceFileLoader"


# --------------------------------------------------------------------------- resume


class _StopAt(__import__("transformers").TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step >= self.step:
            control.should_training_stop = True


@pytest.mark.slow
def test_resume_is_bit_identical(tmp_path: Path) -> None:
    def run(out: Path, resume: str | None = None, stop: int | None = None) -> Trainer:
        args = _args(
            out, optim="clion", optim_args="mode=tensor,nu=1e-7", learning_rate=1e-3,
            weight_decay=0.1, max_steps=20, logging_steps=1, save_strategy="steps",
            save_steps=10, full_determinism=True,
        )  # fmt: skip
        trainer = Trainer(
            model=tiny_model(), args=args, train_dataset=TinyData(n=48),
            callbacks=[_StopAt(stop)] if stop else None,
        )  # fmt: skip
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full")
    first = run(tmp_path / "split", stop=10)
    assert first.state.global_step == 10
    second = run(tmp_path / "split", resume=str(tmp_path / "split" / "checkpoint-10"))
    assert second.state.global_step == 20

    def losses(t: Trainer) -> list[tuple[int, float, float]]:
        return [(e["step"], e["loss"], e["optim/sign_fraction"])
                for e in t.state.log_history if "loss" in e]  # fmt: skip

    assert losses(full)[:10] == losses(first)
    assert losses(full) == losses(second)  # log_history resumes with the checkpoint's
    fractions = [f for _, _, f in losses(full)]
    assert any(0.0 < f < 1.0 for f in fractions)  # CLion decided per tensor, both ways
    for (name, p), q in zip(
        full.model.named_parameters(), second.model.parameters(), strict=True
    ):
        assert torch.equal(p, q), name
