"""TFDS builders that write ``array_record`` files (no TensorFlow needed), and their readers.

- ``TaskDemonstrations``: expert demonstrations of a jirl task, sampled from its exact
  KL-regularised optimum (``jirl.mdp.demonstrations.from_optimum``).
- ``JsonlSft``: prompt/response text pairs from ``train.jsonl`` (and optional ``test.jsonl``)
  in the TFDS manual directory, tokenized with a character alphabet.

Both write the example records of ``jirl.data.examples``. Use them through ``prepare`` (build
once, reuse afterwards) and ``data_source`` (random access, for ``jirl.data.loader``)::

    builder = prepare(TaskDemonstrations, data_dir, task="sort", task_args=("num_digits=3",), beta=0.5)
    train = data_source(builder, "train")

Each config gets its own dataset directory ``data_dir/<builder>/<config name>/<version>``; the
config name is derived from all parameters that change the data, so different parameters never
share (or overwrite) a directory, and the same parameters always reuse it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jirl.data.errors import DataError
from jirl.data.examples import Example, examples_from_demonstrations, tokenize_rows
from jirl.data.jsonl import read_jsonl

FILE_FORMAT = "array_record"


# --------------------------------------------------------------------------- shared pieces


def example_features(max_len: int, horizon: int | None = None) -> tfds.features.FeaturesDict:
    """The TFDS features of an example record; with ``horizon``, also ``rewards [horizon]``."""
    features = {
        "tokens": tfds.features.Tensor(shape=(max_len,), dtype=np.int32),
        "prompt_len": tfds.features.Scalar(dtype=np.int32),
        "response_len": tfds.features.Scalar(dtype=np.int32),
    }
    if horizon is not None:
        features["rewards"] = tfds.features.Tensor(shape=(horizon,), dtype=np.float32)
    return tfds.features.FeaturesDict(features)


def _config_name(prefix: str, params: dict[str, Any]) -> str:
    """``prefix-<12 hex digits>``: a stable digest of ``params`` (JSON with sorted keys)."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{prefix}-{digest}"


def _reject_unknown(params: dict[str, Any], allowed: Sequence[str], builder: str) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise DataError(f"{builder} has no parameter(s) {unknown}; its parameters are {sorted(allowed)}")


# --------------------------------------------------------------------------- task demonstrations


@dataclasses.dataclass(eq=False)
class TaskDemonstrationsConfig(tfds.core.BuilderConfig):
    """Which demonstrations to generate (build it with ``TaskDemonstrations.make_config``)."""

    task: str = "bigram"
    task_args: tuple[str, ...] = ()
    beta: float = 1.0
    num_train: int = 1024
    num_test: int = 256
    seed: int = 0


