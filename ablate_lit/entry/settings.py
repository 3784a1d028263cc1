"""The settings ``run()`` takes as keyword arguments, checked against the types their owners declare.

One source of truth: the ablation settings are ``AblationConfig``'s dataclass fields, the data and
model settings the constructor parameters of the family's DataModule and LightningModule (the same
annotations LightningCLI's parser reads). A value is checked as that parser would check it: a
single value stands for a list of one, an int is a number, a bool is neither. A bad value raises
``AblateError`` carrying the setting's key, worded in ``run``'s terms (``max_tokens='100'``).
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
import types
import typing

from ablate_lit.common.errors import AblateError

_KINDS = {  # type -> (test, how a message names it, its short name in a union)
    int: (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool), "an integer", "int", "integers"),
    float: (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool), "a number", "float", "numbers"),
    bool: (lambda v: isinstance(v, bool), "a boolean", "bool", "booleans"),
    str: (lambda v: isinstance(v, str), "a string", "str", "strings"),
}


def declared(owner) -> dict[str, tuple[object, str]]:
    """{setting: (annotation, example)} of a dataclass's fields (example: the field's metadata) or of a
    class's constructor or a function's keyword parameters."""
    if dataclasses.is_dataclass(owner):
        hints = typing.get_type_hints(owner)
        return {f.name: (hints[f.name], f.metadata.get("example", "")) for f in dataclasses.fields(owner)}
    fn = owner.__init__ if inspect.isclass(owner) else owner
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # a forward reference typing cannot resolve: that parameter goes unchecked
        hints = {}
    params = inspect.signature(fn).parameters.values()
    return {
        p.name: (hints.get(p.name, typing.Any), "")
        for p in params
        if p.name not in ("self", "cls") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def _options(annotation) -> tuple[list, bool]:
    """The non-None members of a union (or the annotation alone), and whether None is allowed."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return [a for a in args if a is not type(None)], type(None) in args
    return [annotation], False


def _fits(value, annotation) -> bool:
    kind = _KINDS.get(annotation)
    if kind is not None:
        return kind[0](value)
    if typing.get_origin(annotation) is list:
        item = typing.get_args(annotation)[0] if typing.get_args(annotation) else typing.Any
        return isinstance(value, (list, tuple)) and all(_fits(v, item) for v in value)
    return True  # paths, objects, anything the owner checks itself


def checked(key: str, value, annotation, example: str = ""):
    """``value`` as ``key`` of type ``annotation`` takes it (a list for a single item of a list
    setting), or AblateError naming the key and the type."""
    options, optional = _options(annotation)
    if value is None and optional:
        return None
    for option in options:
        if typing.get_origin(option) is list:
            item = (typing.get_args(option) or (typing.Any,))[0]
            if _fits(value, item) and not isinstance(value, (list, tuple)):
                value = [value]  # one value stands for a list of one
            if _fits(value, option):
                return list(value)
            plural = _KINDS[item][3] if item in _KINDS else "values"
            raise AblateError(f"{key}={value!r}: {key} must be a list of {plural}{example}", key=key)
    if any(_fits(value, o) for o in options):
        return value
    simple = [o for o in options if o in _KINDS]
    if len(simple) == 1:
        wanted = _KINDS[simple[0]][1]
    else:
        names = [_KINDS[o][2] for o in simple]
        wanted = ("an " if names[0][0] in "aeiou" else "a ") + " or ".join(names)
    raise AblateError(f"{key}={value!r}: {key} must be {wanted}", key=key)


def check_all(values: dict, owners: list, aliases: dict | None = None) -> dict:
    """``values`` checked against the first owner that declares each key (``aliases`` maps a key of
    ``run`` to the owner's parameter name, e.g. ``dataset_name`` -> ``name``)."""
    aliases = aliases or {}
    tables = [declared(owner) for owner in owners]
    out = {}
    for key, value in values.items():
        name = aliases.get(key, key)
        spec = next((table[name] for table in tables if name in table), None)
        out[key] = value if spec is None else checked(key, value, *spec)
    return out


def keys_of(owner, drop: set[str] = frozenset()) -> set[str]:
    """The settings ``owner`` declares, less ``drop``."""
    return set(declared(owner)) - set(drop) - {"path"}
