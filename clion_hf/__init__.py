"""clion-hf: the CLion (Cautious Lion) and Lion optimizers for PyTorch and Transformers."""

from .optim import MODES, CLion, Lion

__version__ = "0.1.0"
__all__ = ["CLion", "Lion", "MODES", "__version__"]
