"""``timm.optim.create_optimizer_v2(model, "clion")``: CLion and Lion in timm's registry.

Written against timm 1.0.x (``timm/optim/_optim_factory.py``: ``OptimInfo``,
``OptimizerRegistry``, ``default_registry``). Applied when ``timm.optim._optim_factory``
is imported after ``import clion_hf`` (or at once if it already was).

Name clash, resolved explicitly: timm already registers ``lion`` (its own Lion) and
``clion`` (its *Cautious* Lion: Lion with the masked update of Liang et al.,
arXiv:2411.16085, which is not CLion, arXiv:2604.14587). After registration ``clion``
and ``lion`` mean :class:`clion_hf.CLion` and :class:`clion_hf.Lion`; timm's two stay
available as ``timmclion`` and ``timmlion`` (timm splits names on ``_``, so no
underscore), and ``create_optimizer_v2(model, "lion", caution=True)`` gives the cautious
Lion of this package.
"""

from __future__ import annotations

import logging
from typing import Any

from ..optim import CLion, Lion

logger = logging.getLogger(__name__)

DESCRIPTIONS = {
    "clion": "clion_hf CLion, Cautious Lion of arXiv:2604.14587 (sign only where min |c| >= nu)",
    "lion": "clion_hf Lion, Evolved Sign Momentum (caution=True: arXiv:2411.16085)",
}
CLASSES: dict[str, type] = {"clion": CLion, "lion": Lion}
DISPLACED_PREFIX = "timm"


def register_into(registry: Any, optim_info_cls: type) -> list[str]:
    """Register ``clion``/``lion`` into a timm ``OptimizerRegistry``; idempotent.

    Returns the names it (re)bound; a name already bound to our class is left alone.
    """
    table = getattr(registry, "_optimizers", None)
    done = []
    for name, cls in CLASSES.items():
        current = table.get(name) if isinstance(table, dict) else None
        if current is not None and current.opt_class is cls:
            continue
        info = optim_info_cls(
            name=name,
            opt_class=cls,
            description=DESCRIPTIONS[name],
            has_eps=False,  # timm then drops `eps`, which Lion-type optimizers lack
            has_momentum=False,  # no `momentum=` kwarg either
            has_betas=True,  # timm passes `--opt-betas` through as `betas`
        )
        if current is not None and isinstance(table, dict):
            # Keep timm's own optimizer reachable, and overwrite without timm's
            # "already registered, overwriting" warning at every import.
            table.setdefault(DISPLACED_PREFIX + name, current)
            table[name] = info
            logger.info(
                "timm optimizer %r now means clion_hf.%s; timm's is still available as %r",
                name, cls.__name__, DISPLACED_PREFIX + name,
            )  # fmt: skip
        else:
            registry.register(info)
        done.append(name)
    return done


def patch_timm() -> None:
    """Register into ``timm.optim._optim_factory.default_registry``."""
    from timm.optim import _optim_factory

    register_into(_optim_factory.default_registry, _optim_factory.OptimInfo)


__all__ = ["register_into", "patch_timm"]
