"""Start-up hook of clion-hf, run by ``clion_hf-autoregister.pth`` in site-packages.

The ``.pth`` line loads this file by its path next to the ``.pth`` file (``site`` gives
that directory as ``sitedir``), never with ``import _clion_hf_startup``: an import searches
``sys.path``, whose first entries may be the current directory (``PYTHONPATH=:`` or
``.``), so a ``_clion_hf_startup.py`` there would run at every interpreter start.

It makes ``--optim clion`` / ``--optim lion`` work in Trainer scripts that never import
clion_hf (and ``clionhf`` / ``lionhf`` in timm's optimizer registry). It runs
``clion_hf/integrations/hook.py`` of the *installed* distribution without running
``clion_hf/__init__.py`` (which imports torch); that installs a finder that acts only when
one of a few transformers / timm modules is imported. ``CLION_HF_AUTOREGISTER=0`` turns it
off.

Which ``hook.py``: the one in the site-packages directory that holds this file (a wheel
install), else the one in a directory that a ``.pth`` file of the environment appended to
``sys.path`` after it (an editable install's checkout). Never one found through
``PYTHONPATH`` or the current directory: those entries come before site-packages, and
this hook runs in every interpreter of the environment, ``python -c pass`` included.

Cost: a few ``stat`` calls and one bytecode-cached module (the standard source loader,
taken from this module's own ``__loader__`` so that ``importlib`` need not be imported).
"""

import os
import sys

_NAME = "clion_hf.integrations.hook"
_PARTS = ("clion_hf", "integrations", "hook.py")


def _hook_path() -> str | None:
    here = os.path.dirname(__file__)
    path = os.path.join(here, *_PARTS)
    if os.path.isfile(path):
        return path
    # Editable install: site appends the checkout named by a .pth file after `here`.
    try:
        start = sys.path.index(here) + 1
    except ValueError:
        return None
    for entry in sys.path[start:]:
        if entry and os.path.isabs(entry):
            path = os.path.join(entry, *_PARTS)
            if os.path.isfile(path):
                return path
    return None  # clion_hf was uninstalled but this file was left behind


def _load(path: str):  # noqa: ANN202 - a module
    loader_cls = type(__loader__)
    if loader_cls.__name__ != "SourceFileLoader":  # e.g. installed in a zip: rare, slower
        from importlib.machinery import SourceFileLoader as loader_cls
    loader = loader_cls(_NAME, path)
    spec = type(__spec__)(_NAME, loader, origin=path)
    spec.has_location = True  # so that __file__ and the bytecode cache path are set
    module = type(sys)(_NAME)
    module.__spec__, module.__loader__, module.__file__ = spec, loader, path
    module.__cached__ = spec.cached
    # Registered under its real name: `import clion_hf` later reuses this module.
    sys.modules[_NAME] = module
    try:
        loader.exec_module(module)
    except BaseException:
        del sys.modules[_NAME]
        raise
    return module


def _install() -> None:
    if os.environ.get("CLION_HF_AUTOREGISTER", "1").strip().lower() in ("0", "false", "no", "off"):
        return
    module = sys.modules.get(_NAME)
    if module is None:
        path = _hook_path()
        if path is None:
            return
        module = _load(path)
    module.install_at_startup()


try:
    _install()
except Exception as _e:  # noqa: BLE001 - a start-up hook must never stop Python starting
    sys.stderr.write(f"clion_hf start-up hook failed (ignored): {_e!r}\n")
