"""Command-line value types shared by ``clion-bench``'s subcommands (a leaf module)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is exactly one line on stderr (status 2), without the usage."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def bounded_int(high: int) -> Callable[[str], int]:
    """:func:`positive_int` at most ``high`` (for counts that size memory or processes)."""

    def parse(text: str) -> int:
        value = positive_int(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"{text!r} must be <= {high}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its message: "invalid integer"
    return parse
