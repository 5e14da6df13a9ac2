"""Log writers (issue 23, point 4): ``fit`` passes exactly what ``metrics.jsonl`` holds to any
writer it is given; TensorBoard stays the default; Weights & Biases works offline, into the run
folder, and a missing ``wandb`` package is named with its install command."""

import importlib.util
import json
import struct
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from jirl.config import JirlError, field_comments, validate_config
from jirl.experiment import RunDir
from jirl.models.transformer import Transformer, llama_tiny
from jirl.train.logging import (
    SAMPLES_FILE,
    LogConfig,
    MetricsWriter,
    MissingPackageError,
    TensorBoardWriter,
    TrainLogger,
    WandbWriter,
    format_samples,
    make_writers,
    replay_evaluation,
)
from jirl.train.loop import TrainConfig, fit
from jirl.train.sft import sft_loss
from jirl.train.step import init_train_state, make_update_step
from tests.train.test_fit_reads import Batches  # the same deterministic batches

HAVE_WANDB = importlib.util.find_spec("wandb") is not None
NEEDS_WANDB = pytest.mark.skipif(not HAVE_WANDB, reason="wandb is not installed (pip install wandb): the W&B writer is not tested")
TRAIN = TrainConfig(steps=6, checkpoint_every=6, eval_every=3, log_every=2)


class Recorder(MetricsWriter):
    """Keeps every call, to compare with the files."""

    def __init__(self):
        self.calls, self.texts, self.flushed, self.closed = [], [], 0, False

    def scalars(self, step, metrics, prefix=""):
        self.calls.append((step, prefix, dict(metrics)))

    def text(self, step, name, text):
        self.texts.append((step, name, text))

    def flush(self):
        self.flushed += 1

    def close(self):
        self.closed = True


@pytest.fixture(scope="module")
def model():
    graphdef, params = nnx.split(Transformer(llama_tiny(7, max_len=16), rngs=nnx.Rngs(0)))
    optimizer = optax.adam(1e-2)
    return params, optimizer, make_update_step(sft_loss(graphdef), optimizer)


def train(model, run: RunDir, **kwargs):
    params, optimizer, step_fn = model
    state = init_train_state(params, optimizer, jax.random.key(0))

    def evaluate(state):  # deterministic, changes with training
        return {"param_norm": float(optax.tree.norm(state.params)), "step_seen": float(state.step)}

    def samples(state):
        return [f"step {int(state.step)} sample {i}\n  indented" for i in range(2)]

    return fit(run, step_fn, state, Batches(), config={"x": 1}, train=TRAIN, progress=False,
               evaluate=evaluate, samples=samples, **kwargs)