class TaskDemonstrations(tfds.core.GeneratorBasedBuilder):
    """Expert demonstrations of a jirl task drawn from its exact KL-regularised optimum.

    Splits ``train`` (``num_train`` rows) and ``test`` (``num_test`` rows, absent when 0). With
    ``train_key, test_key = jax.random.split(jax.random.key(seed))`` the rows are exactly
    ``from_optimum(task, train_key, num_train, beta)`` (resp. ``test_key``/``num_test``), in
    order. Each example also carries its dense gold ``rewards [horizon]``.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Demonstrations from the exact optimum, with dense gold rewards."}
    PARAMS = ("task", "task_args", "beta", "num_train", "num_test", "seed")

    @classmethod
    def make_config(cls, **params) -> TaskDemonstrationsConfig:
        """A validated config named by a digest of the task's full parameters (defaults
        included, so ``task_args=()`` and the defaults spelled out share a directory)."""
        _reject_unknown(params, cls.PARAMS, cls.__name__)
        values = {f.name: f.default for f in dataclasses.fields(TaskDemonstrationsConfig) if f.name in cls.PARAMS}
        values.update(params)
        if isinstance(values["task_args"], str):
            raise DataError(f"task_args must be a tuple of 'key=value' strings, got the string {values['task_args']!r}")
        values["task_args"] = tuple(values["task_args"])
        _check_demonstration_sizes(values)
        task = _build_task(values["task"], values["task_args"])
        # The built task's full parameters replace task_args, so equal tasks share a name.
        identity = {key: value for key, value in values.items() if key != "task_args"}
        identity["task_params"] = _task_params(task)
        return TaskDemonstrationsConfig(
            name=_config_name(task.name, identity),
            description=f"demonstrations {json.dumps(identity, sort_keys=True, default=str)}",
            **values,
        )

    def _info(self) -> tfds.core.DatasetInfo:
        task = self._task()
        return tfds.core.DatasetInfo(
            builder=self,
            description="Expert demonstrations of a jirl task from its exact KL-regularised optimum.",
            features=example_features(task.prompt_width + task.horizon, horizon=task.horizon),
            disable_shuffling=True,  # keep generation order: row i is demonstration i
        )

    def _split_generators(self, dl_manager):
        import jax

        config = self.builder_config
        train_key, test_key = jax.random.split(jax.random.key(config.seed))
        splits = {"train": self._generate_examples(train_key, config.num_train)}
        if config.num_test:
            splits["test"] = self._generate_examples(test_key, config.num_test)
        return splits

    def _generate_examples(self, key, num: int):
        from jirl.mdp.demonstrations import from_optimum

        demos = from_optimum(self._task(), key, num, self.builder_config.beta)
        return enumerate(examples_from_demonstrations(demos))  # keys are row indices

    def _task(self):
        config = self.builder_config
        if not isinstance(config, TaskDemonstrationsConfig):
            raise DataError(
                "TaskDemonstrations needs a config; build it with "
                "prepare(TaskDemonstrations, data_dir, task=..., beta=...) or "
                "TaskDemonstrations(config=TaskDemonstrations.make_config(...), data_dir=..., file_format='array_record')"
            )
        if not hasattr(self, "_cached_task"):
            self._cached_task = _build_task(config.task, config.task_args)
        return self._cached_task


def _check_demonstration_sizes(values: dict[str, Any]) -> None:
    if not values["beta"] > 0:
        raise DataError(f"beta must be > 0 (the KL-regularisation strength), got {values['beta']}")
    if values["num_train"] < 1:
        raise DataError(f"num_train must be >= 1, got {values['num_train']}")
    if values["num_test"] < 0:
        raise DataError(f"num_test must be >= 0 (0 means no test split), got {values['num_test']}")
    if not 0 <= values["seed"] < 2**32:
        raise DataError(f"seed must be in [0, 2**32), got {values['seed']}")


def _build_task(name: str, args: tuple[str, ...]):
    from jirl.mdp.tasks import TaskConfig, build_task
    from jirl.registry import UnknownNameError

    try:
        return build_task(TaskConfig(name=name, args=tuple(args)))
    except UnknownNameError as error:
        raise DataError(str(error)) from None


def _task_params(task) -> dict[str, Any]:
    """The task's dataclass fields: its full identity, defaults included."""
    return {f.name: getattr(task, f.name) for f in dataclasses.fields(task)}


# --------------------------------------------------------------------------- JSONL SFT pairs


@dataclasses.dataclass(eq=False)
class JsonlSftConfig(tfds.core.BuilderConfig):
    """How to tokenize the manual JSONL files (build it with ``JsonlSft.make_config``).

    ``fingerprint`` is a digest of the manual files' bytes, part of the config name, so that
    editing the files gives a new dataset directory instead of silently reusing stale data.
    """

    alphabet: str = ""
    max_len: int = 64
    prompt_field: str = "prompt"
    response_field: str = "response"
    fingerprint: str = ""


