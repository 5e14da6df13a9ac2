"""``jirl run chat``: a pretrained model's reply to one chat message.

    jirl run chat --set prompt="What is the capital of France?"
    jirl run chat --set model=path/to/model.gguf --set temperature=0.7 --set seed=3

The message is formatted with the model's own chat template, answered greedily (``temperature
= 0``, the default) or by sampling, and the reply is printed and written to ``results.json``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jirl.config import ConfigError
from jirl.experiment import RunDir, register_experiment
from jirl.mdp.sampler import SamplingConfig, generate
from jirl.models.pretrained import load_pretrained


@dataclasses.dataclass
class ChatConfig:
    seed: int = 0
    model: str = "smollm2-135m-instruct"  # a preset name, a .gguf file or a Hugging Face folder
    prompt: str = "What is the capital of France?"
    system: str = ""  # a system message; empty: the template's default
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0


@register_experiment("chat", config=ChatConfig, description="a pretrained model's reply to one chat message")
def run(config: ChatConfig, run: RunDir) -> dict:
    if config.temperature < 0 or config.max_new_tokens < 1:
        raise ConfigError("need temperature >= 0 (0 is greedy) and max_new_tokens >= 1")
    model = load_pretrained(config.model)
    tokenizer = model.tokenizer
    if tokenizer is None or tokenizer.chat_template is None:
        raise ConfigError(f"model {config.model!r} has no tokenizer with a chat template; chat needs both")
    messages = ([{"role": "system", "content": config.system}] if config.system else []) + [{"role": "user", "content": config.prompt}]
    prompt_ids = tokenizer.encode_chat(messages)
    sampling = SamplingConfig(
        max_new_tokens=config.max_new_tokens, eos_id=tokenizer.eos_id, greedy=config.temperature == 0,
        temperature=config.temperature or 1.0, top_p=config.top_p,
    )
    out = generate(model.graphdef, model.params, jnp.asarray([prompt_ids]), jnp.asarray([len(prompt_ids)]), jax.random.key(config.seed), sampling)
    reply_ids = [int(t) for t in out.response_tokens[0, : int(out.response_lens[0])]]
    reply = tokenizer.decode(reply_ids, skip_special_tokens=True)
    run.console.print(f"[bold]user:[/bold] {config.prompt}\n[bold]{config.model}:[/bold] {reply}")
    return {"model": config.model, "prompt": config.prompt, "prompt_ids": prompt_ids, "reply": reply, "reply_ids": reply_ids}
