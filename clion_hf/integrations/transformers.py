"""``--optim clion`` and ``--optim lion`` for transformers' Trainer (transformers 4.57 - 5.x).

What registration does (each patch idempotent; run by :func:`clion_hf.register`, by
``import clion_hf``, or by the start-up hook, when the patched module has loaded):

* ``transformers.training_args``: adds two members to ``OptimizerNames``: ``CLION =
  "clion"`` (:class:`clion_hf.CLion`) and ``LION_TORCH = "lion"`` (:class:`clion_hf.Lion`).
  transformers' own ``lion_32bit`` / ``lion_8bit`` / ``paged_lion_*`` names stay the
  bitsandbytes optimizers; the bare name ``lion`` was free and now means the torch Lion of
  this package. ``TrainingArguments.__post_init__`` first checks ``optim_args``,
  ``learning_rate`` and ``weight_decay`` for these two names, so a bad value fails when the
  arguments are made, with one line naming the key, the value and what is allowed (a
  descriptor, not a wrapper: transformers' and TRL's own errors carry no clion_hf frame).
  Subclasses (TRL's ``SFTConfig``, ``DPOConfig``, ...) inherit both. ``--optim_args``'s
  help text names the keys of both.
* ``transformers.hf_argparser``: within ``parse_args_into_dataclasses`` that error becomes a
  ``parser.error`` (usage + one line, exit status 2) instead of a traceback; likewise
  ``trl.scripts._hf_argparser`` (TRL's own copy, under ``TrlParser`` and ``trl sft``).
* ``transformers.trainer``: ``Trainer.get_optimizer_cls_and_kwargs`` returns
  :class:`~clion_hf.CLion` / :class:`~clion_hf.Lion` for the two names (with Trainer's usual
  decay / no-decay parameter groups, Lion's betas unless ``optim_args`` sets them) and
  defers to transformers for every other name; and
  :class:`~clion_hf.integrations._callback.LionFamilyCallback` joins ``DEFAULT_CALLBACKS``:
  it logs the effective optimizer settings once, and for CLion adds
  ``optim/sign_fraction`` and ``optim/min_abs_c`` to each training log.

The transformers internals used are exactly those four names (``OptimizerNames``,
``TrainingArguments.__post_init__``, ``HfArgumentParser.parse_args_into_dataclasses``,
``Trainer.get_optimizer_cls_and_kwargs`` with ``DEFAULT_CALLBACKS``), present and
unchanged in shape from transformers 4.57 to 5.x (:data:`SUPPORTED_TRANSFORMERS`). Where
one is missing, registration stops with one line naming the transformers version and what
to do (:class:`IncompatibleTransformers`), and ``--optim clion`` then fails with that line
rather than training with another optimizer.

Nothing from transformers is imported at module level: a patch may run while another
transformers module is half-initialized (``trainer_callback`` imports ``training_args``).
"""

from __future__ import annotations

import functools
import inspect
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch

from ..optim import CLion, Lion
from ..optim.validate import TEXT_OPTIONS, check_impl, check_lr, check_weight_decay
from ._log import logger
from ._names import OPTIM_VALUES, optim_value

OPTIMIZERS: dict[str, tuple[str, type[torch.optim.Optimizer]]] = {
    "clion": ("CLION", CLion),
    "lion": ("LION_TORCH", Lion),
}
"""``--optim`` value -> (``OptimizerNames`` member name, optimizer class)."""
assert tuple(OPTIMIZERS) == OPTIM_VALUES  # the callback reads the names from ._names

LION_BETAS = (0.9, 0.99)
"""The Lion paper's betas; used unless ``optim_args`` sets ``beta1`` / ``beta2``."""

_MARK = "__clion_hf_patched__"


class OptimArgsError(ValueError):
    """A bad ``--optim_args`` / hyper-parameter for ``clion`` or ``lion``; one-line message."""


# --------------------------------------------------------------------------- optim_args


@dataclass(frozen=True)
class _Key:
    parse: Callable[[str], Any]
    allowed: str


def _key(name: str) -> _Key:
    """An ``--optim_args`` key, parsed and checked by clion_hf.optim.validate."""
    parse, allowed = TEXT_OPTIONS[name]
    return _Key(functools.partial(parse, name), allowed)


_COMMON = {k: _key(k) for k in ("beta1", "beta2", "maximize", "foreach", "momentum_dtype")}
_KEYS: dict[str, dict[str, _Key]] = {
    "clion": {"nu": _key("nu"), "mode": _key("mode"), **_COMMON,
              "track_stats": _key("track_stats")},
    "lion": {**_COMMON, "caution": _key("caution"), "track_stats": _key("track_stats")},
}  # fmt: skip
for _name, (_, _cls) in OPTIMIZERS.items():
    # `fused=` is being added to the optimizers; accept it once the class takes it.
    if "fused" in inspect.signature(_cls).parameters:
        _KEYS[_name]["fused"] = _key("fused")

