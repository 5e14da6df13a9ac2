"""``jirl run chat``: a pretrained model's reply to one chat message.

    jirl run chat --set prompt="What is the capital of France?"
    jirl run chat --set model=path/to/model.gguf --set temperature=0.7 --set seed=3

The message is formatted with the model's own chat template, answered greedily (``temperature
= 0``, the default) or by sampling, and the reply is written to ``reply.txt`` (exactly as
decoded) and ``results.json`` in the run folder, then printed. The prompt and the reply are
printed as they are: never read as rich markup (``[bold]`` stays text), and never wrapped; when
stdout is not a terminal (a pipe or a file) they are written as plain text.

Settings are checked before any work: ``max_new_tokens >= 1``, ``temperature`` finite and
``>= 0``, ``top_p`` in ``(0, 1]``; once the model is loaded and before generating, the
chat-formatted prompt must be non-empty and leave room for ``max_new_tokens`` new tokens in the
model's context. Each failure is a ``ConfigError`` naming the setting.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Annotated, Any

import jax
import jax.numpy as jnp
from rich.console import Console
from rich.text import Text

from jirl.config import ConfigError, finite, in_range, non_negative, positive, validate_config
from jirl.experiment import RunDir, register_experiment
from jirl.mdp.sampler import SamplingConfig, generate
from jirl.models.pretrained import load_pretrained, pretrained_model

REPLY_FILE = "reply.txt"


@dataclasses.dataclass
class ChatConfig:
    seed: int = 0
    model: Annotated[str, pretrained_model] = "smollm2-135m-instruct"  # a preset name, a .gguf file, a Hugging Face folder or hub id
    prompt: str = "What is the capital of France?"
    system: str = ""  # a system message; empty: the template's default
    max_new_tokens: Annotated[int, positive] = 64  # prompt + max_new_tokens must fit the model's context
    temperature: Annotated[float, non_negative, finite] = 0.0  # 0: greedy
    top_p: Annotated[float, in_range(0.0, 1.0, open_low=True)] = 1.0  # 1: no nucleus filter


@register_experiment("chat", config=ChatConfig, description="a pretrained model's reply to one chat message")
def run(config: ChatConfig, run: RunDir) -> dict:
    validate_config(config)  # run_experiment did so already; this covers direct calls
    model = load_pretrained(config.model)
    tokenizer = model.tokenizer
    if tokenizer is None or tokenizer.chat_template is None:
        raise ConfigError(f"model {config.model!r} has no tokenizer with a chat template; chat needs both")
    if tokenizer.eos_id is None:
        raise ConfigError(f"model {config.model!r} has no end-of-turn (EOS) token; chat needs one to end the reply")
    prompt_ids = chat_prompt_ids(config, tokenizer, context=model.config.max_len)
    sampling = SamplingConfig(
        max_new_tokens=config.max_new_tokens, eos_id=tokenizer.eos_id, greedy=config.temperature == 0,
        temperature=config.temperature or 1.0, top_p=config.top_p,
    )
    out = generate(model.graphdef, model.params, jnp.asarray([prompt_ids]), jnp.asarray([len(prompt_ids)]), jax.random.key(config.seed), sampling)
    reply_ids = [int(t) for t in out.response_tokens[0, : int(out.response_lens[0])]]
    reply = tokenizer.decode(reply_ids, skip_special_tokens=True)
    # Saved first: nothing that follows (printing included) can lose the reply.
    reply_file = run.path_for(REPLY_FILE)
    reply_file.write_bytes(reply.encode("utf-8"))
    show_exchange(run.console, config.prompt, config.model, reply, reply_file)
    return {"model": config.model, "prompt": config.prompt, "prompt_ids": prompt_ids, "reply": reply, "reply_ids": reply_ids}


def chat_prompt_ids(config: ChatConfig, tokenizer: Any, context: int) -> list[int]:
    """The token ids of the chat-formatted prompt; ``ConfigError`` naming the setting when the
    template renders nothing, or the prompt and ``max_new_tokens`` do not fit in ``context``."""
    if config.max_new_tokens >= context:
        raise ConfigError(
            f"max_new_tokens={config.max_new_tokens} leaves no room for the prompt in the context of "
            f"{config.model!r} ({context} tokens); set max_new_tokens below {context}"
        )
    messages = ([{"role": "system", "content": config.system}] if config.system else []) + [
        {"role": "user", "content": config.prompt}
    ]
    text = tokenizer.apply_chat_template(messages)
    prompt_ids = tokenizer.encode(text) if text.strip() else []
    if not prompt_ids:
        raise ConfigError(
            f"prompt: the chat template of {config.model!r} renders an empty prompt for prompt={config.prompt!r} "
            f"and system={config.system!r}; give a non-empty prompt or use a model whose template writes the messages"
        )
    if len(prompt_ids) >= context:
        raise ConfigError(
            f"prompt: the chat-formatted prompt is {len(prompt_ids)} tokens, which leaves no room for a reply in the "
            f"context of {config.model!r} ({context} tokens); shorten prompt (and system)"
        )
    if len(prompt_ids) + config.max_new_tokens > context:
        raise ConfigError(
            f"max_new_tokens={config.max_new_tokens}: the prompt's {len(prompt_ids)} tokens + {config.max_new_tokens} "
            f"new tokens = {len(prompt_ids) + config.max_new_tokens} exceed the context of {config.model!r} "
            f"({context} tokens); set max_new_tokens <= {context - len(prompt_ids)} or shorten prompt"
        )
    return prompt_ids


def show_exchange(console: Console, prompt: str, model: str, reply: str, reply_file: Any = None) -> None:
    """Print ``user: prompt`` and ``model: reply`` exactly: on a terminal as rich ``Text`` (never
    markup, never wrapped), elsewhere as plain text. A failure to print is a warning on stderr
    (the reply is already saved in ``reply_file``)."""
    try:
        if console.is_terminal:
            text = Text.assemble(("user:", "bold"), f" {prompt}\n", (f"{model}:", "bold"), f" {reply}")
            console.print(text, soft_wrap=True, highlight=False, markup=False, emoji=False)
        else:
            write_plain(console.file, f"user: {prompt}\n{model}: {reply}\n")
    except (OSError, UnicodeError) as error:
        where = f"; it is saved in {reply_file}" if reply_file else ""
        print(f"warning: could not print the reply ({error}){where}", file=sys.stderr)


def write_plain(file: Any, text: str) -> None:
    """Write ``text`` unchanged, with characters the stream cannot encode backslash-escaped."""
    try:
        file.write(text)
    except UnicodeEncodeError:
        encoding = getattr(file, "encoding", None) or "ascii"
        file.write(text.encode(encoding, "backslashreplace").decode(encoding))
    file.flush()
