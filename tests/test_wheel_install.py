"""The optimizers, the start-up hook and the benchmark from an installed wheel, outside any
checkout.

One wheel, built from this repository, and one fresh virtual environment for the whole
module (the ``installed`` fixture). First with torch and the wheel alone (no extras; torch
is the CPU wheel of the running environment, as README says): the wheel's metadata asks
for torch alone, ``import clion_hf`` and a CLion step work, transformers is absent and the
start-up hook stays silent. Then with ``[bench]`` added (README's quick start): the
start-up hook makes a script that never imports clion_hf accept ``--optim clion``, cheaply
and never from code in the current directory; and, from an empty directory,
``clion-bench run --preset smoke`` and ``clion-bench report`` run three workloads (a
pretraining one and two finetuning ones, whose checkpoints the installed package builds)
with two optimizers: the paths a user's run takes, at a third of the preset's cost.
About 4 minutes on 2 CPU cores (1.5 of them installing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from _paths import REPO
from _startup import PROBE, SCRIPT, plant

pytestmark = pytest.mark.slow

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

MODULES = "import sys, json; print(json.dumps(sorted(sys.modules)))"


def _check(cmd: list, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@dataclass
class Installed:
    python: Path
    site: Path  # the venv's site-packages
    requires: list[str]  # the wheel's Requires-Dist lines
    names: set[str]  # the wheel's files
    env: dict[str, str]  # no PYTHONPATH, VIRTUAL_ENV or CLION_HF_AUTOREGISTER of ours
    # What ran with torch and the wheel alone, before [bench] was added
    torch_only: subprocess.CompletedProcess
    silent: subprocess.CompletedProcess  # `python -c pass`
    no_transformers: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel in a fresh venv: the torch-only checks run here (their results are kept
    for the test), then ``[bench]`` is added for the rest of the module."""
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    _check([sys.executable, "-m", "pip", "wheel", REPO, "--no-deps", "-q", "-w", dist])
    (wheel,) = dist.glob("clion_hf-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [line.split(":", 1)[1].strip() for line in zf.read(meta).decode().splitlines()
                    if line.startswith("Requires-Dist:")]  # fmt: skip

    venv = tmp / "venv"
    _check([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    pip = [python, "-m", "pip", "install", "-q"]
    _check([*pip, f"torch=={torch.__version__.split('+')[0]}"])  # never a CUDA build here
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "CLION_HF_AUTOREGISTER")}  # fmt: skip
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = site / "site-packages"
    empty = tmp / "empty"
    empty.mkdir()

    # torch and the wheel alone
    _check([*pip, wheel])
    torch_only = subprocess.run([python, "-c", TORCH_ONLY], cwd=empty, env=env,
                                capture_output=True, text=True)  # fmt: skip
    silent = subprocess.run([python, "-c", "pass"], cwd=empty, env=env, capture_output=True,
                            text=True)  # fmt: skip
    no_transformers = subprocess.run([python, "-c", "import transformers"], cwd=empty, env=env,
                                     capture_output=True, text=True)  # fmt: skip

    _check([*pip, f"{wheel}[bench]"])
    return Installed(python, site, requires, names, env, torch_only, silent, no_transformers)


def _run(inst: Installed, code: str, *argv: str, env: dict[str, str] | None = None, cwd: Path):
    return subprocess.run(
        [str(inst.python), "-c", code, *argv],
        capture_output=True, text=True, cwd=cwd, env={**inst.env, **(env or {})},
    )  # fmt: skip


# ----------------------------------------------------------------- torch and the wheel alone


def test_wheel_asks_for_torch_alone_and_its_optimizers_work_without_transformers(
    installed: Installed,
) -> None:
    core = [r for r in installed.requires if ";" not in r]  # the others carry `extra == ...`
    assert core == ["torch>=2.5"], installed.requires
    assert {"clion_hf/workloads/embedded/python-3.11.7-docs.jsonl.gz",
            "clion_hf/workloads/embedded/LICENSE-Python.txt"} <= installed.names  # fmt: skip
    # the start-up hook's files lie at the root of site-packages, not in the package
    assert {"clion_hf-autoregister.pth", "_clion_hf_startup.py",
            "clion_hf/integrations/hook.py"} <= installed.names  # fmt: skip
    assert not any(n.startswith("clion_hf/integrations/startup/") for n in installed.names)

    r = installed.torch_only
    assert r.returncode == 0, r.stderr[-3000:]
    assert Path(r.stdout.split()[-1]).is_relative_to(installed.site)
    # the start-up hook is installed and says nothing
    assert (installed.site / "clion_hf-autoregister.pth").is_file()
    r = installed.silent
    assert r.returncode == 0 and r.stdout == r.stderr == "", r.stderr
    r = installed.no_transformers
    assert r.returncode == 1 and "ModuleNotFoundError" in r.stderr and "clion" not in r.stderr


