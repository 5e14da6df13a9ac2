"""Typed dataclass configs that can be overridden from the command line.

A config is a (possibly nested) dataclass. Fields are addressed by dotted keys such as
``model.d_model`` and overridden with ``key=value`` strings, parsed according to the field's
annotation. Supported annotations: ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``,
``X | None``, ``tuple[X, ...]``, ``dict[str, X]``, ``Any`` and nested dataclasses.

A dict field holds named options (``policy_loss_options: dict[str, float]``): one entry is
set with its name as the last key part, ``rl.policy_loss_options.clip_low=0.1``, the whole dict
with ``rl.policy_loss_options=clip_low=0.1,dual_clip=3`` (empty text: no entries). ``Any``
values are read as none, true/false, an int, a float or else the text itself. A dict or a tuple
may also be written as a JSON object or list (``columns={"prompt": "a,b"}``, ``tags=["a,b"]``),
the form for values that hold commas.

Allowed values are declared with the field, ``d_model: Annotated[int, positive] = 8``, and a
config class may add rules that tie fields together in a ``validate(self)`` method that raises
``ConfigError``; ``validate_config`` checks them all (and that no float is NaN) once the
overrides are applied, before an experiment does any work.

A field's explanatory comment is the ``# ...`` written with it in the source, at the end of its
line or on the comment lines just above it (``field_comments``). A config file (YAML or JSON,
``apply_config_file``) is a nested mapping of the same keys; a scalar value in it is read as the
text of a ``key=value`` override, so it is parsed and checked exactly as the command line's is,
and a mapping or list value is read item by item (its text is never split at commas).
``config_to_yaml`` writes a config, comments included, as such a file.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import io
import json
import math
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union

C = TypeVar("C")

TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")
NONE_WORDS = ("none", "null")


class JirlError(Exception):
    """Base class for errors caused by user input; the CLI reports them without a traceback."""


class ConfigError(JirlError, ValueError):
    """An override or stored config that does not fit the config class."""


# --------------------------------------------------------------------------- annotations


def field_annotations(cls: type) -> dict[str, Any]:
    """Resolved annotations of the init fields of dataclass ``cls``, in field order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def is_config_class(annotation: Any) -> bool:
    """Whether ``annotation`` is a dataclass type, i.e. a nested config rather than a leaf value."""
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def leaf_annotations(cls: type, prefix: str = "") -> dict[str, Any]:
    """Map every settable dotted key of config class ``cls`` to its annotation."""
    leaves: dict[str, Any] = {}
    for name, annotation in field_annotations(cls).items():
        key = prefix + name
        if is_config_class(annotation):
            leaves.update(leaf_annotations(annotation, prefix=key + "."))
        else:
            leaves[key] = annotation
    return leaves


def is_union(annotation: Any) -> bool:
    """Whether ``annotation`` is a union (``X | Y`` or ``typing.Union[X, Y]``, ``Optional``
    included)."""
    return typing.get_origin(annotation) in (Union, types.UnionType)


def union_members(annotation: Any) -> tuple[list[Any], bool]:
    """The non-None members of a union and whether None is allowed."""
    members = typing.get_args(annotation)
    return [m for m in members if m is not type(None)], type(None) in members


def is_dict(annotation: Any) -> bool:
    """Whether ``annotation`` is a ``dict[str, X]`` (or bare ``dict``) field of named entries."""
    return annotation is dict or typing.get_origin(annotation) is dict


def dict_value_type(annotation: Any) -> Any:
    """``X`` of ``dict[str, X]`` (``Any`` for a bare ``dict``)."""
    args = typing.get_args(annotation)
    return args[1] if len(args) == 2 else Any


def tuple_item_types(annotation: Any, length: int) -> list[Any]:
    """Per-item annotations of a ``tuple[...]`` annotation for a value of ``length`` items."""
    args = typing.get_args(annotation)
    if len(args) == 2 and args[1] is Ellipsis:
        return [args[0]] * length
    if len(args) != length:
        raise ValueError(f"expected {len(args)} items, got {length}")
    return list(args)


