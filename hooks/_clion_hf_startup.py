"""Start-up hook of clion-hf, imported by ``clion_hf-autoregister.pth`` in site-packages.

It makes ``--optim clion`` / ``--optim lion`` work in Trainer scripts that never import
clion_hf. It costs a few file lookups at start-up: it finds ``clion_hf/_hook.py`` on
``sys.path`` (site-packages, or the checkout of an editable install) and runs it without
running ``clion_hf/__init__.py`` (which imports torch); that installs a finder that acts
only when ``transformers.training_args``, ``transformers.hf_argparser`` or
``transformers.trainer`` is imported. Set ``CLION_HF_AUTOREGISTER=0`` to turn it off.
"""

import os
import sys


def _hook_path() -> str | None:
    # sys.path, not importlib.util.find_spec: that import alone would double the cost.
    for entry in sys.path:
        path = os.path.join(entry or os.curdir, "clion_hf", "_hook.py")
        if os.path.isfile(path):
            return path
    return None  # clion_hf was uninstalled but this file was left behind


def _install() -> None:
    if os.environ.get("CLION_HF_AUTOREGISTER", "1").strip().lower() in ("0", "false", "no", "off"):
        return
    if "clion_hf._hook" not in sys.modules:
        path = _hook_path()
        if path is None:
            return
        module = type(sys)("clion_hf._hook")
        module.__file__ = path
        with open(path, encoding="utf-8") as f:
            code = compile(f.read(), path, "exec")
        # Registered under its real name: `import clion_hf` later reuses this module.
        sys.modules["clion_hf._hook"] = module
        exec(code, module.__dict__)
    sys.modules["clion_hf._hook"].install_at_startup()


try:
    _install()
except Exception as _e:  # noqa: BLE001 - a start-up hook must never stop Python starting
    sys.stderr.write(f"clion_hf start-up hook failed (ignored): {_e!r}\n")
