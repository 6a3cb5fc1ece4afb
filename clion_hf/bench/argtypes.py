"""Command-line value types shared by ``clion-bench``'s subcommands (a leaf module).

argparse's own types cannot bound a count or print a one-line error; these few lines do.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is exactly one line on stderr (status 2), without the usage.

    Options are spelled with underscores (``--max_steps``), as in transformers' scripts;
    the hyphenated spelling (``--max-steps``) is accepted as an alias, as transformers'
    ``HfArgumentParser`` accepts it, without doubling every line of ``--help``.
    """

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201
        args = sys.argv[1:] if args is None else list(args)
        end = args.index("--") if "--" in args else len(args)  # "--": what follows is data
        args = [self._canonical(a) for a in args[:end]] + args[end:]
        return super().parse_known_args(args, namespace)

    def _canonical(self, arg: str) -> str:
        """``--warm-cache[=v]`` -> ``--warm_cache[=v]`` where only the latter is an option."""
        if not arg.startswith("--") or "-" not in arg[2:].split("=", 1)[0]:
            return arg
        name, eq, value = arg.partition("=")
        alias = "--" + name[2:].replace("-", "_")
        known = self._option_string_actions
        return alias + eq + value if name not in known and alias in known else arg

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
