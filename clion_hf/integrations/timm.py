"""``timm.optim.create_optimizer_v2(model, "clionhf")``: CLion and Lion in timm's registry.

Written against timm 1.0.x (``timm/optim/_optim_factory.py``: ``OptimInfo``,
``OptimizerRegistry``, ``default_registry``). Applied when ``timm.optim._optim_factory`` is
imported (by the start-up hook, or after ``import clion_hf``), or at once if it already is.

Names: timm already owns ``lion`` (its Lion) and ``clion`` (its *Cautious* Lion: Lion with
the masked update of Liang et al., arXiv:2411.16085, a different algorithm from the CLion
of Huang, Zhang & Chen, arXiv:2604.14587, that this package implements). Those stay
timm's. This package adds names of its own, ``clionhf`` (:class:`clion_hf.CLion`) and
``lionhf`` (:class:`clion_hf.Lion`; ``caution=True`` gives its Cautious Lion). timm splits
an optimizer name on ``_`` (``lookahead_adamw``) and reads ``...c`` as "corrected weight
decay" (``lionc``), so the names have neither.
"""

from __future__ import annotations

import logging
from typing import Any

from ..optim import CLion, Lion

logger = logging.getLogger(__name__)

DESCRIPTIONS = {
    "clionhf": "clion_hf.CLion: CLion of Huang et al., arXiv:2604.14587 (sign only where "
    "min |c| >= nu; mode=global/tensor/element/soft). Not timm's 'clion' (arXiv:2411.16085)",
    "lionhf": "clion_hf.Lion: Lion, arXiv:2302.06675 (caution=True: arXiv:2411.16085)",
}
CLASSES: dict[str, type] = {"clionhf": CLion, "lionhf": Lion}


def register_into(registry: Any, optim_info_cls: type) -> list[str]:
    """Register ``clionhf``/``lionhf`` into a timm ``OptimizerRegistry``; idempotent.

    Returns the names it registered. Never replaces a name that is already taken (by timm
    or anyone else): such a name is left as it is, with a warning.
    """
    table = getattr(registry, "_optimizers", {})
    done = []
    for name, cls in CLASSES.items():
        current = table.get(name)
        if current is not None:
            if current.opt_class is not cls:
                logger.warning(
                    "timm optimizer %r is already registered (%s); clion_hf leaves it alone",
                    name, getattr(current.opt_class, "__qualname__", current.opt_class),
                )  # fmt: skip
            continue
        registry.register(
            optim_info_cls(
                name=name,
                opt_class=cls,
                description=DESCRIPTIONS[name],
                has_eps=False,  # timm then drops `eps`, which Lion-type optimizers lack
                has_momentum=False,  # no `momentum=` kwarg either
                has_betas=True,  # timm passes `--opt-betas` through as `betas`
            )
        )
        done.append(name)
    return done


def patch_timm() -> None:
    """Register into ``timm.optim._optim_factory.default_registry``."""
    from timm.optim import _optim_factory

    register_into(_optim_factory.default_registry, _optim_factory.OptimInfo)


__all__ = ["CLASSES", "register_into", "patch_timm"]
