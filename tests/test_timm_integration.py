"""timm's optimizer registry: ours under names of our own, timm's ``lion``/``clion`` untouched.

Runs with timm itself. timm needs torchvision, and PyPI's torchvision does not import
beside the CPU-only torch wheel of the main CI environment, so CI runs this file in its
second environment (.ci/run: torch 2.14.1 with its torchvision, timm, the oldest supported
transformers); elsewhere it is skipped when timm cannot be imported.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

try:
    import timm.optim
    from timm.optim import _optim_factory
except Exception as e:  # noqa: BLE001 - ImportError, or torchvision's RuntimeError
    pytest.skip(f"timm cannot be imported here: {e!r}", allow_module_level=True)

import clion_hf  # noqa: E402
from clion_hf import CLion, Lion  # noqa: E402
from clion_hf.integrations import timm as timm_integration  # noqa: E402


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 1))


def test_timm_names_stay_timms() -> None:
    clion_hf.register()
    info = timm.optim.get_optimizer_info
    assert info("lion").opt_class is timm.optim.Lion
    assert info("clion").opt_class is timm.optim.Lion  # Liang et al.'s Cautious Lion
    assert info("clion").defaults == {"caution": True}
    assert not any(n.startswith("timm") for n in timm.optim.list_optimizers("timm*"))
    assert info("clionhf").opt_class is CLion and info("lionhf").opt_class is Lion
    assert "arXiv:2604.14587" in info("clionhf").description


def test_create_optimizer_v2_builds_ours() -> None:
    model = _model()
    opt = timm.optim.create_optimizer_v2(
        model, "clionhf", lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8,
        nu=1e-5, mode="element", foreach=False,
    )  # fmt: skip
    assert type(opt) is CLion
    decay = [g for g in opt.param_groups if g["weight_decay"] > 0]
    no_decay = [g for g in opt.param_groups if g["weight_decay"] == 0]
    assert decay and no_decay  # timm's own grouping: biases and norms without decay
    for g in opt.param_groups:
        assert (g["lr"], g["betas"], g["nu"], g["mode"]) == (1e-3, (0.9, 0.95), 1e-5, "element")
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    assert opt.last_step_stats()["sign_fraction"] > 0

    opt = timm.optim.create_optimizer_v2(model, "lionhf", lr=1e-4, caution=True)
    assert type(opt) is Lion and opt.param_groups[0]["caution"]
    # timm's own names build timm's optimizers, as before clion_hf was imported
    opt = timm.optim.create_optimizer_v2(model, "clion", lr=1e-4)
    assert type(opt) is timm.optim.Lion and opt.param_groups[0]["caution"]


def test_register_into_never_replaces_a_taken_name(caplog: pytest.LogCaptureFixture) -> None:
    registry = _optim_factory.OptimizerRegistry()
    taken = _optim_factory.OptimInfo(name="clionhf", opt_class=torch.optim.SGD)
    registry.register(taken)
    with caplog.at_level(logging.WARNING):
        done = timm_integration.register_into(registry, _optim_factory.OptimInfo)
    assert done == ["lionhf"]
    assert registry.get_optimizer_info("clionhf") is taken
    assert "'clionhf' is already registered" in caplog.text
    assert timm_integration.register_into(registry, _optim_factory.OptimInfo) == []


UNMODIFIED_TIMM_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import timm.optim
    import torch
    model = torch.nn.Linear(4, 2)
    opt = timm.optim.create_optimizer_v2(model, "clionhf", lr=1e-3, mode="element")
    print(json.dumps({
        "ours": type(opt).__module__ + "." + type(opt).__name__,
        "lion": timm.optim.get_optimizer_info("lion").opt_class.__module__,
        "clion": timm.optim.get_optimizer_info("clion").opt_class.__module__,
    }))
    """
)


@pytest.mark.slow
def test_startup_hook_registers_in_unmodified_timm_scripts() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CLION_HF_AUTOREGISTER"}
    r = subprocess.run(
        [sys.executable, "-c", UNMODIFIED_TIMM_SCRIPT], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"ours": "clion_hf.optim.clion.CLion", "lion": "timm.optim.lion",
                   "clion": "timm.optim.lion"}  # fmt: skip
    assert "overwriting" not in r.stderr
