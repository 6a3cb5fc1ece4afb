"""The optimizers and the benchmark from an installed wheel, outside any checkout.

Builds the wheel from this repository and checks that its metadata asks for torch alone.
Installs it without extras into a fresh virtual environment (torch first: the CPU wheel of
the running environment, as README says), where ``import clion_hf`` and a CLion step work,
transformers is absent and the start-up hook stays silent. Then adds ``[bench]`` to the
same environment (README's quick start) and,
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
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Run in the torch-only environment: the optimizer imports and steps without transformers.
TORCH_ONLY = """
import importlib.util, sys
import torch
import clion_hf
from clion_hf import CLion
assert importlib.util.find_spec("transformers") is None, "transformers is installed"
model = torch.nn.Linear(8, 4)
before = model.weight.detach().clone()
opt = CLion(model.parameters(), lr=1e-3)
model(torch.randn(16, 8)).square().mean().backward()
opt.step()
assert not torch.equal(before, model.weight)
print(clion_hf.__file__)
"""


def _check(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_bench_smoke_runs_from_an_installed_wheel(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _check([sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "-q", "-w", dist])
    (wheel,) = dist.glob("clion_hf-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [line.split(":", 1)[1].strip() for line in zf.read(meta).decode().splitlines()
                    if line.startswith("Requires-Dist:")]  # fmt: skip
    core = [r for r in requires if ";" not in r]  # the others carry `extra == "..."`
    assert core == ["torch>=2.5"], requires
    assert {"clion_hf/workloads/embedded/python-3.11.7-docs.jsonl.gz",
            "clion_hf/workloads/embedded/LICENSE-Python.txt"} <= names  # fmt: skip

    venv = tmp_path / "venv"
    _check([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    pip = [python, "-m", "pip", "install", "-q"]
    _check([*pip, f"torch=={torch.__version__.split('+')[0]}"])  # never a CUDA build here

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "CLION_HF_AUTOREGISTER")}  # fmt: skip
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        CLION_HF_CACHE=str(tmp_path / "cache"),  # checkpoints built anew, by the wheel
        CLION_HF_CHECKPOINT_MAX_STEPS="20",  # ... quickly: this checks the path, not quality
    )

    # torch and the wheel alone: the optimizers work, the start-up hook says nothing
    _check([*pip, wheel])
    installed = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    r = _check([python, "-c", TORCH_ONLY], cwd=empty, env=env)
    assert Path(r.stdout.split()[-1]).is_relative_to(installed / "site-packages")
    r = _check([python, "-c", "pass"], cwd=empty, env=env)
    assert (installed / "site-packages" / "clion_hf-autoregister.pth").is_file()
    assert r.stdout == r.stderr == ""
    r = subprocess.run([python, "-c", "import transformers"], cwd=empty, env=env,
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 1 and "ModuleNotFoundError" in r.stderr and "clion" not in r.stderr

    _check([*pip, f"{wheel}[bench]"])
    bench = venv / "bin" / "clion-bench"
    r = _check([bench, "run", "--preset", "smoke", "--out", "x", "--no_progress",
                "--workloads", "gpt2-pretrain,bert-finetune,vit-finetune",
                "--optimizers", "adamw,clion"], cwd=empty, env=env)  # fmt: skip
    # 3 workloads x 2 optimizers x (1 tuning + 1 final seed)
    assert "ok 12, diverged 0, failed 0" in r.stdout, r.stdout[-3000:]
    _check([bench, "report", "x"], cwd=empty, env=env)
    assert (empty / "x" / "report.md").is_file() and (empty / "x" / "results.csv").is_file()

    from clion_hf.workloads.corpus import CORPUS_SHA256

    for path in (empty / "x" / "results").glob("*.json"):
        result = json.loads(path.read_text())
        (recipe,) = [Path(a) for a in result["command"] if a.endswith(".py")]
        assert recipe.is_relative_to(installed / "site-packages" / "clion_hf" / "recipes")
        assert str(ROOT) not in result["command_line"]
        if result["workload"] != "vit-finetune":  # text: the corpus shipped in the wheel
            assert result["all_results"]["data_sha256"] == CORPUS_SHA256, result["all_results"]
