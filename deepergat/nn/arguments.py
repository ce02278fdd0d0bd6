"""A model's constructor arguments, recorded once: the ``model`` dict of checkpoints and exported
files (docs/design.md §5, §7), from which `deepergat.nn.build.build_from_config` rebuilds it.

Every architecture and the ensemble derive from `RecordsArguments`. A class declares only its
own settings, keyword-only, and passes the rest on with ``**settings`` to its base, which
documents them once; `inspect.signature` shows a class's whole signature (`full_signature`).
When a model is built, the call is bound to that signature with its defaults and recorded in
``model.config`` before ``__init__``'s body runs, by one rule:

1. ``arch``, where the class names one (DeeperGATGNN names none: its files predate the name);
2. the class's settings in signature order (a base's first, a subclass's new ones after; one
   that a subclass declares again keeps its base's place): after the ones always written, those
   of `deepergat.architectures.UNWRITTEN` whose value differs from what their absence means;
3. the settings shared by every model (the recording root's, `GraphModel`'s), unless the class
   declares them among its own;
4. never a buffer's starting value (``buffer_arguments``: target scaling, spread factors),
   which the weights hold.

A value is written as the class's ``written_as`` converts it (plain types: a checkpoint loads
with ``weights_only``). A setter that changes what rebuilds the model (``set_agat_form``,
``set_local_error``) updates ``config`` in place.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from inspect import Parameter
from typing import Any, ClassVar

from deepergat.architectures import UNWRITTEN

__all__ = ["RecordsArguments", "full_signature", "optional_float", "recorded_arguments"]


def optional_float(value: Any) -> float | None:
    """``value`` as a float, None as None."""
    return None if value is None else float(value)


class _ClassSignature:
    """``cls.__signature__``: `full_signature` on the class; absent on an instance, whose
    signature (its ``forward``'s) tracers and exporters read."""

    def __get__(self, obj: object, owner: type[RecordsArguments]) -> inspect.Signature:
        if obj is not None:
            raise AttributeError("__signature__")
        return full_signature(owner)


class RecordsArguments:
    """Mixin of every model class: records its constructor arguments in ``config``.

    Class attributes:
        arch: the architecture's name, written first (None: not written).
        buffer_arguments: arguments that set buffers' starting values, never written.
        written_as: setting name → the function that gives its written value.
    """

    arch: ClassVar[str | None] = None
    buffer_arguments: ClassVar[tuple[str, ...]] = ()
    written_as: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}
    #: (the class's settings, the shared settings after them, the ``**`` that holds another
    #: model's settings or None)
    _parts: ClassVar[tuple[tuple[Parameter, ...], tuple[Parameter, ...], Parameter | None]] = (
        (), (), None)
    config: dict[str, Any]
    __signature__ = _ClassSignature()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in vars(cls):
            return
        init = vars(cls)["__init__"]
        cls._parts = _parts(cls, init)
        cls.__init__ = _recording(cls, init)  # type: ignore[method-assign]


def _declared(cls: type, init: Callable[..., None]) -> tuple[list[Parameter], Parameter | None]:
    """(the keyword-only parameters ``init`` declares, its ``**`` parameter or None)."""
    params = list(inspect.signature(init).parameters.values())[1:]
    odd = [p.name for p in params if p.kind not in (Parameter.KEYWORD_ONLY, Parameter.VAR_KEYWORD)]
    if odd:
        raise TypeError(f"{cls.__name__}.__init__: settings are keyword-only, not {odd}")
    return ([p for p in params if p.kind is Parameter.KEYWORD_ONLY],
            next((p for p in params if p.kind is Parameter.VAR_KEYWORD), None))


def _recording_classes(cls: type) -> list[type[RecordsArguments]]:
    """The classes of ``cls``'s MRO whose ``__init__`` records, ``cls`` first, the root last."""
    return [c for c in cls.__mro__ if issubclass(c, RecordsArguments)
            and c is not RecordsArguments and "__init__" in vars(c)]


