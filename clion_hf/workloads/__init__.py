"""What the recipes share: data (online, local, embedded), model presets, metrics,
arguments and the run-statistics callback.

Not part of the optimizer library: ``from clion_hf import CLion`` never imports this
package (it needs transformers, datasets and evaluate).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]


def recipes_dir() -> Path | None:
    """The ``recipes/`` directory this installation runs, or None if it has none.

    An installed wheel carries a copy of the top-level ``recipes/`` as ``clion_hf/recipes/``
    (``force-include`` in ``pyproject.toml``); a checkout (or an editable install of one)
    runs its top-level ``recipes/`` itself, the place where they are edited. Standard
    library only: the bench CLI calls this before anything heavy is imported.
    """
    for candidate in (_PACKAGE / "recipes", _PACKAGE.parent / "recipes"):
        if (candidate / "accelerate_configs").is_dir():
            return candidate
    return None
