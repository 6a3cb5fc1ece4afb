"""Post-import hooks: register CLion/Lion with transformers (and timm) when they load.

Standard library only, and cheap to import: this module is also loaded at interpreter
start-up by the ``clion_hf-autoregister.pth`` file that the wheel installs (through
``_clion_hf_startup.py``), before anything else of clion_hf, torch or transformers is
imported. It installs one :data:`sys.meta_path` finder that does nothing unless one of
the few watched modules is imported; then, right after that module has finished
executing, it runs the matching function of :mod:`clion_hf.integrations`.
"""

import sys

# Only what Python has already imported at start-up (this runs from a .pth file, for
# every interpreter; even ``importlib`` and ``__future__`` would cost more than the rest
# together): ``importlib`` and ``warnings`` are imported where they are used.
Any = object  # annotations only
ModuleType = type(sys)

ENV_VAR = "CLION_HF_AUTOREGISTER"
"""Set to ``0`` to keep the start-up (``.pth``) hook from registering anything."""

# Watched module -> (module of clion_hf, function) run once the watched module has loaded.
# Each watched module gets its own patch so that no patch has to import another part of
# transformers (that could run in the middle of a circular import: trainer_callback
# imports training_args, for instance).
WATCHED: dict[str, tuple[str, str]] = {
    "transformers.training_args": ("clion_hf.integrations.transformers", "patch_training_args"),
    "transformers.hf_argparser": ("clion_hf.integrations.transformers", "patch_hf_argparser"),
    "transformers.trainer": ("clion_hf.integrations.transformers", "patch_trainer"),
    # TRL 1.x parses its command line (`trl sft ...`) with its own copy of HfArgumentParser
    "trl.scripts._hf_argparser": ("clion_hf.integrations.transformers", "patch_trl_argparser"),
    "timm.optim._optim_factory": ("clion_hf.integrations.timm", "patch_timm"),
}
STARTUP_WATCHED = tuple(WATCHED)
"""What the start-up hook watches: everything. In timm's registry our optimizers have
names of their own (``clionhf``, ``lionhf``); timm's ``lion``/``clion`` stay timm's."""


def _run(name: str) -> None:
    module_name, func = WATCHED[name]
    try:
        import importlib

        getattr(importlib.import_module(module_name), func)()
    except Exception as e:  # noqa: BLE001 - never break the user's import of transformers
        if getattr(e, "one_line", False):
            # e.g. a transformers without an internal the integration needs: the message
            # says which version and what to do; a traceback would not help.
            sys.stderr.write(f"{e}\n")
            return
        import warnings

        warnings.warn(
            f"clion_hf could not register its optimizers with {name}: {e!r}",
            RuntimeWarning,
            stacklevel=2,
        )


class _Loader:
    """Delegates to the real loader, then runs the registration after ``exec_module``."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader = loader
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._loader, attr)

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # Put the real loader back first, so the module looks untouched to introspection.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _run(self._name)


class PostImportFinder:
    """A meta-path finder that only wraps the loaders of the watched modules."""

    _clion_hf_hook = True  # marker: one finder per interpreter, whoever installed it

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = set(names)
        # Names being resolved right now (to skip ourselves when asking the other
        # finders). Python holds the module's import lock around find_spec, so a plain
        # set is thread-safe here, and start-up does not pay for importing threading.
        self._resolving: set[str] = set()

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in self.names or fullname in self._resolving:
            return None
        self._resolving.add(fullname)
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._resolving.discard(fullname)
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader, fullname)
        return spec


def _finder() -> PostImportFinder | None:
    for f in sys.meta_path:
        if getattr(f, "_clion_hf_hook", False):
            return f  # type: ignore[return-value]
    return None


def _loaded(name: str) -> bool:
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    return module is not None and not getattr(spec, "_initializing", False)


def install(names: tuple[str, ...] | None = None) -> None:
    """Watch ``names`` (default: all of :data:`WATCHED`); idempotent.

    Modules among them that are already imported are patched now; the others when they
    are imported.
    """
    names = tuple(WATCHED) if names is None else names
    finder = _finder()
    if finder is None:
        finder = PostImportFinder(names)
        sys.meta_path.insert(0, finder)
    else:
        finder.names.update(names)  # e.g. `import clion_hf` after the start-up hook
    for name in names:
        if _loaded(name):
            _run(name)


def install_at_startup() -> None:
    """What the ``.pth`` file runs: the transformers hooks, unless the env var says 0."""
    import os

    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return
    install(STARTUP_WATCHED)