def _parts(cls: type, init: Callable[..., None]
           ) -> tuple[tuple[Parameter, ...], tuple[Parameter, ...], Parameter | None]:
    """(``cls``'s settings in the order they are written, the shared settings it passes on,
    the ``**`` that holds another model's settings (the ensemble's members') or None)."""
    own, var_keyword = _declared(cls, init)
    bases = _recording_classes(cls)[1:]
    if not bases:  # the root: its ``**`` (if any) holds another model's settings
        return tuple(own), (), var_keyword
    shared = bases[-1]._parts[0]
    for p in own:  # a shared setting declared again keeps its default: one place says it
        q = next((q for q in shared if q.name == p.name), None)
        if q is not None and not (q.default is p.default or q.default == p.default):
            raise TypeError(f"{cls.__name__}.__init__: {p.name} defaults to {p.default!r}, "
                            f"the shared setting to {q.default!r}")
    if var_keyword is None:  # declares every setting itself (DeeperGATGNN)
        return tuple(own), (), None
    head, tail, _ = bases[0]._parts
    if len(bases) == 1:  # the base is the root
        head, tail = (), head
    mine = {p.name: p for p in own}
    merged = [mine.pop(p.name, p) for p in head]  # declared again: the base's place
    declared = {p.name for p in own}
    return (*merged, *mine.values()), tuple(p for p in tail if p.name not in declared), None


def full_signature(cls: type[RecordsArguments]) -> inspect.Signature:
    """The keyword-only signature a model class is called with: its settings, then the shared
    ones it passes on (and ``**`` where it holds another model's settings)."""
    head, tail, nested = cls._parts
    return inspect.Signature([*head, *tail, *([nested] if nested is not None else [])])


def _merged(cls: type, name: str) -> dict[str, Any]:
    """A class attribute (a mapping, or a tuple of names) merged over the MRO, base first."""
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        value = vars(klass).get(name)
        if isinstance(value, Mapping):
            out.update(value)
        elif isinstance(value, tuple):
            out.update(dict.fromkeys(value))
    return out


def recorded_arguments(cls: type[RecordsArguments], arguments: Mapping[str, Any]
                       ) -> dict[str, Any]:
    """The ``config`` a call of ``cls`` with ``arguments`` (keywords; a nested model's
    settings left out) records, by the rule in this module's docstring."""
    head, tail, _ = cls._parts
    skip, convert = _merged(cls, "buffer_arguments"), _merged(cls, "written_as")

    def written(params: Iterable[Parameter]) -> dict[str, Any]:
        out = {}
        for p in params:
            if p.name in skip:
                continue
            value = arguments.get(p.name, p.default)
            if p.name in convert:
                value = convert[p.name](value)
            out[p.name] = value
        return out

    always = written(p for p in head if p.name not in UNWRITTEN)
    when_set = {k: v for k, v in written(p for p in head if p.name in UNWRITTEN).items()
                if v != UNWRITTEN[k]}
    return {**({"arch": cls.arch} if cls.arch is not None else {}), **always, **when_set,
            **written(tail)}


def _recording(cls: type[RecordsArguments], init: Callable[..., None]) -> Callable[..., None]:
    """``init`` that first records the call in ``self.config`` when ``cls`` is the class being
    built (a base's ``__init__``, reached through ``super()``, records nothing)."""
    head, tail, nested = cls._parts
    names = {p.name for p in (*head, *tail)}
    required = {p.name for p in (*head, *tail) if p.default is Parameter.empty}

    @functools.wraps(init)
    def recording_init(self: RecordsArguments, *args: Any, **kwargs: Any) -> None:
        # a call Python refuses (positional, missing) goes on to ``init``, which says so
        built = next(c for c in type(self).__mro__ if "__init__" in vars(c))
        if built is cls and not args and required <= kwargs.keys():
            unknown = [k for k in kwargs if k not in names]
            if unknown and nested is None:  # the message Python gives for the class's own init
                raise TypeError(f"{cls.__name__}.__init__() got an unexpected keyword "
                                f"argument {unknown[0]!r}")
            self.config = recorded_arguments(cls, {k: v for k, v in kwargs.items()
                                                   if k in names})
        init(self, *args, **kwargs)

    return recording_init
