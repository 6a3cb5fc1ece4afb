"""Start-up hook of clion-hf, imported by ``clion_hf-autoregister.pth`` in site-packages.

It makes ``--optim clion`` / ``--optim lion`` work in Trainer scripts that never import
clion_hf. It costs one small file read at start-up: it loads ``clion_hf/_hook.py`` (the
standard library only) without running ``clion_hf/__init__.py`` (which imports torch),
and that installs a finder that acts only when ``transformers.training_args``,
``transformers.hf_argparser`` or ``transformers.trainer`` is imported.
Set ``CLION_HF_AUTOREGISTER=0`` to turn it off.
"""

import os
import sys


def _install() -> None:
    if os.environ.get("CLION_HF_AUTOREGISTER", "1").strip().lower() in ("0", "false", "no", "off"):
        return
    if "clion_hf._hook" not in sys.modules:
        import importlib.util

        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clion_hf", "_hook.py")
        spec = importlib.util.spec_from_file_location("clion_hf._hook", path)
        if spec is None or spec.loader is None or not os.path.exists(path):
            return  # clion_hf was uninstalled but this file was left behind
        module = importlib.util.module_from_spec(spec)
        # Registered under its real name: `import clion_hf` later reuses this module.
        sys.modules["clion_hf._hook"] = module
        spec.loader.exec_module(module)
    sys.modules["clion_hf._hook"].install_at_startup()


try:
    _install()
except Exception as _e:  # noqa: BLE001 - a start-up hook must never stop Python starting
    sys.stderr.write(f"clion_hf start-up hook failed (ignored): {_e!r}\n")
