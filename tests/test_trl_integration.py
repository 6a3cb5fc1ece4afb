"""``optim="clion"`` in TRL: ``SFTConfig``/``SFTTrainer`` and the ``trl sft`` command line.

TRL's configs subclass ``TrainingArguments`` and its trainers subclass ``Trainer``, so the
names, the argument checks and the diagnostics must work there exactly as in ``Trainer``.
Offline: a 1-layer GPT-2 and a word-level tokenizer made here, texts made here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")  # in [dev]; CI installs it

import clion_hf  # noqa: E402, F401
from clion_hf import CLion  # noqa: E402
from clion_hf.integrations.transformers import OptimArgsError, unwrap_optimizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _tiny import SEQ, tiny_model, tiny_texts, tiny_tokenizer  # noqa: E402


def _config(tmp_path: Path, **kw):
    from trl import SFTConfig

    base = dict(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, disable_tqdm=True,
        per_device_train_batch_size=8, save_strategy="no", seed=0, max_length=SEQ,
        max_steps=4, logging_steps=2, learning_rate=1e-3,
    )  # fmt: skip
    return SFTConfig(**{**base, **kw})


def test_sft_trainer_trains_with_clion_and_logs_its_diagnostics(tmp_path: Path) -> None:
    from datasets import Dataset
    from trl import SFTTrainer

    args = _config(tmp_path, optim="clion", optim_args="mode=element,nu=1e-30,foreach=true")
    trainer = SFTTrainer(
        model=tiny_model(), args=args, processing_class=tiny_tokenizer(),
        train_dataset=Dataset.from_dict({"text": tiny_texts()}),
    )  # fmt: skip
    trainer.train()
    opt = unwrap_optimizer(trainer.optimizer)
    assert type(opt) is CLion and opt.param_groups[0]["mode"] == "element"
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in logs] == [2, 4]
    for e in logs:
        assert 0.99 < e["optim/sign_fraction"] <= 1.0  # nu below every |c|
        assert 0.0 < e["optim/min_abs_c"]


def test_sft_config_checks_optim_args(tmp_path: Path) -> None:
    with pytest.raises(OptimArgsError, match=r"^--optim_args for optim 'clion': mode='elem'"):
        _config(tmp_path, optim="clion", optim_args="mode=elem")
    assert _config(tmp_path, optim="lion").optim.value == "lion"


def _trl(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("trl")
    env = {k: v for k, v in os.environ.items() if k != "CLION_HF_AUTOREGISTER"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_VERBOSITY="info")
    return subprocess.run(
        [str(exe), *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


@pytest.fixture
def model_and_data(tmp_path: Path) -> tuple[Path, Path]:
    model_dir, data_dir = tmp_path / "model", tmp_path / "data"
    tiny_model().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    data_dir.mkdir()
    with open(data_dir / "train.jsonl", "w") as f:
        for text in tiny_texts():
            f.write(json.dumps({"text": text}) + "\n")
    return model_dir, data_dir


@pytest.mark.slow
def test_trl_sft_command_line(tmp_path: Path, model_and_data: tuple[Path, Path]) -> None:
    # The unmodified `trl sft` script: the start-up hook registers `clion` (TRL never imports
    # clion_hf), a bad --optim_args is one parser line, and a run logs the diagnostics.
    model_dir, data_dir = model_and_data
    common = [
        "sft", "--model_name_or_path", str(model_dir), "--dataset_name", str(data_dir),
        "--max_length", str(SEQ), "--per_device_train_batch_size", "8", "--report_to", "none",
        "--use_cpu", "true", "--optim", "clion",
    ]  # fmt: skip
    r = _trl(*common, "--output_dir", str(tmp_path / "bad"), "--optim_args", "mode=elem",
             cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith(
        "error: --optim_args for optim 'clion': mode='elem' is not allowed; "
        "mode must be one of global, tensor, element, soft"
    ), r.stderr[-2000:]

    out = tmp_path / "out"
    r = _trl(
        *common, "--output_dir", str(out), "--optim_args", "mode=element,nu=1e-30",
        "--max_steps", "4", "--logging_steps", "2", "--save_strategy", "steps",
        "--save_steps", "4", "--learning_rate", "1e-3", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    logs = [e for e in state["log_history"] if "loss" in e]
    assert [e["step"] for e in logs] == [2, 4]
    assert all(0.99 < e["optim/sign_fraction"] <= 1.0 for e in logs)
    assert "clion_hf: CLion(" in r.stdout + r.stderr  # the settings line, once
