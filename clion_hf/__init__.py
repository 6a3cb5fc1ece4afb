"""clion-hf: the CLion (Cautious Lion) and Lion optimizers for PyTorch and Transformers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .integrations import hook as _hook
from .integrations import register

if TYPE_CHECKING:
    from .optim import MODES, CLion, Lion

__version__ = "0.1.0"
__all__ = ["CLion", "Lion", "MODES", "register", "__version__"]

# `--optim clion`/`lion` for transformers (and timm's registry): patched when those
# modules are imported, or now if they already are; imports neither of them here.
_hook.install()


def __getattr__(name: str) -> Any:
    # The optimizers load torch on first use, not on `import clion_hf`: `clion-bench`
    # (which never steps an optimizer itself) then starts in a tenth of a second and
    # installs its SIGTERM handler before anything slow happens.
    if name in ("CLion", "Lion", "MODES"):
        from . import optim

        return getattr(optim, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