class JsonlSft(tfds.core.GeneratorBasedBuilder):
    """Prompt/response pairs from ``train.jsonl`` (and optional ``test.jsonl``), either may be
    gzipped (``.jsonl.gz``), in the manual directory; tokenized by ``CharTokenizer(alphabet)``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Character-tokenized prompt/response pairs."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put train.jsonl (and optionally test.jsonl; .jsonl.gz also works) in the manual directory: "
        "one JSON object per line with string fields 'prompt' and 'response' (or the configured fields)."
    )
    PARAMS = ("alphabet", "max_len", "prompt_field", "response_field")
    SPLIT_FILES = {"train": True, "test": False}  # split -> required

    @classmethod
    def make_config(cls, manual_dir: str | os.PathLike, **params) -> JsonlSftConfig:
        """A validated config for the files now in ``manual_dir`` (their digest is part of it)."""
        _reject_unknown(params, cls.PARAMS, cls.__name__)
        if not params.get("alphabet"):
            raise DataError("JsonlSft needs alphabet=... (the characters the texts use), e.g. alphabet='abc '")
        values = {f.name: f.default for f in dataclasses.fields(JsonlSftConfig) if f.name in cls.PARAMS}
        values.update(params)
        _make_tokenizer(values["alphabet"])  # fail early on a bad alphabet
        values["fingerprint"] = _files_digest(cls.split_files(manual_dir).values())
        return JsonlSftConfig(
            name=_config_name(f"len{values['max_len']}", values),
            description=f"jsonl sft {json.dumps(values, sort_keys=True)}",
            **values,
        )

    @classmethod
    def split_files(cls, manual_dir: str | os.PathLike) -> dict[str, Path]:
        """The JSONL file of each split present in ``manual_dir``; ``DataError`` naming the
        expected path when the required ``train`` file is missing."""
        manual_dir = Path(manual_dir)
        found = {}
        for split, required in cls.SPLIT_FILES.items():
            candidates = [manual_dir / f"{split}.jsonl", manual_dir / f"{split}.jsonl.gz"]
            present = [path for path in candidates if path.is_file()]
            if present:
                found[split] = present[0]
            elif required:
                raise DataError(
                    f"JsonlSft expects {candidates[0]} (or {candidates[1].name}) but it is not there; "
                    "put your training rows in that file or pass manual_dir=... to prepare()"
                )
        return found

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Character-tokenized prompt/response pairs read from local JSONL files.",
            features=example_features(self._config().max_len),
            disable_shuffling=True,  # keep file order: row i is the i-th row of the file
        )

    def _split_generators(self, dl_manager):
        config = self._config()
        manual_dir = _manual_dir(dl_manager)
        files = self.split_files(manual_dir)
        if config.fingerprint and config.fingerprint != _files_digest(files.values()):
            raise DataError(
                f"the JSONL files in {manual_dir} changed after this config was made; "
                "make a new config (prepare(...) does so) so that the new data gets its own directory"
            )
        return {split: self._generate_examples(path) for split, path in files.items()}

    def _generate_examples(self, path: Path):
        config = self._config()
        rows, _ = read_jsonl(path, fields=(config.prompt_field, config.response_field))
        examples = tokenize_rows(
            rows,
            _make_tokenizer(config.alphabet),
            config.max_len,
            prompt_field=config.prompt_field,
            response_field=config.response_field,
            source=str(path),
        )
        return enumerate(examples)  # keys are row indices

    def _config(self) -> JsonlSftConfig:
        if not isinstance(self.builder_config, JsonlSftConfig):
            raise DataError(
                "JsonlSft needs a config; build it with prepare(JsonlSft, data_dir, alphabet=..., max_len=...)"
            )
        return self.builder_config


def _manual_dir(dl_manager) -> Path:
    try:
        return Path(dl_manager.manual_dir)
    except AssertionError as error:  # TFDS's way of saying the directory is missing or empty
        raise DataError(f"JsonlSft cannot read its manual directory: {error}") from None


def _make_tokenizer(alphabet: str):
    from jirl.mdp.tokenizer import CharTokenizer

    try:
        return CharTokenizer(alphabet)
    except ValueError as error:
        raise DataError(f"bad JsonlSft alphabet: {error}") from None


def _files_digest(paths) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- prepare and read


def default_manual_dir(data_dir: str | os.PathLike) -> Path:
    """Where TFDS looks for manual files by default: ``data_dir/downloads/manual``."""
    return Path(data_dir) / "downloads" / "manual"


def prepare(
    builder: type[tfds.core.GeneratorBasedBuilder] | tfds.core.GeneratorBasedBuilder,
    data_dir: str | os.PathLike | None = None,
    *,
    manual_dir: str | os.PathLike | None = None,
    **params,
) -> tfds.core.GeneratorBasedBuilder:
    """Build the dataset as ``array_record`` files under ``data_dir`` unless it already exists
    there (then the files are reused), and return the builder.

    ``builder`` is a builder class, configured by ``params`` through its ``make_config``, or
    an already configured instance (then ``params`` must be empty). ``manual_dir`` defaults to
    ``data_dir/downloads/manual``.
    """
    if isinstance(builder, type):
        if data_dir is None:
            raise DataError(f"prepare({builder.__name__}, ...) needs data_dir, the folder to write the dataset to")
        manual_dir = Path(manual_dir) if manual_dir is not None else default_manual_dir(data_dir)
        if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:  # the builder reads files from manual_dir
            params["manual_dir"] = manual_dir
        config = builder.make_config(**params)
        builder = builder(config=config, data_dir=os.fspath(data_dir), file_format=FILE_FORMAT)
    else:
        _check_instance(builder, data_dir, params)
        manual_dir = Path(manual_dir) if manual_dir is not None else default_manual_dir(builder.data_dir_root)
    remove_unfinished_builds(builder)
    download_config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
    with _quiet_tfds():
        builder.download_and_prepare(download_config=download_config)
    return builder


def remove_unfinished_builds(builder: tfds.core.GeneratorBasedBuilder) -> None:
    """Delete what a build killed part-way left behind: TFDS writes a dataset version into a
    sibling ``incomplete.<random>_<version>`` folder and renames it only when it is complete."""
    version_dir = Path(builder.data_dir)
    for leftover in version_dir.parent.glob(f"incomplete.*_{version_dir.name}"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _quiet_tfds():
    """Hide TFDS's per-split progress bars and its 'custom data configuration' warning."""
    from absl import logging as absl_logging

    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    tfds.disable_progress_bar()
    try:
        yield
    finally:
        absl_logging.set_verbosity(verbosity)
        tfds.enable_progress_bar()