def metrics_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def as_metrics_lines(calls) -> list[dict]:
    """The train and eval scalar calls written as metrics.jsonl writes them."""
    rows = []
    for step, prefix, metrics in calls:
        if prefix == "train":
            rows.append({"step": step, **metrics})
        elif prefix == "eval":
            rows.append({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
    return rows


def test_a_writer_given_to_fit_receives_exactly_what_metrics_jsonl_holds(tmp_path, model):
    recorder = Recorder()
    run = RunDir(tmp_path, console=None)
    train(model, run, logger=recorder)

    lines = metrics_lines(tmp_path)
    assert [row["step"] for row in lines] == [1, 2, 3, 3, 4, 5, 6, 6]  # train lines, eval at 3 and 6
    assert as_metrics_lines(recorder.calls) == lines  # same steps, same order, same values (exactly)
    assert {prefix for _, prefix, _ in recorder.calls} == {"train", "eval", "time"}
    timing = {step: row for step, prefix, row in recorder.calls if prefix == "time" and "step_seconds" in row}
    assert sorted(timing) == list(range(1, 7))
    assert [(s, p) for s, p, row in recorder.calls if "compile_seconds" in row] == [(1, "time")]

    # Decoded samples: in samples.jsonl and, as Markdown, to the writer, at the eval steps.
    samples = [json.loads(line) for line in (tmp_path / SAMPLES_FILE).read_text().splitlines()]
    assert [(row["step"], row["name"]) for row in samples] == [(3, "samples"), (6, "samples")]
    assert samples[1]["texts"] == ["step 6 sample 0\n  indented", "step 6 sample 1\n  indented"]
    assert recorder.texts == [(row["step"], "samples", format_samples(row["texts"])) for row in samples]

    # What fit was given is flushed, not closed; no TensorBoard unless asked for.
    assert recorder.flushed >= 1 and not recorder.closed
    assert not (tmp_path / "tensorboard").exists()


def test_several_writers_and_a_shared_train_logger(tmp_path, model):
    first, second = Recorder(), Recorder()
    run = RunDir(tmp_path, console=None)
    train(model, run, logger=[first, second])
    assert first.calls == second.calls and first.calls

    logger = TrainLogger(run, progress=False, writers=Recorder())
    with pytest.raises(ValueError, match="writes into"):
        train(model, RunDir(tmp_path / "other", console=None), logger=logger)
    train(model, RunDir(tmp_path / "again", console=None), logger=TrainLogger(RunDir(tmp_path / "again"), progress=False, writers=[]))
    logger.close()
    assert logger.writers[0].closed


def test_an_evaluation_logged_before_the_writers_is_replayed_to_them(tmp_path):
    run = RunDir(tmp_path, console=None)
    first, second = Recorder(), Recorder()
    replay_evaluation(run, [first], step=0)  # no metrics.jsonl yet: nothing to send
    run.log(0, **{"eval/nll": 2.5, "eval/accuracy": 0.25})
    run.log(1, loss=1.0)
    with (tmp_path / "metrics.jsonl").open("a") as metrics:
        metrics.write('{"step": 0, "eval/torn')  # a line cut by a kill is skipped
    replay_evaluation(run, [first, second], step=0)
    assert first.calls == second.calls == [(0, "eval", {"nll": 2.5, "accuracy": 0.25})]
    replay_evaluation(run, [first], step=1)  # a step without eval/ metrics sends nothing
    assert len(first.calls) == 1


def test_something_that_is_not_a_writer_is_refused(tmp_path, model):
    with pytest.raises(TypeError, match="not a log writer"):
        train(model, RunDir(tmp_path, console=None), logger=[object()])


def read_tensorboard(directory: Path):
    """Every event of the TFRecord event files in ``directory``."""
    from tensorboardX.proto import event_pb2

    files = sorted(directory.glob("events.out.tfevents.*"))
    assert files, f"no event file in {directory}"
    for path in files:
        data, position = path.read_bytes(), 0
        while position < len(data):
            (length,) = struct.unpack("<Q", data[position : position + 8])
            position += 12  # length and its CRC
            event = event_pb2.Event()
            event.ParseFromString(data[position : position + length])
            position += length + 4  # data and its CRC
            yield event


def test_tensorboard_is_the_default_and_its_events_hold_the_metrics(tmp_path, model):
    run = RunDir(tmp_path, console=None)
    train(model, run)  # no logger: TensorBoard, as before

    scalars, texts = {}, {}
    for event in read_tensorboard(tmp_path / "tensorboard"):
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == "text":
                texts[(event.step, value.tag)] = value.tensor.string_val[0].decode()
            else:
                scalars[(event.step, value.tag)] = value.simple_value
    expected = {}
    for row in metrics_lines(tmp_path):
        for name, value in row.items():
            if name != "step":
                expected[(row["step"], name if name.startswith("eval/") else f"train/{name}")] = np.float32(value)
    assert {k: v for k, v in scalars.items() if not k[1].startswith("time/")} == expected
    assert {k for k in scalars if k[1] == "time/step_seconds"} == {(s, "time/step_seconds") for s in range(1, 7)}
    assert (1, "time/compile_seconds") in scalars
    assert set(texts) == {(3, "samples/text_summary"), (6, "samples/text_summary")}
    assert "step 6 sample 1\n  indented" in texts[(6, "samples/text_summary")]


def wandb_records(path: Path):
    """The protobuf records of a ``run-*.wandb`` file (W&B's LevelDB-style log: a 7-byte
    header, then 32 KiB blocks of chunks each with a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if (kind == 0 and length == 0) or position + 7 + length > len(data):
            break  # the end, or a chunk still being written
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def finished_records(path: Path, timeout: float = 60.0) -> list:
    """The records of a finished run's file. W&B's service process may still be writing it
    for a moment after ``finish()`` returns: wait for the closing ``exit`` record."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    """W&B's own settings and caches in the test's folder; no network."""
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)


@NEEDS_WANDB
def test_wandb_offline_writes_the_run_into_the_run_folder(tmp_path, model, wandb_home):
    run = RunDir(tmp_path / "run", console=None)
    run.path.mkdir()
    log = LogConfig(tensorboard=False, wandb=True, wandb_mode="offline", wandb_project="jirl-test")
    validate_config(log)
    writers = make_writers(log, run, config={"x": 1, "train": {"steps": 6}})
    assert [type(w) for w in writers] == [WandbWriter]
    train(model, run, logger=writers)
    for writer in writers:
        writer.close()

    [run_file] = (run.path / "wandb").glob("offline-run-*/run-*.wandb")
    history, config, project = {}, {}, None
    for record in finished_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.setdefault(items["_step"], {}).update(items)
        elif kind == "run":
            project = record.run.project or project  # later run records may leave it out
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
    assert project == "jirl-test"
    assert config["x"] == 1 and config["train"] == {"steps": 6}
    for row in metrics_lines(run.path):
        for name, value in row.items():
            if name != "step":
                assert history[row["step"]][name if name.startswith("eval/") else f"train/{name}"] == value
    assert sorted(history) == [1, 2, 3, 4, 5, 6] and "time/step_seconds" in history[4]
    assert history[6]["samples/_type"] == "html-file"  # a media item: its fields are nested keys
    page = (run_file.parent / "files" / history[6]["samples/path"]).read_text()
    assert "step 6 sample 1\n  indented" in page


@NEEDS_WANDB
def test_a_resumed_wandb_writer_continues_the_same_wandb_run(tmp_path, wandb_home):
    first = WandbWriter(tmp_path, project="jirl-test")
    first.close()
    again = WandbWriter(tmp_path, project="jirl-test", resume=True)
    fresh = WandbWriter(tmp_path, project="jirl-test")
    again.close()
    fresh.close()
    assert again.run.id == first.run.id != fresh.run.id


def test_wandb_asked_for_but_missing_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    run = RunDir(tmp_path, console=None)
    with pytest.raises(MissingPackageError, match=r"pip install wandb") as error:
        make_writers(LogConfig(wandb=True), run)
    assert isinstance(error.value, JirlError) and isinstance(error.value, ImportError)
    with pytest.raises(JirlError, match=r"pip install wandb"):
        validate_config(LogConfig(wandb=True))  # refused before an experiment does any work
    assert not list(tmp_path.iterdir())  # nothing was started
    # Not asked for: no wandb needed.
    validate_config(LogConfig())
    writers = make_writers(LogConfig(), run)
    assert [type(w) for w in writers] == [TensorBoardWriter]
    writers[0].close()
    assert make_writers(LogConfig(tensorboard=False), run) == []


def test_log_config_checks_and_comments():
    with pytest.raises(JirlError, match="wandb_project"):
        validate_config(LogConfig(wandb=True, wandb_project=" "))
    comments = field_comments(LogConfig)
    assert set(comments) == {"tensorboard", "wandb", "wandb_project", "wandb_mode", "wandb_name"}
    assert all(comments.values())