# ------------------------------------------------------------ the start-up hook, with [bench]


def test_unmodified_script_accepts_optim_clion(installed: Installed, tmp_path: Path) -> None:
    r = _run(installed, SCRIPT, "--output_dir", str(tmp_path), "--optim", "clion", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "OPTIM clion OptimizerNames" in r.stdout
    assert "HELP_HAS_CLION True" in r.stdout
    # Argument-time validation comes with it: a clean parser error, no traceback.
    r = _run(
        installed, SCRIPT, "--output_dir", str(tmp_path), "--optim", "clion",
        "--optim_args", "mode=elementwise", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2
    assert "mode='elementwise' is not allowed" in r.stderr and "Traceback" not in r.stderr


def test_hook_is_cheap_and_non_editable(installed: Installed, tmp_path: Path) -> None:
    r = _run(installed, PROBE, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "FINDER True" in r.stdout
    assert "HEAVY []" in r.stdout  # the hook imported neither torch nor transformers
    assert Path(r.stdout.split("FROM", 1)[1].strip()).is_relative_to(installed.site)


@pytest.mark.parametrize("pythonpath", [":", ".", "{cwd}"])
def test_hook_never_runs_code_from_the_current_directory(
    installed: Installed, tmp_path: Path, pythonpath: str
) -> None:
    # PYTHONPATH=: puts '' (the current directory) on sys.path; the hook must still load
    # the installed clion_hf/integrations/hook.py only, and never a planted one.
    ran = plant(tmp_path)
    env = {"PYTHONPATH": pythonpath.format(cwd=tmp_path)}
    r = _run(installed, PROBE, env=env, cwd=tmp_path)
    assert not ran.exists(), f"planted hook ran: {ran.read_text()}"
    assert r.returncode == 0 and "FINDER True" in r.stdout, r.stderr
    r = _run(installed, "pass", env=env, cwd=tmp_path)
    assert r.returncode == 0 and not ran.exists() and not r.stderr, r.stderr


def test_hook_loads_one_cached_module_and_nothing_else(installed: Installed,
                                                       tmp_path: Path) -> None:  # fmt: skip
    # What the hook costs each interpreter: exactly one module more than with the hook off
    # (no importlib, no __future__, no warnings), loaded from its bytecode cache rather
    # than compiled from source each time.
    on = json.loads(_run(installed, MODULES, cwd=tmp_path).stdout)
    off = json.loads(
        _run(installed, MODULES, env={"CLION_HF_AUTOREGISTER": "0"}, cwd=tmp_path).stdout
    )
    assert sorted(set(on) - set(off)) == ["clion_hf.integrations.hook"]
    r = _run(installed, "import sys; print(sys.modules['clion_hf.integrations.hook'].__cached__)",
             cwd=tmp_path)  # fmt: skip
    cached = Path(r.stdout.strip())
    assert cached.is_file() and cached.suffix == ".pyc", r.stdout + r.stderr
    before = cached.stat().st_mtime_ns
    _run(installed, "pass", cwd=tmp_path)
    assert cached.stat().st_mtime_ns == before  # reused, not rewritten


def test_env_var_turns_the_hook_off(installed: Installed, tmp_path: Path) -> None:
    env = {"CLION_HF_AUTOREGISTER": "0"}
    r = _run(installed, PROBE, env=env, cwd=tmp_path)
    assert "FINDER False" in r.stdout, r.stderr
    r = _run(
        installed, SCRIPT, "--output_dir", str(tmp_path), "--optim", "clion", env=env,
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2 and "invalid choice: 'clion'" in r.stderr


# ------------------------------------------------------------------- the benchmark, with [bench]


def test_bench_smoke_runs_from_an_installed_wheel(installed: Installed, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {
        **installed.env,
        "CLION_HF_CACHE": str(tmp_path / "cache"),  # checkpoints built anew, by the wheel
        "CLION_HF_CHECKPOINT_MAX_STEPS": "20",  # ... quickly: this checks the path, not quality
    }
    bench = installed.python.with_name("clion-bench")
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
        assert recipe.is_relative_to(installed.site / "clion_hf" / "recipes")
        assert str(REPO) not in result["command_line"]
        if result["workload"] != "vit-finetune":  # text: the corpus shipped in the wheel
            assert result["all_results"]["data_sha256"] == CORPUS_SHA256, result["all_results"]