def describe_type(annotation: Any) -> str:
    """Phrase such as 'an int' or 'one of 'a', 'b'' used in error messages."""
    simple = {int: "an int", float: "a float", str: "a string", bool: "a bool (true/false)"}
    if annotation in simple:
        return simple[annotation]
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(annotation))
    if is_union(annotation):
        members, allows_none = union_members(annotation)
        phrase = " or ".join(describe_type(m) for m in members)
        return phrase + " or none" if allows_none else phrase
    if origin is tuple:
        item_names = [format_type(t) for t in typing.get_args(annotation) if t is not Ellipsis]
        return f"a comma-separated list of {' and '.join(sorted(set(item_names)))} values (or a JSON list)"
    if is_dict(annotation):
        value_type = describe_type(dict_value_type(annotation))
        return f"comma-separated name=value entries, each value {value_type} (or a JSON object)"
    if annotation is Any:
        return "a number, true/false, none or text"
    return format_type(annotation)


def format_type(annotation: Any) -> str:
    """Short display form of an annotation, e.g. 'int', 'tuple[float, ...]'."""
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return repr(annotation).replace("typing.", "").replace("NoneType", "None")


# --------------------------------------------------------------------------- parsing text


def parse_text(text: str, annotation: Any) -> Any:
    """Parse command-line ``text`` as ``annotation``; raise ValueError if it does not fit."""
    if annotation is bool:
        return parse_bool(text)
    if annotation in (int, float, str):
        return annotation(text)
    if annotation is Any:
        return parse_any(text)
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return parse_literal(text, typing.get_args(annotation))
    if is_union(annotation):
        return parse_union(text, annotation)
    if origin is tuple or is_dict(annotation):
        data = json_container(text, dict if is_dict(annotation) else list)
        if data is not None:
            return value_from_data(data, annotation)
    if origin is tuple:
        items = [item.strip() for item in text.split(",")] if text.strip() else []
        item_types = tuple_item_types(annotation, len(items))
        return tuple(parse_text(item, t) for item, t in zip(items, item_types))
    if is_dict(annotation):
        return parse_entries(text, dict_value_type(annotation))
    raise TypeError(f"unsupported config annotation {format_type(annotation)}")


def json_container(text: str, kind: type) -> dict | list | None:
    """``text`` read as JSON when it is a JSON object (``kind`` dict) or list (``kind`` list),
    else None: the form of a dict or tuple override whose values hold commas."""
    if not text.lstrip().startswith("{" if kind is dict else "["):
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, kind) else None


def value_from_data(data: Any, annotation: Any) -> Any:
    """YAML/JSON ``data`` (a config file's value, or a JSON override's) as ``annotation``'s
    type: a mapping for a dict field and a list for a tuple field item by item, so text in them
    stays whole; any other value as the text an override would write for it (``format_value``,
    ``parse_text``), so ``lr: 1e-4`` and ``max_steps: null`` read as on the command line.
    ValueError if it does not fit."""
    members = union_members(annotation)[0] if is_union(annotation) else [annotation]
    shaped = [member for member in members if has_shape_of(data, member)]
    for member in shaped:
        try:
            return container_from_data(data, member)
        except ValueError:
            if member is shaped[-1]:
                raise
    return parse_text(format_value(data), annotation)


def has_shape_of(data: Any, annotation: Any) -> bool:
    """Whether ``data`` is a mapping and ``annotation`` a dict, or ``data`` a list and
    ``annotation`` a tuple."""
    if isinstance(data, Mapping):
        return is_dict(annotation)
    return isinstance(data, (list, tuple)) and typing.get_origin(annotation) is tuple


def container_from_data(data: Mapping | Sequence, annotation: Any) -> dict | tuple:
    """A mapping as dict annotation ``annotation``, or a list as tuple annotation ``annotation``,
    each item read by ``value_from_data``; ValueError if an item does not fit."""
    if is_dict(annotation):
        value_type = dict_value_type(annotation)
        return {str(name): value_from_data(item, value_type) for name, item in data.items()}
    item_types = tuple_item_types(annotation, len(data))
    return tuple(value_from_data(item, t) for item, t in zip(data, item_types))


def parse_any(text: str) -> Any:
    """``none``/``null`` -> None, ``true``/``false`` -> bool, then an int, a float, or else the
    (stripped) text itself: a value of an ``Any`` field such as an option."""
    word = text.strip()
    if word.lower() in NONE_WORDS:
        return None
    if word.lower() in ("true", "false"):
        return word.lower() == "true"
    for number in (int, float):
        try:
            return number(word)
        except ValueError:
            continue
    return word


