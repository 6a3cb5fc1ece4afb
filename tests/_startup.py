"""Scripts and planted files shared by the start-up hook tests (test_autoregister.py for
this environment's install, test_wheel_install.py for an installed wheel)."""

from __future__ import annotations

import textwrap
from pathlib import Path

# A Trainer script that never imports clion_hf.
SCRIPT = textwrap.dedent(
    """
    import sys
    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser(TrainingArguments)
    (args,) = parser.parse_args_into_dataclasses()
    print("OPTIM", args.optim.value, type(args.optim).__name__)
    print("HELP_HAS_CLION", "clion" in parser.format_help())
    """
)

PROBE = textwrap.dedent(
    """
    import sys
    print("FINDER", any(getattr(f, "_clion_hf_hook", False) for f in sys.meta_path))
    print("HEAVY", sorted(m for m in ("torch", "transformers", "clion_hf") if m in sys.modules))
    import clion_hf
    print("FROM", clion_hf.__file__)
    """
)

PLANTED_HOOK = """
import os
with open(os.path.join(os.path.dirname(__file__), "..", "..", "RAN"), "w") as f:
    f.write(__file__)
def install_at_startup():
    pass
"""

PLANTED_STARTUP = """
import os
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "RAN"), "w") as f:
    f.write(__file__)
"""


def plant(directory: Path, startup: bool = True) -> Path:
    """A ``clion_hf/integrations/hook.py`` (and a ``_clion_hf_startup.py``) in ``directory``
    that leave a file ``RAN`` there when either runs."""
    (directory / "clion_hf" / "integrations").mkdir(parents=True)
    (directory / "clion_hf" / "integrations" / "hook.py").write_text(PLANTED_HOOK)
    if startup:
        (directory / "_clion_hf_startup.py").write_text(PLANTED_STARTUP)
    return directory / "RAN"
