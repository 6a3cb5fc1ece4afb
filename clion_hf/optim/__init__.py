"""Optimizers: :class:`CLion` and :class:`Lion`, and their functional math."""

from .clion import CLion
from .lion import Lion
from .validate import MODES

__all__ = ["CLion", "Lion", "MODES"]
