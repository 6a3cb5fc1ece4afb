"""Integrations: transformers' Trainer (``--optim clion``/``lion``) and timm's registry.

Importing this package is cheap: it imports neither transformers nor timm.
"""

from __future__ import annotations

from . import hook


def register() -> None:
    """Register ``clion``/``lion`` with transformers (``clionhf``/``lionhf`` with timm).

    Idempotent. ``import clion_hf`` already does this lazily; calling it explicitly also
    imports ``transformers.training_args`` so that ``OptimizerNames``,
    ``TrainingArguments`` and ``HfArgumentParser`` accept the names on return. The Trainer
    side (optimizer handler, diagnostics callback) is patched when ``transformers.trainer``
    is imported, or now if it already is; timm's registry likewise.
    """
    hook.install()
    import transformers.hf_argparser  # noqa: F401 - the finder patches it on import
    import transformers.training_args  # noqa: F401


__all__ = ["register"]