def parse_entries(text: str, value_type: Any) -> dict[str, Any]:
    """``"a=1,b=2"`` -> ``{"a": 1, "b": 2}``, each value parsed as ``value_type``; empty text
    gives ``{}``. ValueError on an entry without ``=`` or a name."""
    entries = {}
    for item in filter(None, (item.strip() for item in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(text)
        entries[name.strip()] = parse_text(value, value_type)
    return entries


def parse_bool(text: str) -> bool:
    """``true``/``1``/``yes`` -> True, ``false``/``0``/``no`` -> False (case-insensitive); any
    other text raises ValueError."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(text)


def parse_literal(text: str, choices: tuple) -> Any:
    """The member of ``choices`` whose ``str`` equals ``text`` (so ``Literal[1, "a"]`` accepts
    ``1`` and ``a``); ValueError if none does."""
    for choice in choices:
        if str(choice) == text:
            return choice
    raise ValueError(text)


def parse_union(text: str, annotation: Any) -> Any:
    """Parse ``text`` as the first member of the union ``annotation`` that accepts it, in order;
    ``none``/``null`` give None where the union allows it. ValueError if no member fits."""
    members, allows_none = union_members(annotation)
    if allows_none and text.strip().lower() in NONE_WORDS:
        return None
    for member in members:
        try:
            return parse_text(text, member)
        except ValueError:
            continue
    raise ValueError(text)


# --------------------------------------------------------------------------- overrides


def apply_overrides(config: C, overrides: Sequence[str]) -> C:
    """Return a copy of ``config`` with each ``key=value`` override applied in order."""
    for override in overrides:
        key, value = parse_override(type(config), override)
        config = replace_path(config, key.split("."), value)
    return config


def parse_override(cls: type, override: str) -> tuple[str, Any]:
    """``"key=text"`` -> ``(key, value)`` typed by config class ``cls``'s annotation of key; a
    key one part below a dict field (``rl.policy_loss_options.clip_low``) is typed by the dict's
    value annotation."""
    key, text = split_override(override)
    annotation = key_annotation(leaf_annotations(cls), key)
    try:
        return key, parse_text(text, annotation)
    except ValueError:
        raise ConfigError(f"{key} expects {describe_type(annotation)}, got {text!r}") from None


def key_annotation(leaves: Mapping[str, Any], key: str) -> Any:
    """The annotation that types a value set at dotted ``key``, for a config class with settable
    keys ``leaves`` (``leaf_annotations``): the leaf's own, or the dict's value annotation for a
    key one part below a dict field. ConfigError if ``key`` cannot be set."""
    field, _, entry = key.rpartition(".")
    if key not in leaves and entry and is_dict(leaves.get(field)):
        return dict_value_type(leaves[field])
    if key not in leaves:
        raise ConfigError(not_a_leaf_message(key, leaves))
    return leaves[key]


def split_override(override: str) -> tuple[str, str]:
    """``"key=text"`` -> ``("key", "text")`` (the key stripped; the text may be empty or hold
    ``=``); ConfigError if there is no ``=`` or no key."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"invalid override {override!r}: the form is key=value, e.g. seed=1")
    return key, text


def not_a_leaf_message(key: str, leaves: Mapping[str, Any]) -> str:
    """The error message for an override of ``key`` that is not a settable leaf of ``leaves``:
    the fields to set instead when ``key`` names a nested config, else the closest valid key and
    the list of all of them."""
    nested = [leaf for leaf in leaves if leaf.startswith(key + ".")]
    if nested:
        return f"{key} is a nested config; set one of its fields instead: {', '.join(nested)}"
    close = difflib.get_close_matches(key, list(leaves), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown config key {key!r}.{hint} Valid keys: {', '.join(leaves)}"


def replace_path(config: C, path: list[str], value: Any) -> C:
    """A copy of ``config`` with the field at ``path`` (e.g. ``["model", "d_model"]``) set to
    ``value``, rebuilding each nested dataclass on the way with ``dataclasses.replace``; a path
    that ends inside a dict field sets that entry of a copy of the dict."""
    if isinstance(config, Mapping):
        return {**config, ".".join(path): value}
    name, *rest = path
    if rest:
        value = replace_path(getattr(config, name), rest, value)
    return dataclasses.replace(config, **{name: value})


def preset_over_defaults(config: C, preset: Mapping[str, Any]) -> C:
    """``config`` with each dotted key of ``preset`` set to its value where the field still holds
    its default (that of ``type(config)()``): a preset (``--set preset=gpu``) sizes a run up
    without overriding what the user set explicitly."""
    defaults = type(config)()
    for key, value in preset.items():
        path = key.split(".")
        if functools.reduce(getattr, path, config) == functools.reduce(getattr, path, defaults):
            config = replace_path(config, path, value)
    return config


# --------------------------------------------------------------------------- dicts


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-able dict of a config: nested dataclasses become dicts, tuples become lists."""
    return {name: to_plain(getattr(config, name)) for name in field_annotations(type(config))}


def to_plain(value: Any) -> Any:
    """``value`` in JSON form: dataclass instances become dicts (``config_to_dict``), tuples and
    lists become lists and dicts stay dicts (recursively); anything else is returned as it is."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, Mapping):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [to_plain(item) for item in value]
    return value


def config_from_dict(cls: type[C], data: Mapping[str, Any], prefix: str = "") -> C:
    """Build ``cls`` from a dict made by ``config_to_dict``; missing keys take their defaults."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} expects a dict, got {data!r}")
    annotations = field_annotations(cls)
    unknown = [prefix + key for key in data if key not in annotations]
    if unknown:
        valid = ", ".join(prefix + name for name in annotations)
        raise ConfigError(f"unknown config keys {', '.join(unknown)}. Valid keys: {valid}")
    values = {
        name: check_value(data[name], annotations[name], prefix + name)
        for name in annotations
        if name in data
    }
    try:
        return cls(**values)
    except TypeError as error:
        raise ConfigError(f"cannot build {cls.__name__}: {error}") from None


def check_value(value: Any, annotation: Any, key: str) -> Any:
    """Type-check a JSON value against ``annotation``; return it in config form (tuples, floats)."""
    if is_config_class(annotation):
        return config_from_dict(annotation, value, prefix=key + ".")
    try:
        return coerce_json(value, annotation)
    except ValueError:
        raise ConfigError(f"{key} expects {describe_type(annotation)}, got {value!r}") from None


def coerce_json(value: Any, annotation: Any) -> Any:
    """Return JSON ``value`` as ``annotation``'s type; raise ValueError if it does not fit."""
    if annotation is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    if annotation in (int, str, bool):
        if type(value) is not annotation:
            raise ValueError(value)
        return value
    if annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    if origin is Literal:
        if not any(value == c and type(value) is type(c) for c in typing.get_args(annotation)):
            raise ValueError(value)
        return value
    if is_union(annotation):
        return coerce_union(value, annotation)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(value)
        item_types = tuple_item_types(annotation, len(value))
        return tuple(coerce_json(item, t) for item, t in zip(value, item_types))
    if is_dict(annotation):
        if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
            raise ValueError(value)
        return {key: coerce_json(item, dict_value_type(annotation)) for key, item in value.items()}
    raise TypeError(f"unsupported config annotation {format_type(annotation)}")


def coerce_union(value: Any, annotation: Any) -> Any:
    """JSON ``value`` as the first member of the union ``annotation`` that accepts it
    (``coerce_json``); None where the union allows it. ValueError if no member fits."""
    members, allows_none = union_members(annotation)
    if value is None and allows_none:
        return None
    for member in members:
        try:
            return coerce_json(value, member)
        except ValueError:
            continue
    raise ValueError(value)


# --------------------------------------------------------------------------- allowed values


@dataclasses.dataclass(frozen=True)
class Check:
    """A rule on one config value, declared as ``Annotated[T, check]``: ``holds(value)`` says
    whether the value is allowed and ``allowed`` (text, or a function giving it) says what is."""

    holds: Callable[[Any], bool]
    allowed: str | Callable[[], str]
    hint: Callable[[Any], str] | None = None  # extra advice for a refused value ("Did you mean ...")

    def describe(self) -> str:
        """What is allowed, as text (computed now when ``allowed`` is a function)."""
        return self.allowed() if callable(self.allowed) else self.allowed

    def advice(self, value: Any) -> str:
        """The hint for a refused ``value`` ("" when there is none)."""
        return self.hint(value) if self.hint is not None else ""


def at_least(low: float) -> Check:
    """``v >= low``."""
    return Check(lambda v: v >= low, f">= {low:g}")


def in_range(low: float, high: float, *, open_low: bool = False) -> Check:
    """``low <= v <= high`` (``low < v`` with ``open_low``)."""
    if open_low:
        return Check(lambda v: low < v <= high, f"in ({low:g}, {high:g}]")
    return Check(lambda v: low <= v <= high, f"in [{low:g}, {high:g}]")


def each(check: Check) -> Check:
    """``check`` on every item of a tuple."""
    def advice(items) -> str:
        return next((check.advice(v) for v in items if not check.holds(v)), "")

    return Check(lambda items: all(check.holds(v) for v in items), lambda: f"a list whose every item is {check.describe()}", advice)


def registered(registry: Any, *extra: str) -> Check:
    """A name in ``registry`` (a ``Registry``, dict or other collection; read when checked, so
    plugins' names count) or one of ``extra``."""
    def names() -> list[str]:
        return [*(registry.names() if hasattr(registry, "names") else registry), *extra]

    def advice(name) -> str:
        close = difflib.get_close_matches(str(name), [str(n) for n in names()], n=1)
        return f" (unknown {name!r}). Did you mean {close[0]!r}?" if close else f" (unknown {name!r})"

    return Check(lambda name: name in names(), lambda: "one of " + ", ".join(map(str, names())), advice)


positive = Check(lambda v: v > 0, "> 0")
non_negative = Check(lambda v: v >= 0, ">= 0")
finite = Check(math.isfinite, "a finite number")
probability = in_range(0.0, 1.0)
non_empty = Check(lambda items: len(items) > 0, "a non-empty list")


def field_checks(cls: type) -> dict[str, tuple[Check, ...]]:
    """The ``Check``s declared with ``Annotated`` on each init field of config class ``cls``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    checks = {}
    for f in dataclasses.fields(cls):
        if f.init and typing.get_origin(hints[f.name]) is typing.Annotated:
            checks[f.name] = tuple(m for m in hints[f.name].__metadata__ if isinstance(m, Check))
    return checks


def has_nan(value: Any) -> bool:
    """Whether a float value (or an item of a tuple or dict) is NaN: never a meaningful setting."""
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, Mapping):
        return any(has_nan(item) for item in value.values())
    return isinstance(value, tuple) and any(has_nan(item) for item in value)


def validate_config(config: Any, prefix: str = "") -> None:
    """Check every field of ``config`` (nested configs included) against the rules declared with
    it and the class's own ``validate()``; raise ``ConfigError`` naming the key, the value and
    what is allowed. No float may be NaN."""
    checks = field_checks(type(config))
    for name in field_annotations(type(config)):
        value, key = getattr(config, name), prefix + name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate_config(value, prefix=key + ".")
            continue
        if has_nan(value):
            raise ConfigError(f"{key} must be a number, got nan")
        for check in checks.get(name, ()):
            if value is not None and not check.holds(value):
                raise ConfigError(
                    f"{key} must be {check.describe()}, got {format_value(value) or 'an empty value'}{check.advice(value)}"
                )
    rules = getattr(config, "validate", None)
    if callable(rules):
        try:
            rules()
        except ConfigError as error:
            raise ConfigError(f"{prefix}{error}") from None


# --------------------------------------------------------------------------- comparing, showing


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def diff_configs(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Sorted dotted keys whose values differ between two config dicts (or exist in only one)."""
    flat_a, flat_b = flatten(a), flatten(b)
    missing = object()
    return sorted(
        key
        for key in flat_a.keys() | flat_b.keys()
        if flat_a.get(key, missing) != flat_b.get(key, missing)
    )


def format_value(value: Any) -> str:
    """A value written the way an override would set it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(format_value(item) for item in value)
    if isinstance(value, Mapping):
        return ",".join(f"{key}={format_value(item)}" for key, item in value.items())
    return str(value)


def describe_fields(config: Any) -> list[tuple[str, str, str]]:
    """(dotted key, type, current value in override syntax) for every settable field."""
    rows = []
    for key, annotation in leaf_annotations(type(config)).items():
        value = config
        for name in key.split("."):
            value = getattr(value, name)
        rows.append((key, format_type(annotation), format_value(value)))
    return rows


# --------------------------------------------------------------------------- comments


def field_comments(cls: type, prefix: str = "") -> dict[str, str]:
    """The explanatory comment of every field of config class ``cls`` that has one, by dotted key
    (nested configs' own fields and their fields included): the comment lines just above the field
    and the comment at the end of its line, read from the source, one line of text per comment
    line. Classes whose source cannot be read (defined in an interactive session) have none."""
    own: dict[str, str] = {}
    for base in reversed(cls.__mro__):  # a subclass's comment replaces its base class's
        own.update(class_comments(base))
    comments = {}
    for name, annotation in field_annotations(cls).items():
        key = prefix + name
        if name in own:
            comments[key] = own[name]
        if is_config_class(annotation):
            comments.update(field_comments(annotation, prefix=key + "."))
    return comments


@functools.cache
def class_comments(cls: type) -> dict[str, str]:
    """``{field name: comment}`` for the annotated fields written in ``cls``'s own class body
    (see ``field_comments``); empty when the source is not available."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
        body = ast.parse(source).body[0].body
        comment_lines = source_comments(source)
    except (OSError, TypeError, SyntaxError, IndexError, AttributeError, tokenize.TokenError):
        return {}
    comments = {}
    for statement in body:
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        above, line = [], statement.lineno - 1
        while line in comment_lines and comment_lines[line][0]:  # whole-line comments, nearest last
            above.insert(0, comment_lines[line][1])
            line -= 1
        trailing = comment_lines.get(statement.end_lineno)
        parts = above + ([trailing[1]] if trailing and not trailing[0] else [])
        if parts:
            comments[statement.target.id] = "\n".join(parts)
    return comments


def source_comments(source: str) -> dict[int, tuple[bool, str]]:
    """``{line number: (whether the comment is the whole line, its text without '#')}`` for every
    comment in Python ``source``."""
    lines = source.splitlines()
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, column = token.start
            whole_line = not lines[row - 1][:column].strip()
            comments[row] = (whole_line, token.string.lstrip("#").strip())
    return comments


# --------------------------------------------------------------------------- config files


CONFIG_FILE_FORMATS = {".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}


def read_config_file(path: Path | str) -> dict[str, Any]:
    """The mapping held by the YAML (``.yaml``/``.yml``) or JSON (``.json``) config file at
    ``path``; an empty YAML file holds an empty mapping. ``ConfigError`` naming the file for a
    missing or unreadable file, another file ending, text that does not parse or a top level that
    is not a mapping."""
    path = Path(path)
    kind = CONFIG_FILE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"config file {path}: unknown format {path.suffix or '(no ending)'!r}; "
                          "name it .yaml, .yml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; check the path given to --config") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise ConfigError(f"cannot read config file {path}: {reason}; pass a readable UTF-8 text file") from None
    data = parse_config_text(text, kind, path)
    if data is None and kind == "YAML":
        return {}
    if not isinstance(data, Mapping):
        found = "null" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"config file {path} must hold a mapping of config keys to values (e.g. "
                          f"{{\"seed\": 1}}), but its top level is {found}")
    return dict(data)


def parse_config_text(text: str, kind: str, path: Path) -> Any:
    """``text`` parsed as ``kind`` (``"YAML"`` or ``"JSON"``); ``ConfigError`` naming ``path``
    and where the text stops parsing."""
    import yaml

    try:
        return json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        detail = " ".join(str(error).split())
        raise ConfigError(f"config file {path} is not valid {kind}: {detail}; fix the file") from None


def mapping_entries(data: Mapping[Any, Any], leaves: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """The entries of a config file's nested mapping ``data`` as (dotted key, value as the file
    holds it), in the file's order, for a config class with settable dotted keys ``leaves``. A
    key may be dotted (``train.steps: 10``); a mapping under a key that is not a leaf is walked
    into (a nested config), one under a leaf is that leaf's value (a dict field's whole set of
    entries)."""
    entries = []
    for name, value in data.items():
        key = prefix + str(name)
        if isinstance(value, Mapping) and key not in leaves:
            entries += mapping_entries(value, leaves, prefix=key + ".")
        else:
            entries.append((key, value))
    return entries


def file_setting(key: str, data: Any, leaves: Mapping[str, Any]) -> tuple[Any, str]:
    """The typed value that a config file's ``data`` at dotted ``key`` sets (``value_from_data``)
    and the ``key=value`` override that sets the same value from the command line: the text
    ``format_value`` writes where it reads back to that value, else (a dict or a list whose text
    holds commas, say) JSON. ConfigError for a key that cannot be set or a value that does not
    fit, worded as for an override."""
    annotation = key_annotation(leaves, key)
    try:
        value = value_from_data(data, annotation)
    except ValueError:
        shown = data if isinstance(data, (Mapping, list, tuple)) else format_value(data)
        raise ConfigError(f"{key} expects {describe_type(annotation)}, got {shown!r}") from None
    return value, f"{key}={override_text(data, value, annotation)}"


def override_text(data: Any, value: Any, annotation: Any) -> str:
    """The text of an override that sets ``value`` (read from a file's ``data``) for
    ``annotation``: ``format_value(data)`` where ``parse_text`` reads it back to ``value``, else,
    for a dict or tuple, ``value`` as JSON (which ``parse_text`` reads item by item)."""
    text = format_value(data)
    if not isinstance(value, (Mapping, tuple)):
        return text
    try:
        if parse_text(text, annotation) == value:
            return text
    except ValueError:
        pass
    return json.dumps(to_plain(value), ensure_ascii=False)


def mapping_overrides(data: Mapping[Any, Any], leaves: Mapping[str, Any]) -> list[str]:
    """The ``key=value`` overrides that set the values of a config file's nested mapping
    ``data`` (``mapping_entries``, ``file_setting``), for a config class with settable dotted
    keys ``leaves``: applied with ``apply_overrides`` they give the config the file gives."""
    return [file_setting(key, value, leaves)[1] for key, value in mapping_entries(data, leaves)]


def config_file_overrides(cls: type, path: Path | str) -> list[str]:
    """The ``key=value`` overrides that set the values of the config file at ``path`` for config
    class ``cls`` (``read_config_file``, ``mapping_overrides``)."""
    return mapping_overrides(read_config_file(path), leaf_annotations(cls))


def apply_config_file(config: C, path: Path | str) -> tuple[C, list[str]]:
    """``config`` with the values of the YAML or JSON config file at ``path`` applied, and the
    ``key=value`` overrides that set the same values (``file_setting``; ``apply_overrides``
    applies them to the same effect, so a recorded command line reruns the file's config). A
    mapping or list value is taken item by item, so text in it may hold commas; a scalar is read
    as the text of a command-line override. An unknown key or a value that does not fit raises
    ``ConfigError`` naming the file."""
    leaves = leaf_annotations(type(config))
    overrides = []
    for key, data in mapping_entries(read_config_file(path), leaves):
        try:
            value, override = file_setting(key, data, leaves)
        except ConfigError as error:
            raise ConfigError(f"config file {path}: {error}") from None
        config = replace_path(config, key.split("."), value)
        overrides.append(override)
    return config, overrides


def config_to_yaml(config: Any, header: str = "") -> str:
    """``config`` as the text of a YAML config file: every field at its current value, nested
    configs as nested mappings, each field's comment (``field_comments``) beside it or above it,
    ``header`` (lines of text) as comments at the top. ``apply_config_file`` reads it back to an
    equal config."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += yaml_lines(config, field_comments(type(config)))
    return "\n".join(lines) + "\n"


def yaml_lines(config: Any, comments: Mapping[str, str], prefix: str = "", indent: str = "") -> list[str]:
    """The YAML lines of the fields of ``config`` (see ``config_to_yaml``), keys indented by
    ``indent``; ``comments`` by dotted key, ``prefix`` the dotted key of ``config``."""
    lines = []
    for name in field_annotations(type(config)):
        value, key = getattr(config, name), prefix + name
        comment = comments.get(key, "").splitlines()
        nested = dataclasses.is_dataclass(value) and not isinstance(value, type)
        text = "" if nested else " " + yaml_value(to_plain(value))
        block = len(comment) > 1 or (comment and nested)  # the comment goes above the key
        if (nested or block) and not indent and lines and lines[-1]:
            lines.append("")
        if block:
            lines += [f"{indent}# {line}".rstrip() for line in comment]
        trailing = f"  # {comment[0]}" if len(comment) == 1 and not nested else ""
        lines.append(f"{indent}{name}:{text}{trailing}")
        if nested:
            lines += yaml_lines(value, comments, prefix=key + ".", indent=indent + "  ")
    return lines


def yaml_value(value: Any) -> str:
    """A JSON-form value as one line of YAML (flow style; text with line breaks double-quoted
    with escapes)."""
    import yaml

    style = '"' if isinstance(value, str) and "\n" in value else None
    text = yaml.safe_dump(value, default_flow_style=True, default_style=style, width=float("inf"), allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...")
