"""The optimizer import stays light: ``import clion_hf`` and ``from clion_hf import CLion``
load torch and nothing of transformers, datasets, evaluate, accelerate (or timm, trl).

Run in fresh interpreters, with the start-up hook both on and off: the hook must not
import them either (it only watches for them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("transformers", "datasets", "evaluate", "accelerate", "timm", "trl")

PROBE = """
import json, sys
{statement}
assert clion_hf.CLion.__name__ == "CLion"
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))
print(json.dumps({{"heavy": heavy, "torch": "torch" in sys.modules}}))
"""


@pytest.mark.parametrize("statement", ["import clion_hf", "from clion_hf import CLion, Lion\n"
                                       "import clion_hf"])  # fmt: skip
@pytest.mark.parametrize("hook", ["1", "0"])
def test_optimizer_import_loads_no_hugging_face_library(statement: str, hook: str) -> None:
    env = {**os.environ, "CLION_HF_AUTOREGISTER": hook}
    r = subprocess.run(
        [sys.executable, "-c", PROBE.format(statement=statement, heavy=HEAVY)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"heavy": [], "torch": True}
