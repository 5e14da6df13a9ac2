"""jirl.registry: lookups, and registries of functions that declare their inputs and options
(``Registry.bind``), the one helper under the advantage, policy-loss, credit and preference
adapters."""

import pytest

from jirl.config import ConfigError, JirlError
from jirl.registry import MissingInputError, Registry, UnknownNameError


def scale(x, *, weights, offset=None, factor=2.0, bias=0.0):
    """``factor * x * weights + bias`` (+ ``offset`` when given): inputs ``weights``, ``offset``;
    options ``factor``, ``bias``."""
    out = factor * x * weights + bias
    return out if offset is None else out + offset


def registry() -> Registry:
    functions = Registry("scaler", inputs=("weights", "offset", "unused_input"), input_help={"weights": "pass weights=[B]"})
    functions.register("scale", scale)
    return functions


def test_options_are_the_keyword_only_parameters_that_are_not_inputs():
    assert registry().options("scale") == {"factor": 2.0, "bias": 0.0}


def test_bind_applies_options_and_passes_only_declared_inputs():
    bound = registry().bind("scale", {"factor": 3.0})
    assert bound.inputs == {"weights", "offset"} and bound.required == {"weights"}
    assert bound.options == {"factor": 3.0, "bias": 0.0}
    assert bound(2.0, weights=5.0, unused_input=1.0) == 30.0  # unused_input is not declared: not passed
    assert bound(2.0, weights=5.0, offset=1.0) == 31.0
    assert bound(2.0, weights=5.0, offset=None) == 30.0  # None: not supplied, the default applies


def test_a_misspelt_option_names_the_closest_and_every_valid_one():
    with pytest.raises(ConfigError) as info:
        registry().bind("scale", {"factr": 3.0})
    assert str(info.value) == "scaler 'scale' has no option 'factr'. Did you mean 'factor'? Its options are: bias, factor"
    with pytest.raises(ConfigError, match=r"no option 'weights' \(an input its caller supplies, not an option\)"):
        registry().bind("scale", {"weights": 1.0})
    with pytest.raises(UnknownNameError, match="Did you mean 'scale'"):
        registry().bind("scal")


def test_a_missing_input_or_a_strange_one_is_an_error():
    bound = registry().bind("scale")
    with pytest.raises(MissingInputError, match="scaler 'scale' needs weights=..., got None; pass weights=") as info:
        bound(1.0)
    assert isinstance(info.value, JirlError) and isinstance(info.value, ValueError)
    with pytest.raises(MissingInputError):
        bound(1.0, weights=None)
    with pytest.raises(TypeError, match="scaler inputs are offset, unused_input, weights; got wieghts"):
        bound(1.0, wieghts=1.0)


def test_required_options_and_var_keyword_functions():
    functions = Registry("thing", inputs=("x",))
    functions.register("needs_k", lambda *, x, k: x * k)
    functions.register("swallows", lambda *, x, **unused: x)
    with pytest.raises(ConfigError, match="thing 'needs_k' needs the option"):
        functions.bind("needs_k")
    assert functions.bind("needs_k", {"k": 3})(x=2) == 6
    with pytest.raises(TypeError, match=r"'swallows' takes \*\*kwargs"):
        functions.bind("swallows")


def test_on_register_sees_past_and_future_items_once():
    functions, seen = Registry("thing"), []
    functions.register("a", scale)
    functions.on_register(lambda name, item: seen.append(name))
    functions.register("b", scale)
    functions.register("b", scale)  # the same object again: nothing new
    assert seen == ["a", "b"]
    with pytest.raises(ValueError, match="already registered"):
        functions.register("b", lambda x: x)