_ELSEWHERE = {
    "lr": "--learning_rate", "learning_rate": "--learning_rate",
    "weight_decay": "--weight_decay", "wd": "--weight_decay",
    "betas": "beta1=...,beta2=...",
}  # fmt: skip


def key_values(text: str | None, where: str) -> dict[str, str]:
    """The ``KEY=VALUE`` items of a comma list (``--optim_args``; clion-bench's optimizer
    specs), in order, values unparsed; :class:`OptimArgsError` (one line, starting with
    ``where``) for an item that is not ``KEY=VALUE`` or a key given twice."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise OptimArgsError(f"{where}: '{item}' is not key=value; expected e.g. nu=1e-4")
        if key in out:
            raise OptimArgsError(f"{where}: key '{key}' given twice")
        out[key] = value
    return out


def parse_optim_args(optim: str, optim_args: str | None) -> dict[str, Any]:
    """Typed optimizer keyword arguments from an ``--optim_args`` string.

    ``"nu=1e-4,mode=element,beta1=0.9,beta2=0.99,foreach=true"`` ->
    ``{"nu": 1e-4, "mode": "element", "betas": (0.9, 0.99), "foreach": True}``;
    ``betas`` defaults to Lion's ``(0.9, 0.99)``. Raises :class:`OptimArgsError`.
    """
    keys = _KEYS[optim]
    where = f"--optim_args for optim '{optim}'"
    out: dict[str, Any] = {}
    for key, text in key_values(optim_args, where).items():
        if key not in keys:
            hint = f" (set it with {_ELSEWHERE[key]})" if key in _ELSEWHERE else ""
            raise OptimArgsError(
                f"{where}: unknown key '{key}' (value '{text}'){hint}; "
                f"allowed keys: {', '.join(keys)}"
            )
        try:
            out[key] = keys[key].parse(text)
        except (ValueError, KeyError):
            raise OptimArgsError(
                f"{where}: {key}='{text}' is not allowed; {key} must be {keys[key].allowed}"
            ) from None
    try:  # keys that are fine alone but not together (fused=true,foreach=true)
        check_impl(out.get("foreach"), out.get("fused"))
    except ValueError as e:
        raise OptimArgsError(f"{where}: {e}") from None
    beta1, beta2 = out.pop("beta1", LION_BETAS[0]), out.pop("beta2", LION_BETAS[1])
    return {"betas": (beta1, beta2), **out}


def optimizer_cls_and_kwargs(args: Any) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """``(CLion or Lion, kwargs)`` for ``TrainingArguments`` whose ``optim`` is ours.

    ``weight_decay`` here is the default; Trainer's param groups set it per group
    (``args.weight_decay`` for weights, 0 for biases and norms).
    """
    name = optim_value(args.optim)
    if name not in OPTIMIZERS:
        raise ValueError(f"optim={name!r} is not one of clion_hf's: {', '.join(OPTIMIZERS)}")
    kwargs = parse_optim_args(name, args.optim_args)
    return OPTIMIZERS[name][1], {
        "lr": args.learning_rate,
        "weight_decay": args.weight_decay,
        **kwargs,
    }


def validate_training_args(args: Any) -> None:
    """Argument-time checks for ``optim in {clion, lion}``; raises :class:`OptimArgsError`."""
    name = optim_value(args.optim)
    if name not in OPTIMIZERS:
        return
    if _FAILED:  # e.g. the Trainer side could not be patched: never train with another
        raise OptimArgsError(next(iter(_FAILED.values())))
    parse_optim_args(name, args.optim_args)
    for flag, value, check in (
        ("--learning_rate", args.learning_rate, check_lr),
        ("--weight_decay", args.weight_decay, check_weight_decay),
    ):
        try:
            check(value)
        except ValueError as e:
            allowed = str(e).split(": ", 1)[-1]
            raise OptimArgsError(
                f"{flag}={value!r} is not allowed for optim '{name}': {allowed}"
            ) from None
    if (args.adam_beta1, args.adam_beta2) != (0.9, 0.999):
        logger.warning(
            "--adam_beta1/--adam_beta2 do not apply to optim '%s' (Lion's betas default to "
            "%s); set them with --optim_args beta1=...,beta2=...",
            name, LION_BETAS,
        )  # fmt: skip


# --------------------------------------------------------------------------- patches


def _extend_enum(enum_cls: type[Enum], name: str, value: str) -> Enum:
    """Add a member to an existing (str) Enum class in place; idempotent."""
    existing = enum_cls._value2member_map_.get(value)
    if existing is not None:
        return existing
    member = str.__new__(enum_cls, value)  # OptimizerNames is a `str, Enum`
    member._name_ = name
    member._value_ = value
    member.__objclass__ = enum_cls
    member._sort_order_ = len(enum_cls._member_names_)
    if hasattr(enum_cls, "_add_member_"):  # Python >= 3.13
        enum_cls._add_member_(name, member)
    else:
        type.__setattr__(enum_cls, name, member)  # bypass EnumType's read-only guard
        enum_cls._member_map_[name] = member
    enum_cls._member_names_.append(name)
    enum_cls._value2member_map_[value] = member
    if isinstance(getattr(enum_cls, "_hashable_values_", None), list):  # Python >= 3.13
        enum_cls._hashable_values_.append(value)
    return member


SUPPORTED_TRANSFORMERS = ">=4.57.1,<6"
"""The transformers versions this integration is tested with (oldest and newest in CI);
the same range as clion-hf's declared dependency."""

