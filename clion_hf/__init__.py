"""clion-hf: the CLion (Cautious Lion) and Lion optimizers for PyTorch and Transformers."""

from .integrations import hook as _hook
from .integrations import register
from .optim import MODES, CLion, Lion

__version__ = "0.1.0"
__all__ = ["CLion", "Lion", "MODES", "register", "__version__"]

# `--optim clion`/`lion` for transformers (and timm's registry): patched when those
# modules are imported, or now if they already are; imports neither of them here.
_hook.install()
