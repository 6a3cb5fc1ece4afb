"""The benchmark from an installed wheel, outside any checkout (README's quick start).

Builds the wheel from this repository, installs it with ``[bench]`` into a fresh virtual
environment (torch first: the CPU wheel of the running environment, as README says) and,
from an empty directory, runs ``clion-bench run --preset smoke`` and ``clion-bench report``
on three workloads (a pretraining one and two finetuning ones, whose checkpoints the wheel's
own copy of the recipes builds) and two optimizers: the paths a user's run takes, at a
third of the preset's cost. About 4 minutes on 2 CPU cores (1.5 of them installing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _check(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_bench_smoke_runs_from_an_installed_wheel(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _check([sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "-q", "-w", dist])
    (wheel,) = dist.glob("clion_hf-*.whl")
    venv = tmp_path / "venv"
    _check([sys.executable, "-m", "venv", venv])
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q"]
    _check([*pip, f"torch=={torch.__version__.split('+')[0]}"])  # never a CUDA build here
    _check([*pip, f"{wheel}[bench]"])

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "CLION_HF_AUTOREGISTER")}  # fmt: skip
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        CLION_HF_CACHE=str(tmp_path / "cache"),  # checkpoints built anew, by the wheel
        CLION_HF_CHECKPOINT_MAX_STEPS="20",  # ... quickly: this checks the path, not quality
    )
    bench = venv / "bin" / "clion-bench"
    r = _check([bench, "run", "--preset", "smoke", "--out", "x", "--no_progress",
                "--workloads", "gpt2-pretrain,bert-finetune,vit-finetune",
                "--optimizers", "adamw,clion"], cwd=empty, env=env)  # fmt: skip
    # 3 workloads x 2 optimizers x (1 tuning + 1 final seed)
    assert "ok 12, diverged 0, failed 0" in r.stdout, r.stdout[-3000:]
    _check([bench, "report", "x"], cwd=empty, env=env)
    assert (empty / "x" / "report.md").is_file() and (empty / "x" / "results.csv").is_file()

    installed = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    for path in (empty / "x" / "results").glob("*.json"):
        result = json.loads(path.read_text())
        (recipe,) = [Path(a) for a in result["command"] if a.endswith(".py")]
        assert recipe.is_relative_to(installed / "site-packages" / "clion_hf" / "recipes")
        assert str(ROOT) not in result["command_line"]