_FAILED: dict[str, str] = {}
"""Patch name -> the one-line reason it could not be applied (see IncompatibleTransformers)."""


class IncompatibleTransformers(RuntimeError):
    """transformers lacks an internal the integration relies on; the message is one line."""

    one_line = True  # the start-up hook prints it as it is, without a traceback


def _require(owner: Any, attr: str, patch: str) -> Any:
    """``owner.attr`` (looked up statically), or record and raise IncompatibleTransformers."""
    try:
        return inspect.getattr_static(owner, attr)
    except AttributeError:
        pass
    try:
        from transformers import __version__ as version
    except ImportError:  # half-initialized: say so rather than fail differently
        version = "(unknown version)"
    where = getattr(owner, "__qualname__", None) or getattr(owner, "__name__", repr(owner))
    module = getattr(owner, "__module__", None)
    name = f"{module}.{where}" if module and module != where else where
    message = (
        f"clion_hf: transformers {version} has no {name}.{attr}, which --optim clion/lion "
        f"needs; install a supported transformers (pip install 'transformers"
        f"{SUPPORTED_TRANSFORMERS}') or pass the optimizer yourself "
        "(Trainer(optimizer_cls_and_kwargs=(clion_hf.CLion, {...})))"
    )
    _FAILED[patch] = message
    raise IncompatibleTransformers(message)


def patch_training_args() -> None:
    """``OptimizerNames`` members and argument-time validation (see module docstring)."""
    import transformers.training_args as training_args

    names = _require(training_args, "OptimizerNames", "training_args")
    args_cls = _require(training_args, "TrainingArguments", "training_args")
    original = _require(args_cls, "__post_init__", "training_args")
    if not (isinstance(names, type) and issubclass(names, Enum) and issubclass(names, str)):
        _FAILED["training_args"] = message = (
            f"clion_hf: transformers' OptimizerNames is no longer a str Enum; install a "
            f"supported transformers (pip install 'transformers{SUPPORTED_TRANSFORMERS}')"
        )
        raise IncompatibleTransformers(message)
    _FAILED.pop("training_args", None)
    for value, (member, _) in OPTIMIZERS.items():
        _extend_enum(names, member, value)

    _document_optim_args(args_cls)
    if getattr(original, _MARK, False):
        return
    args_cls.__post_init__ = _CheckedPostInit(original)


class _CheckedPostInit:
    """``TrainingArguments.__post_init__`` with :func:`validate_training_args` run first.

    A descriptor, not a wrapper function: dataclass ``__init__`` sets every field and then
    looks ``__post_init__`` up, so ``__get__`` checks the instance there and hands back
    transformers' own method. An error that transformers or a subclass (TRL's configs)
    raises, e.g. "Your setup doesn't support bf16/gpu", then has no clion_hf frame in its
    traceback, and nobody blames this package for it.
    """

    def __init__(self, original: Callable[..., None]) -> None:
        self.original = original
        functools.update_wrapper(self, original)
        setattr(self, _MARK, True)

        @functools.wraps(original)
        def unbound(args: Any) -> None:
            self.__get__(args, type(args))()

        # `TrainingArguments.__post_init__(self)` called on the class checks too
        self._unbound = unbound

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self._unbound
        try:
            validate_training_args(obj)
        except OptimArgsError as e:
            parser = _active_parser()
            if parser is None:
                raise
            parser.error(str(e))  # prints usage and the line, exits with status 2
        return self.original.__get__(obj, owner)


_PARSE_CODES: set[Any] = set()
"""Code objects of the patched parsers' ``parse_args_into_dataclasses``."""