def _check_instance(builder, data_dir, params) -> None:
    name = type(builder).__name__
    if params:
        raise DataError(f"prepare() got parameters {sorted(params)} for a built {name}; pass the class instead")
    if data_dir is not None and Path(data_dir).resolve() != Path(builder.data_dir_root).resolve():
        raise DataError(f"the {name} instance writes to {builder.data_dir_root}, not {data_dir}; pass data_dir=None")
    file_format = builder.info.file_format
    if file_format is None or file_format.value != FILE_FORMAT:
        raise DataError(
            f"the {name} instance writes {file_format.value if file_format else 'tfrecord'} files, which need "
            f"TensorFlow; create it with file_format={FILE_FORMAT!r}"
        )


def data_source(builder: tfds.core.DatasetBuilder, split: str = "train") -> "ExampleSource":
    """Random access to the examples of a prepared ``split`` (TFDS slicing such as
    ``"train[:80%]"`` works); items are dicts of numpy arrays with the features' dtypes."""
    available = sorted(builder.info.splits.keys())
    if not available:
        raise DataError(
            f"dataset {builder.info.full_name} is not prepared in {builder.data_dir_root}; call prepare() first"
        )
    base = split.split("[", 1)[0]
    if base not in available:
        raise DataError(f"dataset {builder.info.full_name} has no split {base!r}; its splits are {available}")
    return ExampleSource(builder.as_data_source(split), _feature_dtypes(builder))


def _feature_dtypes(builder) -> dict[str, np.dtype]:
    return {name: np.dtype(feature.np_dtype) for name, feature in builder.info.features.items()}


class ExampleSource(Sequence):
    """A random-access sequence of example dicts over TFDS records.

    TFDS returns scalar features as Python ints; this casts every field to its feature dtype so
    that examples (and the batches grain stacks from them) follow the record contract exactly.
    It pickles, so grain worker processes can use it.
    """

    def __init__(self, records, dtypes: dict[str, np.dtype]):
        self._records = records
        self._dtypes = dtypes

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Example:
        size = len(self)
        if not -size <= index < size:
            raise IndexError(f"example index {index} is out of range for {size} examples")
        return self._cast(self._records[index % size])

    def __getitems__(self, indices: Sequence[int]) -> list[Example]:
        return [self._cast(record) for record in self._records.__getitems__(list(indices))]

    def __repr__(self) -> str:
        return f"ExampleSource({self._records!r}, {len(self)} examples)"

    def _cast(self, record: dict[str, Any]) -> Example:
        return {key: np.asarray(value, dtype=self._dtypes[key]) for key, value in record.items()}
