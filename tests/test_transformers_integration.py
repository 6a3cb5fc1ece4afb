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
from clion_hf.integrations import transformers as integration
from clion_hf.integrations.transformers import (
    LION_BETAS,
    IncompatibleTransformers,
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
    get_cls = Trainer.get_optimizer_cls_and_kwargs
    for _ in range(3):
        clion_hf.register()
        integration.patch_trainer()
    assert (len(OptimizerNames), list(trainer_module.DEFAULT_CALLBACKS)) == before
    assert TrainingArguments.__post_init__ is post_init
    assert Trainer.get_optimizer_cls_and_kwargs is get_cls
    assert [m.value for m in OptimizerNames].count("clion") == 1


def test_other_optimizers_stay_transformers(tmp_path: Path) -> None:
    # The patched Trainer.get_optimizer_cls_and_kwargs defers to transformers for its names.
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(_args(tmp_path, optim="adamw_torch"))
    assert cls is torch.optim.AdamW and kwargs["betas"] == (0.9, 0.999)
    cls, _ = Trainer.get_optimizer_cls_and_kwargs(_args(tmp_path, optim="clion"))
    assert cls is CLion


def test_declared_transformers_range_is_the_tested_one() -> None:
    from importlib.metadata import requires

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    declared = [Requirement(r) for r in requires("clion-hf") or []]
    (req,) = [r for r in declared if r.name == "transformers"
              and r.marker and r.marker.evaluate({"extra": "transformers"})]  # fmt: skip
    assert req.specifier == SpecifierSet(integration.SUPPORTED_TRANSFORMERS)


# --------------------------------------------------------------------------- a transformers
# without an internal the integration needs: one line, never another optimizer


def test_missing_internal_is_one_line_and_refuses_clion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    monkeypatch.delattr(Trainer, "get_optimizer_cls_and_kwargs")
    monkeypatch.setattr(integration, "_FAILED", {})
    with pytest.raises(IncompatibleTransformers) as info:
        integration.patch_trainer()
    message = str(info.value)
    assert "\n" not in message
    assert f"transformers {transformers.__version__} has no " in message
    assert "transformers.trainer.Trainer.get_optimizer_cls_and_kwargs" in message
    assert f"pip install 'transformers{integration.SUPPORTED_TRANSFORMERS}'" in message
    # --optim clion is then refused when the arguments are made (not AdamW in disguise),
    with pytest.raises(OptimArgsError, match="has no transformers.trainer.Trainer"):
        _args(tmp_path, optim="clion")
    _args(tmp_path, optim="adamw_torch")  # while transformers' own names still work.


MISSING_INTERNAL = """
import sys
import transformers.trainer
del transformers.trainer.Trainer.get_optimizer_cls_and_kwargs  # as if transformers lacked it
import clion_hf  # registers now: the trainer patch fails
from transformers import HfArgumentParser, TrainingArguments
HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
    ["--output_dir", sys.argv[1], "--optim", "clion"])
print("PARSED")
"""


@pytest.mark.slow
def test_missing_internal_on_the_command_line(tmp_path: Path) -> None:
    import subprocess

    import transformers

    env = {**__import__("os").environ, "CLION_HF_AUTOREGISTER": "0"}
    r = subprocess.run(
        [sys.executable, "-c", MISSING_INTERNAL, str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2 and "PARSED" not in r.stdout, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "Warning" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if "clion_hf: transformers" in line]
    # once when registration fails, once as the parser's error for --optim clion
    assert len(lines) == 2, r.stderr
    assert f"transformers {transformers.__version__} has no" in lines[0]
    assert lines[1].endswith(lines[0]) and "error: " in lines[1]


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
    # each key valid alone, not together: refused here, not at train()
    ("clion", "fused=true,foreach=true", ["optim 'clion'", "fused=True and foreach=True"]),
    ("lion", "foreach=1,fused=yes", ["--optim_args for optim 'lion'", "are exclusive"]),
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


def test_settings_line_says_set_and_scheduled_lr() -> None:
    from clion_hf.integrations._callback import describe

    model = torch.nn.Linear(2, 2)
    opt = CLion(model.parameters(), lr=1e-3, mode="element")
    assert "lr=0.001, weight_decay" in describe(opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.005)
    assert sched.get_last_lr() == [5e-6]
    assert "lr=0.001 (scheduled now: 5e-06), weight_decay" in describe(opt)


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


# --------------------------------------------------------------------------- hook


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


def test_resume_keeps_this_runs_settings_and_says_so(tmp_path: Path) -> None:
    # The checkpoint's mode/nu do not replace the command line's silently: settings that
    # are not state come from the resumed run's arguments, with a WARNING naming each value
    # that differed; the momentum (and its dtype) is the checkpoint's.
    def run(optim_args: str, steps: int, resume: str | None = None) -> Trainer:
        args = _args(
            tmp_path, optim="clion", optim_args=optim_args, learning_rate=1e-3,
            weight_decay=0.1, max_steps=steps, save_strategy="steps", save_steps=2,
        )  # fmt: skip
        trainer = Trainer(model=tiny_model(), args=args, train_dataset=TinyData(n=32))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    first = run("mode=element,nu=1e-4,momentum_dtype=bf16", steps=2)
    saved = {id(p): first.optimizer.state[p]["exp_avg"].clone()
             for p in first.model.parameters()}  # fmt: skip
    assert all(m.dtype == torch.bfloat16 for m in saved.values())
    capture = _Capture()
    log = logging.getLogger("transformers.clion_hf")
    log.addHandler(capture)
    try:
        second = run("mode=global,nu=1e-2,beta2=0.95", steps=3,
                     resume=str(tmp_path / "checkpoint-2"))  # fmt: skip
    finally:
        log.removeHandler(capture)
    opt = unwrap_optimizer(second.optimizer)
    for g in opt.param_groups:
        assert (g["mode"], g["nu"], tuple(g["betas"])) == ("global", 1e-2, (0.9, 0.95))
        assert g["momentum_dtype"] == torch.bfloat16  # the saved momentum's dtype
    assert all(s["exp_avg"].dtype == torch.bfloat16 for s in opt.state.values())
    (warning,) = [line for line in capture.lines if "resumed from a checkpoint" in line]
    for piece in ("this run's mode='global' (checkpoint: 'element')",
                  "this run's nu=0.01 (checkpoint: 0.0001)",
                  "this run's betas=(0.9, 0.95) (checkpoint: (0.9, 0.99))",
                  "the checkpoint's momentum_dtype=torch.bfloat16 (this run: None"):  # fmt: skip
        assert piece in warning, warning
    assert "weight_decay" not in warning  # equal: not named


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


def test_default_clion_run_shows_settings_and_first_step_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # What a user of a Trainer script sees with default logging: transformers' verbosity
    # WARNING (it hides INFO), `--optim clion` with Trainer's default lr (5e-5) and mode.
    import transformers

    capture = _Capture()
    capture.setLevel(logging.NOTSET)
    log = logging.getLogger("transformers.clion_hf")
    log.addHandler(capture)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    try:
        args = _args(tmp_path, optim="clion", max_steps=2, learning_rate=5e-5)
        with caplog.at_level(logging.WARNING, logger="clion_hf"):
            Trainer(model=tiny_model(), args=args, train_dataset=TinyData()).train()
    finally:
        log.removeHandler(capture)
        transformers.logging.set_verbosity(verbosity)
    (line,) = [x for x in capture.lines if x.startswith("clion_hf: CLion(")]
    assert "mode='global'" in line
    (warning,) = [r for r in caplog.records if r.name.startswith("clion_hf")]
    assert warning.levelno == logging.WARNING
    assert "first step took the sign branch on no coordinate" in warning.getMessage()
    assert "momentum SGD at lr=5e-05" in warning.getMessage()


def test_transformers_errors_carry_no_clion_hf_frame(tmp_path: Path) -> None:
    # An error of transformers' own checks (as TRL's bf16-on-CPU one) must not look like
    # ours: no frame of clion_hf in its traceback, in Python and through the parser.
    import traceback

    bad = dict(eval_strategy="steps", eval_steps=0, logging_steps=0)
    with pytest.raises(ValueError, match="requires either non-zero") as info:
        _args(tmp_path, optim="clion", **bad)
    frames = [f.filename for f in traceback.extract_tb(info.value.__traceback__)]
    assert not [f for f in frames if "clion_hf" in f], frames
    parser = HfArgumentParser(TrainingArguments)
    with pytest.raises(ValueError, match="requires either non-zero") as info:
        parser.parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--optim", "clion", "--eval_strategy", "steps",
             "--eval_steps", "0", "--logging_steps", "0"]
        )  # fmt: skip
    frames = [f.filename for f in traceback.extract_tb(info.value.__traceback__)]
    assert not [f for f in frames if "clion_hf" in f], frames


def test_optim_args_help_names_our_keys() -> None:
    text = " ".join(HfArgumentParser(TrainingArguments).format_help().split())
    help_ = TrainingArguments.__dataclass_fields__["optim_args"].metadata["help"]
    theirs = help_.split(". Keys for ")[0]  # transformers' own text stays (it varies by version)
    assert len(theirs) > 20 and " ".join(theirs.split()) in text
    assert "clion (clion_hf): nu, mode, beta1, beta2" in text
    assert "lion (clion_hf): beta1, beta2" in text and "caution" in text


def test_post_init_called_on_the_class_still_checks(tmp_path: Path) -> None:
    # some subclasses call TrainingArguments.__post_init__(self) instead of super()
    args = _args(tmp_path, optim="clion")
    args.optim_args = "mode=elem"
    with pytest.raises(OptimArgsError, match="mode='elem' is not allowed"):
        TrainingArguments.__post_init__(args)
