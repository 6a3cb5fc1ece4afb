"""Optimizers: :class:`CLion` and :class:`Lion`, and their functional math."""

from .clion import CLion
from .functional import MODES
from .lion import Lion

__all__ = ["CLion", "Lion", "MODES"]
