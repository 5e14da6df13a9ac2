"""Tests for jirl.config: command-line overrides, dict round trips and config diffs."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal, Optional

import pytest

from jirl.config import (
    ConfigError,
    JirlError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    describe_fields,
    diff_configs,
    validate_config,
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    d_model: int = 32
    activation: Literal["relu", "gelu"] = "relu"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    lr: float = 1e-2
    use_ema: bool = False
    name: str = "baseline"
    loss: Literal["mse", "ce"] = "mse"
    max_steps: int | None = None
    temperature: Optional[float] = 1.0
    betas: tuple[float, ...] = (0.1, 1.0)
    sizes: tuple[int, ...] = (1, 2)
    tags: tuple[str, ...] = ()
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)


@dataclasses.dataclass
class MutableConfig:
    seed: int = 0
    scale: float = 1.0


def override(text: str) -> TrainConfig:
    return apply_overrides(TrainConfig(), [text])


def error_for(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        override(text)
    return str(info.value)


# --------------------------------------------------------------------------- parsing


def test_int_parses_and_rejects_fractions():
    assert override("seed=3").seed == 3
    assert type(override("seed=3").seed) is int
    assert error_for("seed=1.5") == "seed expects an int, got '1.5'"
    assert error_for("seed=abc") == "seed expects an int, got 'abc'"


@pytest.mark.parametrize("text, expected", [("1e-3", 1e-3), ("2", 2.0), ("0.5", 0.5)])
def test_float_parses_scientific_and_integer_text(text, expected):
    value = override(f"lr={text}").lr
    assert value == expected and type(value) is float


def test_float_rejects_words():
    assert error_for("lr=fast") == "lr expects a float, got 'fast'"


@pytest.mark.parametrize("text", ["true", "True", "TRUE", "1", "yes", "Yes"])
def test_bool_true_spellings(text):
    assert override(f"use_ema={text}").use_ema is True


@pytest.mark.parametrize("text", ["false", "False", "0", "no", "NO"])
def test_bool_false_spellings(text):
    assert apply_overrides(TrainConfig(use_ema=True), [f"use_ema={text}"]).use_ema is False


def test_bool_rejects_other_words():
    message = error_for("use_ema=maybe")
    assert message.startswith("use_ema expects a bool")
    assert "'maybe'" in message


def test_str_keeps_text_verbatim_including_equals_signs():
    assert override("name=a=b c").name == "a=b c"


def test_literal_accepts_a_choice():
    assert override("loss=ce").loss == "ce"


def test_literal_rejects_others_and_lists_choices():
    message = error_for("loss=hinge")
    assert "loss" in message and "'hinge'" in message
    assert "'mse'" in message and "'ce'" in message


@pytest.mark.parametrize("text", ["none", "None", "null", "NULL"])
def test_optional_accepts_none_words(text):
    config = TrainConfig(max_steps=5, temperature=2.0)
    config = apply_overrides(config, [f"max_steps={text}", f"temperature={text}"])
    assert config.max_steps is None and config.temperature is None


def test_optional_parses_the_inner_type():
    assert override("max_steps=100").max_steps == 100
    assert override("temperature=0.7").temperature == 0.7


def test_optional_error_mentions_none():
    message = error_for("max_steps=lots")
    assert message == "max_steps expects an int or none, got 'lots'"


def test_tuples_are_comma_separated():
    assert override("betas=0.1,1,10").betas == (0.1, 1.0, 10.0)
    assert override("sizes=4, 8 ,16").sizes == (4, 8, 16)
    assert override("tags=a,b").tags == ("a", "b")
    assert override("tags=").tags == ()
    assert all(type(beta) is float for beta in override("betas=1,2").betas)


def test_tuple_rejects_a_bad_item():
    message = error_for("sizes=1,x,3")
    assert message.startswith("sizes expects a comma-separated list of int")
    assert "'1,x,3'" in message


def test_nested_key_sets_the_leaf_and_keeps_the_rest():
    config = apply_overrides(TrainConfig(seed=4), ["model.d_model=64", "model.activation=gelu"])
    assert config.model == ModelConfig(d_model=64, activation="gelu")
    assert config.seed == 4


def test_nested_leaf_errors_name_the_dotted_key():
    assert error_for("model.d_model=big") == "model.d_model expects an int, got 'big'"


def test_setting_a_nested_config_asks_for_a_leaf():
    message = error_for("model=3")
    assert "model is a nested config" in message
    assert "model.d_model" in message and "model.activation" in message


def test_overrides_return_new_instances_and_apply_in_order():
    original = TrainConfig()
    changed = apply_overrides(original, ["seed=1", "seed=2", "model.d_model=8"])
    assert changed.seed == 2 and changed.model.d_model == 8
    assert original == TrainConfig()
    assert apply_overrides(original, []) == original


def test_works_with_mutable_dataclasses():
    original = MutableConfig()
    changed = apply_overrides(original, ["scale=3"])
    assert changed.scale == 3.0 and original.scale == 1.0


# --------------------------------------------------------------------------- errors


def test_unknown_key_suggests_and_lists_valid_keys():
    message = error_for("lrr=0.1")
    assert "unknown config key 'lrr'" in message
    assert "Did you mean 'lr'?" in message
    assert "seed, lr, use_ema" in message and "model.d_model" in message


def test_unknown_nested_key_suggests_the_dotted_key():
    assert "Did you mean 'model.d_model'?" in error_for("model.d_modle=3")


def test_unknown_key_without_close_match_has_no_suggestion():
    message = error_for("zzzzzz=1")
    assert "Did you mean" not in message and "Valid keys:" in message


@pytest.mark.parametrize("text", ["seed", "=3", "  =3"])
def test_malformed_override_explains_the_form(text):
    message = error_for(text)
    assert repr(text) in message and "key=value" in message


def test_config_error_is_a_value_error_and_a_jirl_error():
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, JirlError)


# --------------------------------------------------------------------------- dicts


def test_to_dict_is_json_with_lists_and_nested_dicts():
    data = config_to_dict(TrainConfig(betas=(0.5,)))
    assert data["betas"] == [0.5]
    assert data["model"] == {"d_model": 32, "activation": "relu"}
    assert json.loads(json.dumps(data)) == data


def test_round_trip_through_json():
    config = apply_overrides(
        TrainConfig(), ["seed=9", "betas=1,2", "tags=x", "max_steps=none", "model.d_model=7"]
    )
    restored = config_from_dict(TrainConfig, json.loads(json.dumps(config_to_dict(config))))
    assert restored == config
    assert isinstance(restored.betas, tuple) and isinstance(restored.model, ModelConfig)


def test_from_dict_fills_missing_keys_with_defaults():
    restored = config_from_dict(TrainConfig, {"seed": 3, "model": {"d_model": 5}})
    assert restored == TrainConfig(seed=3, model=ModelConfig(d_model=5))


def test_from_dict_converts_int_to_float():
    restored = config_from_dict(TrainConfig, {"lr": 1, "betas": [1, 2]})
    assert type(restored.lr) is float and restored.betas == (1.0, 2.0)


def test_from_dict_rejects_unknown_keys_listing_them():
    with pytest.raises(ConfigError) as info:
        config_from_dict(TrainConfig, {"seed": 1, "extra": 2, "model": {"width": 3}})
    assert "extra" in str(info.value)
    with pytest.raises(ConfigError) as info:
        config_from_dict(TrainConfig, {"model": {"width": 3}})
    assert "model.width" in str(info.value) and "model.d_model" in str(info.value)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"seed": "x"}, "seed expects an int, got 'x'"),
        ({"seed": True}, "seed expects an int, got True"),
        ({"seed": 1.5}, "seed expects an int, got 1.5"),
        ({"use_ema": 1}, "use_ema expects a bool"),
        ({"loss": "hinge"}, "loss expects one of 'mse', 'ce'"),
        ({"sizes": [1, "a"]}, "sizes expects a comma-separated list of int"),
        ({"max_steps": "none"}, "max_steps expects an int or none"),
        ({"model": {"d_model": "wide"}}, "model.d_model expects an int, got 'wide'"),
        ({"model": 3}, "model expects a dict"),
    ],
)
def test_from_dict_type_checks_values(data, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict(TrainConfig, data)
    assert message in str(info.value)


# --------------------------------------------------------------------------- diffs and display


def test_diff_of_equal_configs_is_empty():
    data = config_to_dict(TrainConfig())
    assert diff_configs(data, json.loads(json.dumps(data))) == []


def test_diff_lists_dotted_keys_that_differ():
    a = config_to_dict(TrainConfig())
    b = config_to_dict(apply_overrides(TrainConfig(), ["seed=1", "model.d_model=3", "betas=5"]))
    assert diff_configs(a, b) == ["betas", "model.d_model", "seed"]


def test_diff_includes_keys_present_on_one_side_only():
    assert diff_configs({"a": 1, "m": {"x": 1}}, {"a": 1, "m": {"x": 1, "y": 2}}) == ["m.y"]
    assert diff_configs({"a": None}, {}) == ["a"]


def test_describe_fields_uses_override_syntax():
    rows = {key: (type_name, value) for key, type_name, value in describe_fields(TrainConfig())}
    assert rows["seed"] == ("int", "0")
    assert rows["use_ema"] == ("bool", "false")
    assert rows["max_steps"] == ("int | None", "none")
    assert rows["betas"] == ("tuple[float, ...]", "0.1,1.0")
    assert rows["model.d_model"] == ("int", "32")
    assert "model" not in rows


# --------------------------------------------------------------------------- dict fields (named options)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    name: str = "ppo"
    options: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    rl: LossConfig = dataclasses.field(default_factory=LossConfig)
    extra: dict[str, Any] = dataclasses.field(default_factory=lambda: {"keep": 1})


def test_a_dict_entry_is_set_by_its_name_and_parsed_by_the_value_type():
    config = apply_overrides(StudyConfig(), ["rl.options.clip_low=0.1", "rl.options.dual_clip=3"])
    assert config.rl.options == {"clip_low": 0.1, "dual_clip": 3.0}
    assert StudyConfig().rl.options == {}  # the default is not shared or changed
    again = apply_overrides(config, ["rl.options.clip_low=0.3"])
    assert again.rl.options == {"clip_low": 0.3, "dual_clip": 3.0} and config.rl.options["clip_low"] == 0.1


def test_any_values_parse_like_other_values():
    config = apply_overrides(StudyConfig(), ["extra.n=8", "extra.eps=1e-4", "extra.on=true", "extra.cap=none", "extra.kind=k3"])
    assert config.extra == {"keep": 1, "n": 8, "eps": 1e-4, "on": True, "cap": None, "kind": "k3"}
    assert type(config.extra["n"]) is int


def test_a_whole_dict_is_set_as_name_value_entries():
    config = apply_overrides(StudyConfig(), ["rl.options=clip_low=0.1,clip_high=0.3"])
    assert config.rl.options == {"clip_low": 0.1, "clip_high": 0.3}
    assert apply_overrides(config, ["rl.options="]).rl.options == {}


@pytest.mark.parametrize(
    "text, message",
    [
        ("rl.options.clip_low=wide", "rl.options.clip_low expects a float, got 'wide'"),
        ("rl.options=clip_low", "rl.options expects comma-separated name=value entries, each value a float"),
        ("rl.option.clip_low=0.1", "unknown config key 'rl.option.clip_low'"),
        ("rl.name.x=1", "unknown config key 'rl.name.x'"),  # only dict fields take entries
    ],
)
def test_bad_dict_overrides_are_config_errors(text, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides(StudyConfig(), [text])
    assert message in str(info.value)


def test_a_dict_round_trips_through_json_and_is_type_checked():
    config = apply_overrides(StudyConfig(), ["rl.options.clip_low=0.1", "extra.cap=none"])
    data = json.loads(json.dumps(config_to_dict(config)))
    assert data["rl"]["options"] == {"clip_low": 0.1}
    assert config_from_dict(StudyConfig, data) == config
    assert config_from_dict(StudyConfig, {"rl": {"options": {"clip": 1}}}).rl.options == {"clip": 1.0}
    for bad in ({"clip": "x"}, [1], {"clip": True}):
        with pytest.raises(ConfigError, match="rl.options expects comma-separated name=value entries"):
            config_from_dict(StudyConfig, {"rl": {"options": bad}})


def test_dict_fields_in_diffs_display_and_validation():
    a = config_to_dict(StudyConfig())
    b = config_to_dict(apply_overrides(StudyConfig(), ["rl.options.clip_low=0.1"]))
    assert diff_configs(a, b) == ["rl.options.clip_low"]
    shown = apply_overrides(StudyConfig(), ["rl.options=a=1,b=2.5", "extra.cap=none"])
    rows = {key: (type_name, value) for key, type_name, value in describe_fields(shown)}
    assert rows["rl.options"] == ("dict[str, float]", "a=1.0,b=2.5")
    assert rows["extra"] == ("dict[str, Any]", "keep=1,cap=none")
    assert apply_overrides(StudyConfig(), [f"rl.options={rows['rl.options'][1]}"]).rl.options == shown.rl.options
    with pytest.raises(ConfigError, match="must be a number, got nan"):
        validate_config(apply_overrides(StudyConfig(), ["rl.options.clip_low=nan"]))


# --------------------------------------------------------------------------- comments and config files


@dataclasses.dataclass(frozen=True)
class CommentedInner:
    # Width of each layer,
    # in units.
    width: int = 4  # must be even
    depth: int = 2


@dataclasses.dataclass(frozen=True)
class CommentedConfig:
    seed: int = 0  # the random seed

    # A blank line stops the block above: this comment belongs to nobody.

    lr: float = 1e-3
    note: str | None = "multi\nline: text"
    tags: tuple[str, ...] = ("a", "b")
    options: dict[str, float] = dataclasses.field(default_factory=lambda: {"clip": 0.2})
    inner: CommentedInner = dataclasses.field(default_factory=CommentedInner)  # the inner part


@dataclasses.dataclass(frozen=True)
class CommentedChild(CommentedConfig):
    seed: int = 1  # the child's seed


def test_field_comments_read_trailing_and_block_comments_by_dotted_key():
    from jirl.config import field_comments

    assert field_comments(CommentedConfig) == {
        "seed": "the random seed",
        "inner": "the inner part",
        "inner.width": "Width of each layer,\nin units.\nmust be even",
    }
    assert field_comments(CommentedChild)["seed"] == "the child's seed"  # a subclass's own comment wins
    assert field_comments(CommentedChild)["inner"] == "the inner part"  # inherited
    assert field_comments(dataclasses.make_dataclass("Made", [("seed", int, 0)])) == {}  # no source


def test_file_mapping_becomes_overrides_nested_dotted_and_whole_dicts():
    from jirl.config import leaf_annotations, mapping_overrides

    leaves = leaf_annotations(StudyConfig)
    data = {"rl": {"name": "ppo", "options": {"clip_low": 0.1, "dual_clip": 3}}, "extra.cap": None, "rl.options.x": 1}
    assert mapping_overrides(data, leaves) == [
        "rl.name=ppo", "rl.options=clip_low=0.1,dual_clip=3", "extra.cap=none", "rl.options.x=1"
    ]
    config = apply_overrides(StudyConfig(), mapping_overrides(data, leaves))
    assert config.rl.options == {"clip_low": 0.1, "dual_clip": 3.0, "x": 1.0} and config.extra["cap"] is None


def write(path, text):
    path.write_text(text)
    return path


def test_apply_config_file_types_values_like_overrides(tmp_path):
    from jirl.config import apply_config_file

    path = write(tmp_path / "c.yaml", "seed: 4\nlr: 1e-4\nbetas: [1, 2]\nmax_steps: null\nmodel.d_model: 16\nmodel: {activation: gelu}\n")
    config, overrides = apply_config_file(TrainConfig(max_steps=3), path)
    assert config == TrainConfig(seed=4, lr=1e-4, betas=(1.0, 2.0), max_steps=None, model=ModelConfig(16, "gelu"))
    assert overrides == ["seed=4", "lr=1e-4", "betas=1,2", "max_steps=none", "model.d_model=16", "model.activation=gelu"]
    assert apply_overrides(TrainConfig(max_steps=3), overrides) == config  # the same path as --set


def test_an_empty_yaml_file_changes_nothing(tmp_path):
    from jirl.config import apply_config_file

    path = write(tmp_path / "c.yaml", "# everything commented out\n")
    assert apply_config_file(TrainConfig(), path) == (TrainConfig(), [])


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("c.yaml", "lrr: 1\n", "c.yaml: unknown config key 'lrr'. Did you mean 'lr'?"),
        ("c.yaml", "loss: hinge\n", "c.yaml: loss expects one of 'mse', 'ce', got 'hinge'"),
        ("c.yaml", "a: [\n", "c.yaml is not valid YAML"),
        ("c.json", "[1]", "top level is a list"),
        ("c.txt", "seed: 1", "unknown format '.txt'"),
    ],
)
def test_config_file_errors_name_the_file(tmp_path, name, text, message):
    from jirl.config import apply_config_file

    with pytest.raises(ConfigError) as info:
        apply_config_file(TrainConfig(), write(tmp_path / name, text))
    assert message in str(info.value) and str(tmp_path / name) in str(info.value)


def test_yaml_of_a_config_has_comments_and_reads_back_equal(tmp_path):
    import yaml

    from jirl.config import apply_config_file, config_to_yaml

    config = CommentedConfig(seed=5, lr=2.5e-7, note="x: y\nz", options={"clip": 0.5, "b": 1.0}, tags=())
    text = config_to_yaml(config, header="first\nsecond")
    assert text.startswith("# first\n# second\nseed: 5  # the random seed\n")
    assert "# the inner part\ninner:\n  # Width of each layer,\n  # in units.\n  # must be even\n  width: 4\n" in text
    assert 'note: "x: y\\nz"\n' in text  # one line per key: line breaks escaped
    assert yaml.safe_load(text)["note"] == "x: y\nz"
    restored, _ = apply_config_file(CommentedConfig(), write(tmp_path / "c.yaml", text))
    assert restored == config
    with_none, _ = apply_config_file(CommentedConfig(), write(tmp_path / "n.yaml", config_to_yaml(CommentedConfig(note=None))))
    assert with_none.note is None


@dataclasses.dataclass(frozen=True)
class ColumnsConfig:
    columns: dict[str, str] = dataclasses.field(default_factory=lambda: {"prompt": "prompt"})
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    tags: tuple[str, ...] = ()
    sizes: tuple[int, ...] | None = None


COMMA_FILES = {
    "c.yaml": 'columns: {prompt: "a,b", answer: "x=y"}\nweights: {"w,1": 1e-3}\ntags: ["p,q", " r"]\nsizes: [1, 2]\n',
    "c.json": json.dumps({"columns": {"prompt": "a,b", "answer": "x=y"}, "weights": {"w,1": 0.001},
                          "tags": ["p,q", " r"], "sizes": [1, 2]}),
}


@pytest.mark.parametrize("name", sorted(COMMA_FILES))
def test_config_file_mapping_and_list_values_keep_their_commas(tmp_path, name):
    from jirl.config import apply_config_file

    config, overrides = apply_config_file(ColumnsConfig(), write(tmp_path / name, COMMA_FILES[name]))
    assert config == ColumnsConfig(columns={"prompt": "a,b", "answer": "x=y"}, weights={"w,1": 1e-3},
                                   tags=("p,q", " r"), sizes=(1, 2))
    assert overrides[0] == 'columns={"prompt": "a,b", "answer": "x=y"}'  # JSON: the entries text would split
    assert overrides[3] == "sizes=1,2"  # the plain form where it reads back the same
    assert apply_overrides(ColumnsConfig(), overrides) == config  # the recorded overrides rerun it
    assert apply_overrides(config, ["columns.prompt=z"]).columns == {"prompt": "z", "answer": "x=y"}  # --set wins


def test_dict_and_tuple_overrides_may_be_json():
    config = apply_overrides(ColumnsConfig(), ['columns={"prompt": "a,b"}', 'tags=["c,d"]', "sizes=[3]", "weights={}"])
    assert config == ColumnsConfig(columns={"prompt": "a,b"}, tags=("c,d",), sizes=(3,))
    assert apply_overrides(ColumnsConfig(), ["tags=[a,b"]).tags == ("[a", "b")  # not JSON: the comma-separated form
    with pytest.raises(ConfigError, match=r"weights expects .* \(or a JSON object\), got '\{\"a\": \"x\"\}'"):
        apply_overrides(ColumnsConfig(), ['weights={"a": "x"}'])


def test_a_config_file_value_of_the_wrong_shape_names_the_key(tmp_path):
    from jirl.config import apply_config_file

    with pytest.raises(ConfigError, match=r"c.yaml: weights expects .*, got \{'a': 'x'\}"):
        apply_config_file(ColumnsConfig(), write(tmp_path / "c.yaml", "weights: {a: x}\n"))
    with pytest.raises(ConfigError, match=r"sizes expects .*, got \['a'\]"):
        apply_config_file(ColumnsConfig(), write(tmp_path / "c.yaml", "sizes: [a]\n"))