def _active_parser() -> Any:
    """The argument parser whose ``parse_args_into_dataclasses`` is running, or None.

    Found on the call stack (only on the error path), so that the parser needs no
    wrapper whose frame would sit in the traceback of every other argument error.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code in _PARSE_CODES:
            return frame.f_locals.get("self")
        frame = frame.f_back
    return None


def _document_optim_args(args_cls: Any) -> None:
    """Name clion's and lion's keys in ``--optim_args``'s help (``--help`` of every script)."""
    field = getattr(args_cls, "__dataclass_fields__", {}).get("optim_args")
    if field is None or "clion" in str(field.metadata.get("help", "")):
        return
    ours = "; ".join(f"{name} (clion_hf): {', '.join(keys)}" for name, keys in _KEYS.items())
    text = str(field.metadata.get("help", "")).rstrip(".")
    field.metadata = types.MappingProxyType(
        {**field.metadata, "help": f"{text}. Keys for {ours}; e.g. mode=element,nu=1e-5"}
    )


def _patch_parser(parser_cls: Any) -> None:
    """Register the parser: a bad ``--optim_args`` becomes its ``error`` (see
    :class:`_CheckedPostInit`); nothing of the parser is replaced."""
    code = getattr(parser_cls.parse_args_into_dataclasses, "__code__", None)
    if code is not None:
        _PARSE_CODES.add(code)


def patch_hf_argparser() -> None:
    """A bad ``--optim_args`` on the command line: ``parser.error``, not a traceback."""
    import transformers.hf_argparser as hf_argparser

    parser_cls = _require(hf_argparser, "HfArgumentParser", "hf_argparser")
    _require(parser_cls, "parse_args_into_dataclasses", "hf_argparser")
    _FAILED.pop("hf_argparser", None)
    _patch_parser(parser_cls)


def patch_trl_argparser() -> None:
    """The same for TRL's command line (``trl sft ...``, ``TrlParser``): TRL 1.x parses with
    its own copy of ``HfArgumentParser`` (``trl.scripts._hf_argparser``). Where that copy
    is missing or changed, TRL still parses through transformers' class or reports a bad
    ``--optim_args`` with a traceback ending in the same line: nothing is patched then."""
    from trl.scripts import _hf_argparser

    parser_cls = getattr(_hf_argparser, "HfArgumentParser", None)
    if callable(getattr(parser_cls, "parse_args_into_dataclasses", None)):
        _patch_parser(parser_cls)


def patch_trainer() -> None:
    """``Trainer.get_optimizer_cls_and_kwargs`` for ``clion``/``lion``; the callback."""
    import transformers.trainer as trainer_module

    trainer_cls = _require(trainer_module, "Trainer", "trainer")
    static = _require(trainer_cls, "get_optimizer_cls_and_kwargs", "trainer")
    callbacks = _require(trainer_module, "DEFAULT_CALLBACKS", "trainer")
    if not isinstance(static, staticmethod) or not isinstance(callbacks, list):
        _FAILED["trainer"] = message = (
            "clion_hf: transformers' Trainer.get_optimizer_cls_and_kwargs / DEFAULT_CALLBACKS "
            f"changed shape; install a supported transformers (pip install 'transformers"
            f"{SUPPORTED_TRANSFORMERS}')"
        )
        raise IncompatibleTransformers(message)
    _FAILED.pop("trainer", None)
    original = static.__func__

    from ._callback import LionFamilyCallback

    if not getattr(original, _MARK, False):

        @functools.wraps(original)
        def get_optimizer_cls_and_kwargs(args: Any, *rest: Any, **kwargs: Any) -> Any:
            if optim_value(args.optim) in OPTIMIZERS:
                return optimizer_cls_and_kwargs(args)
            return original(args, *rest, **kwargs)

        setattr(get_optimizer_cls_and_kwargs, _MARK, True)
        trainer_cls.get_optimizer_cls_and_kwargs = staticmethod(get_optimizer_cls_and_kwargs)
    if not any(getattr(c, "__name__", "") == LionFamilyCallback.__name__ for c in callbacks):
        # DEFAULT_CALLBACKS come before the reporting ones (TensorBoard, W&B, ...) and the
        # printer, so they all see the diagnostics this callback adds to the logs.
        callbacks.append(LionFamilyCallback)


def __getattr__(name: str) -> Any:
    # The callback subclasses transformers.TrainerCallback: imported on first use only.
    if name in ("LionFamilyCallback", "unwrap_optimizer"):
        from . import _callback

        return getattr(_callback, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Also, lazily: LionFamilyCallback, unwrap_optimizer (see __getattr__).
__all__ = [
    "LION_BETAS",
    "OPTIMIZERS",
    "SUPPORTED_TRANSFORMERS",
    "IncompatibleTransformers",
    "OptimArgsError",
    "optimizer_cls_and_kwargs",
    "parse_optim_args",
    "patch_hf_argparser",
    "patch_trainer",
    "patch_trl_argparser",
    "patch_training_args",
    "validate_training_args",
]
