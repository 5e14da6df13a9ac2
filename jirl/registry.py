"""Name -> object registries (DESIGN.md contract 10).

Tasks, experiments, objectives and estimators register by name so that adding one is a single
decorated definition rather than another branch in an if-chain.

A registry of functions (advantage estimators, policy losses, credit schemes, preference
losses) also says what its functions may take. A registered function takes exactly the
arguments its equation needs (rlax style); its signature is its declaration:

* its leading positional parameters are what every caller passes (``rewards, mask``);
* a parameter named in the registry's ``inputs`` is an array or number the caller supplies
  when the function declares it (``group_ids``, ``values``, ``ref_chosen``, ``beta``, ...);
  without a default it is required;
* every other keyword-only parameter is an *option*, a hyperparameter set from a config
  (``clip_low``, ``eps``, ``label_smoothing``, ...).

``Registry.bind(name, options)`` reads the signature once, refuses an unknown option with a
``ConfigError`` naming the valid ones, and returns a ``Bound`` function that passes the
function only the inputs it declares. Each registry's module has one adapter built on it
(``advantage_fn``, ``policy_loss_fn``, ``credit_fn``, ``preference_loss_fn``).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Any, Callable, Collection, Generic, Iterator, Mapping, TypeVar

from jirl.config import ConfigError, JirlError

T = TypeVar("T")


class UnknownNameError(LookupError):
    """A registry lookup of a name that was never registered."""


class MissingInputError(JirlError, ValueError):
    """A registered function was called without an input it declares (``gae`` without values)."""


class Registry(Generic[T]):
    """A named collection whose lookups fail with the list of valid names."""

    def __init__(self, kind: str, inputs: Collection[str] = (), input_help: Mapping[str, str] | None = None):
        """``kind`` names an entry in messages; ``inputs`` are the keyword inputs callers may
        supply to registered functions (everything else keyword-only is an option), and
        ``input_help`` says how to get an input when a function is called without it."""
        self.kind = kind
        self.inputs = frozenset(inputs)
        self.input_help = dict(input_help or {})
        self._items: dict[str, T] = {}
        self._listeners: list[Callable[[str, T], None]] = []

    def register(self, name: str, item: T | None = None):
        """Register ``item`` under ``name``; without ``item``, return a decorator."""

        def add(obj: T) -> T:
            if name in self._items:
                if self._items[name] is not obj:
                    raise ValueError(f"{self.kind} {name!r} is already registered")
                return obj
            self._items[name] = obj
            for listener in self._listeners:
                listener(name, obj)
            return obj

        return add(item) if item is not None else add

    def get(self, name: str) -> T:
        """The item registered as ``name``; ``UnknownNameError`` (listing the known names and the
        closest match) if there is none."""
        if name not in self._items:
            raise UnknownNameError(self.unknown_message(name))
        return self._items[name]

    def unknown_message(self, name: str) -> str:
        """The message for a lookup of an unregistered ``name``: a "did you mean" hint when a
        registered name is close, then every registered name."""
        known = sorted(self._items)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(known) or '(none)'}"

    def on_register(self, listener: Callable[[str, T], None]) -> None:
        """Call ``listener(name, item)`` for every item registered so far and every one
        registered later (a plugin's too): how a registry derived from this one stays complete
        without importing its users."""
        self._listeners.append(listener)
        for name, item in list(self._items.items()):
            listener(name, item)

    def options(self, name: str) -> dict[str, Any]:
        """The options of the function registered as ``name``: its keyword-only parameters that
        are not inputs, with their defaults (``inspect.Parameter.empty`` when required)."""
        return _declaration(self.kind, name, self.get(name), self.inputs)[2]

    def bind(self, name: str, options: Mapping[str, Any] | None = None) -> Bound:
        """The function registered as ``name`` with ``options`` applied, as a ``Bound`` that
        passes it only the inputs it declares. An unknown option (or a missing required one) is
        a ``ConfigError`` naming the valid options and the closest one."""
        fn = self.get(name)
        declared, required, defaults = _declaration(self.kind, name, fn, self.inputs)
        options = dict(options or {})
        unknown = [key for key in options if key not in defaults]
        if unknown:
            raise ConfigError(self.unknown_option_message(name, unknown[0], defaults))
        missing = [key for key, default in defaults.items() if default is inspect.Parameter.empty and key not in options]
        if missing:
            raise ConfigError(f"{self.kind} {name!r} needs the option(s) {', '.join(missing)}; set them with its options")
        return Bound(self, name, fn, declared, required, {**defaults, **options})

    def unknown_option_message(self, name: str, option: str, valid: Collection[str]) -> str:
        """``"<kind> 'name' has no option 'cilp'. Did you mean 'clip'? Its options are: ..."``."""
        close = difflib.get_close_matches(option, list(valid), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        note = " (an input its caller supplies, not an option)" if option in self.inputs else ""
        valid_text = ", ".join(sorted(valid)) or "(none)"
        return f"{self.kind} {name!r} has no option {option!r}{note}.{hint} Its options are: {valid_text}"

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def _declaration(kind: str, name: str, fn: Callable, inputs: frozenset[str]):
    """``(the inputs fn declares, those of them it requires, its options with defaults)``, read
    from its signature. A function with ``**kwargs`` is refused: it would swallow a misspelt
    option."""
    parameters = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        raise TypeError(
            f"{kind} {name!r} takes **kwargs; a registered function takes exactly the arguments it uses "
            "(inputs it needs, options as keyword-only parameters with defaults)"
        )
    declared = frozenset(p.name for p in parameters if p.name in inputs)
    required = frozenset(p.name for p in parameters if p.name in inputs and p.default is p.empty)
    options = {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY and p.name not in inputs}
    return declared, required, options


@dataclasses.dataclass(frozen=True, eq=False)
class Bound:
    """A registered function with its options applied (``Registry.bind``).

    ``bound(*args, **inputs)`` calls ``fn(*args, **declared inputs, **options)``: of the
    registry's inputs it passes only those ``fn`` declares and that are not None (None means
    "not supplied", so fn's own default applies), and raises ``MissingInputError`` when one it
    requires is absent or None. A name that is not one of the registry's inputs is
    a ``TypeError``. Pure, so it can be jitted, vmapped and closed over.
    """

    registry: Registry
    name: str
    fn: Callable
    inputs: frozenset[str]  # the registry's inputs that fn declares
    required: frozenset[str]  # those without a default
    options: dict[str, Any]  # every option's value, given or default

    def __call__(self, *args, **supplied):
        strange = sorted(set(supplied) - self.registry.inputs)
        if strange:
            raise TypeError(
                f"{self.registry.kind} inputs are {', '.join(sorted(self.registry.inputs))}; got {', '.join(strange)}"
            )
        missing = sorted(key for key in self.required if supplied.get(key) is None)
        if missing:
            help_text = "".join(f"; {self.registry.input_help[k]}" for k in missing if k in self.registry.input_help)
            raise MissingInputError(
                f"{self.registry.kind} {self.name!r} needs {', '.join(f'{k}=...' for k in missing)}, got None{help_text}"
            )
        inputs = {key: value for key, value in supplied.items() if key in self.inputs and value is not None}
        return self.fn(*args, **inputs, **self.options)
