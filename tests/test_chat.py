"""``jirl run chat`` (experiments/chat.py) on a tiny random Llama (the ``tiny_llama`` fixture, a
32-token context) with a word-level tokenizer whose every ordinary word is rich markup: the
output is printed and saved exactly, and bad settings are one clear ``ConfigError``."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
from rich.console import Console
from tokenizers import Tokenizer as Backend
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from jirl.cli import main
from jirl.config import ConfigError
from jirl.experiment import run_experiment

FIXTURE = Path(__file__).parent / "models" / "fixtures" / "tiny_llama"
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MARKUP_PROMPT = "[/bold] hi"


def tiny_chat_model(folder: Path, template: str = CHATML) -> Path:
    """The tiny Llama with a 64-word tokenizer: the chat tokens, three role names, ``hi``, and
    words such as ``[/bold]token-07-of-the-reply`` (markup that rich cannot parse: a closing tag
    with nothing open), so that every reply is long and full of markup."""
    shutil.copytree(FIXTURE, folder)
    words = ["[UNK]", "<|im_start|>", "<|im_end|>", "user", "system", "assistant", "hi"]
    words += [f"[/bold]token-{i:02d}-of-the-reply" for i in range(64 - len(words))]
    backend = Backend(WordLevel({word: i for i, word in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    backend.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "chat_template": template}))
    return folder


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> str:
    return str(tiny_chat_model(tmp_path_factory.mktemp("models") / "tiny-chat"))


def chat(capsys, out: Path, *settings: str) -> tuple[int, str, str]:
    code = main(["run", "chat", "--out", str(out), "--set", *settings])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_markup_in_the_prompt_and_reply_is_printed_and_saved_as_text(chat_model, tmp_path, capsys):
    code, out, err = chat(capsys, tmp_path / "run", f"model={chat_model}", f"prompt={MARKUP_PROMPT}", "max_new_tokens=16")
    assert code == 0, err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    reply = results["reply"]
    assert "[/bold]token-" in reply and "\n" not in reply
    assert (tmp_path / "run" / "reply.txt").read_text(encoding="utf-8") == reply
    assert f"user: {MARKUP_PROMPT}\n{chat_model}: {reply}\n" in out


def test_piped_output_is_not_wrapped(chat_model, tmp_path, capsys):
    code, out, err = chat(capsys, tmp_path / "run", f"model={chat_model}", "prompt=hi", "max_new_tokens=16")
    assert code == 0, err
    reply = json.loads((tmp_path / "run" / "results.json").read_text())["reply"]
    line = f"{chat_model}: {reply}"
    assert len(line) > 80  # the test needs a reply longer than a default-width line
    assert line in out.splitlines()


def test_terminal_output_is_text_and_soft_wrapped():
    from experiments.chat import show_exchange

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system=None, width=30)
    reply = " ".join(f"[/bold]word{i} [red]x" for i in range(12))
    show_exchange(console, MARKUP_PROMPT, "tiny", reply)
    assert buffer.getvalue() == f"user: {MARKUP_PROMPT}\ntiny: {reply}\n"
    # Not a terminal (a pipe, a file): plain text, whatever width rich assumes.
    piped = io.StringIO()
    show_exchange(Console(file=piped, width=30), "hi", "tiny", "plain words " * 20)
    assert piped.getvalue() == f"user: hi\ntiny: {'plain words ' * 20}\n"


def test_the_reply_is_saved_before_it_is_printed(chat_model, tmp_path, monkeypatch):
    import experiments.chat

    def broken_print(*args, **kwargs):
        raise RuntimeError("the terminal went away")

    monkeypatch.setattr(experiments.chat, "show_exchange", broken_print)
    with pytest.raises(RuntimeError, match="went away"):
        run_experiment("chat", [f"model={chat_model}", "prompt=hi", "max_new_tokens=8"], out_dir=tmp_path / "run")
    assert (tmp_path / "run" / "reply.txt").read_text(encoding="utf-8").startswith("[/bold]token-")


@pytest.mark.parametrize(
    "setting, message",
    [
        ("top_p=0", r"top_p must be in \(0, 1\], got 0"),
        ("top_p=-1", r"top_p must be in \(0, 1\], got -1"),
        ("top_p=nan", "top_p must be a number, got nan"),
        ("top_p=1.5", r"top_p must be in \(0, 1\], got 1.5"),
        ("temperature=nan", "temperature must be a number, got nan"),
        ("temperature=-0.5", "temperature must be >= 0, got -0.5"),
        ("temperature=inf", "temperature must be a finite number, got inf"),
        ("max_new_tokens=0", "max_new_tokens must be > 0, got 0"),
        ("model= ", "model must be a known model"),
    ],
)
def test_bad_settings_are_one_error_line_before_any_loading(tmp_path, capsys, monkeypatch, setting, message):
    import experiments.chat

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(experiments.chat, "load_pretrained", no_loading)
    code, out, err = chat(capsys, tmp_path / "run", setting)
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


@pytest.mark.parametrize(
    "settings, message",
    [
        (["max_new_tokens=32"], r"max_new_tokens=32 leaves no room for the prompt in the context .* \(32 tokens\)"),
        (["max_new_tokens=500"], r"max_new_tokens=500 leaves no room"),
        (["prompt=" + " ".join(["hi"] * 40), "max_new_tokens=4"], r"prompt: the chat-formatted prompt is 45 tokens, which leaves no room"),
        (["prompt=hi hi hi", "max_new_tokens=25"], r"max_new_tokens=25: the prompt's 8 tokens \+ 25 new tokens = 33 exceed"),
    ],
)
def test_settings_that_do_not_fit_the_context_are_refused_before_generating(
    chat_model, tmp_path, capsys, monkeypatch, settings, message
):
    import experiments.chat

    def no_generating(*args, **kwargs):
        raise AssertionError("generate ran before the context checks")

    monkeypatch.setattr(experiments.chat, "generate", no_generating)
    code, out, err = chat(capsys, tmp_path / "run", f"model={chat_model}", *settings)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_a_template_rendering_an_empty_prompt_is_refused(tmp_path, capsys, monkeypatch):
    import experiments.chat

    model = tiny_chat_model(tmp_path / "empty-template", template="{% if false %}never{% endif %}")
    monkeypatch.setattr(experiments.chat, "generate", lambda *a, **k: pytest.fail("generate ran"))
    code, out, err = chat(capsys, tmp_path / "run", f"model={model}", "max_new_tokens=4")
    assert code == 2 and "error: prompt: the chat template of" in err and "renders an empty prompt" in err


def test_config_errors_are_config_errors(chat_model, tmp_path):
    with pytest.raises(ConfigError, match="top_p"):
        run_experiment("chat", ["top_p=0"], out_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match="max_new_tokens=40"):
        run_experiment("chat", [f"model={chat_model}", "max_new_tokens=40"], out_dir=tmp_path / "b")
