"""Immutable value classes without `dataclasses`: the base of the types `Router()` builds.

`@dataclass` compiles each generated method with its own `exec()`, and importing
`dataclasses` imports inspect, ast, dis and tokenize: the 13 frozen dataclasses a fresh
`Router()` defined cost it about 25 ms (python 3.11). A class here lists its fields once, in
constructor order, as `__match_args__` (and as `__slots__` when it is slotted) and writes
its own `__init__`, assigning with `_set` (`object.__setattr__`, as a frozen dataclass does);
`Frozen` gives it what the dataclass generated from the fields: a repr, `replace()` (the
constructor's checks run again), refusal of assignment, and pickling and copying.
`Value` adds equality and a hash over the fields (a frozen dataclass's `eq=True`).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: Router() does not import typing (cold_start.py)
if TYPE_CHECKING:
    from typing import Any, Self

__all__ = ["Frozen", "FrozenInstanceError", "Value"]

_set = object.__setattr__


def slot_setters(cls: type[Frozen]) -> tuple[Any, ...]:
    """The setters of a slotted class's fields, in `__match_args__` order: `setter(obj, v)`
    stores the field as `_set(obj, name, v)` does, in about half the instructions (the
    slot's own descriptor, where `object.__setattr__` first unpacks its arguments and finds
    the descriptor by name through the type: ~650 instructions a field against ~1,150,
    python 3.11). For the constructions on a hot path (feedback's, a few a call)."""
    return tuple(cls.__dict__[f].__set__ for f in cls.__match_args__)


class FrozenInstanceError(AttributeError):
    """Assignment to (or deletion of) a field of an immutable satisfice object."""


def _rebuild(cls: type[Frozen], values: tuple[object, ...]) -> Frozen:
    """An instance with these field values, as pickled (valid then: no checks again)."""
    obj = object.__new__(cls)
    for name, v in zip(cls.__match_args__, values, strict=True):
        _set(obj, name, v)
    return obj


def _named_fields(cls: type, init: Any) -> Any:
    """`init`, with a misspelt field (`Policy(qualityfloor=0.5)`, `.replace(...)` too) said
    as a ConfigError naming it and the known ones, where Python's TypeError had named only
    the function. The wrapper's try costs nothing until it raises."""
    code = init.__code__
    if code.co_flags & 0x08:  # **kwargs: any name may be the init's own
        return init
    known = code.co_varnames[1 : code.co_argcount + code.co_kwonlyargcount]

    def __init__(self: Any, *args: Any, **kw: Any) -> None:
        try:
            init(self, *args, **kw)
        except TypeError:
            if bad := sorted(k for k in kw if k not in known):
                from .errors import ConfigError

                raise ConfigError(
                    f"{cls.__qualname__}: unknown field(s) {bad}; known: {list(known)}"
                ) from None
            raise

    __init__.__doc__, __init__.__wrapped__ = init.__doc__, init  # type: ignore[attr-defined]
    return __init__


class Frozen:
    """Immutable: fields are set once, in `__init__`; `replace()` makes a changed copy."""

    __slots__ = ()
    __match_args__: tuple[str, ...] = ()  # the fields, in the constructor's order

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "__init__" in cls.__dict__:
            cls.__init__ = _named_fields(cls, cls.__dict__["__init__"])  # type: ignore[method-assign]

    if not TYPE_CHECKING:  # hidden from mypy, which then still refuses an unknown attribute

        def __setattr__(self, name: str, value: object) -> None:
            raise FrozenInstanceError(
                f"cannot assign to field {name!r}: {type(self).__name__} is immutable; "
                "make a changed copy with .replace()"
            )

        def __delattr__(self, name: str) -> None:
            raise FrozenInstanceError(
                f"cannot delete field {name!r}: {type(self).__name__} is immutable"
            )

    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, f) for f in self.__match_args__])

    def __repr__(self) -> str:
        parts = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__match_args__)
        return f"{type(self).__qualname__}({parts})"

    def replace(self, **changes: Any) -> Self:
        """A copy with `changes` (field = value), checked as the constructor checks."""
        kw = {f: getattr(self, f) for f in self.__match_args__}
        kw.update(changes)
        return type(self)(**kw)

    __replace__ = replace  # copy.replace (python 3.13)

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self._values())


class Value(Frozen):
    """A `Frozen` compared by its fields (same class, equal fields) and hashed by them."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())
