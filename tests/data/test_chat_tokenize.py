"""Canonical rows to token examples with a model's tokenizer and chat template (jirl.data.chat_tokenize)."""

from __future__ import annotations

import numpy as np
import pytest

from jirl.data.chat_tokenize import (
    ChatTokenization,
    fit_prompt_and_responses,
    tokenize_preference_row,
    tokenize_prompt_row,
    tokenize_sft_row,
    tokenize_unpaired_row,
)
from jirl.data.conversations import PreferenceRow, PromptRow, SftRow, UnpairedRow
from jirl.data.errors import DataError
from jirl.data.preferences import tokenize_preference
from jirl.mdp.tokenizer import ByteTokenizer
from jirl.models.tokenizers import Tokenizer, byte_level_bpe_from_metadata, byte_to_unicode

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS = 2  # <|im_end|>


def byte_chat_tokenizer(template: str | None = CHATML) -> Tokenizer:
    """Byte-level BPE without merges: ChatML's three special tokens (ids 0-2), then byte ``b`` is id ``3 + b``."""
    spelling = byte_to_unicode()
    backend = byte_level_bpe_from_metadata({
        "tokenizer.ggml.tokens": SPECIALS + [spelling[b] for b in range(256)],
        "tokenizer.ggml.token_type": [3] * len(SPECIALS) + [1] * 256,
        "tokenizer.ggml.pre": "gpt2",
    })
    return Tokenizer(backend, bos_token="<|im_start|>", eos_token="<|im_end|>", chat_template=template, source="test")


def byte_ids(text: str) -> list[int]:
    return [3 + b for b in text.encode("utf-8")]


def decode(tokenizer: Tokenizer, ids) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict:
    return {"role": "system", "content": text}


def preference(prompt="Hi", chosen="Hello", rejected="Go away", conversational=True, where="pairs.jsonl:3", **kw):
    prompt = [user(prompt)] if isinstance(prompt, str) else prompt
    return PreferenceRow(prompt, [assistant(chosen)], [assistant(rejected)], where, conversational, **kw)


def response_of(example, name):
    start = int(example["prompt_len"])
    return example[name][start : start + int(example[f"{name}_len"])]


def masked_runs(tokens, mask) -> list[list[int]]:
    """The runs of consecutive tokens where ``mask`` is 1."""
    runs, current = [], []
    for token, on in zip(tokens.tolist(), mask.tolist()):
        if on:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


PROMPT_TEXT = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


# --------------------------------------------------------------------------- preference rows


def test_preference_row_with_chatml_renders_prompt_and_replies_ending_at_im_end():
    tokenizer = byte_chat_tokenizer()
    result = tokenize_preference_row(preference(margin=0.5), tokenizer, ChatTokenization(max_len=64))
    example = result.example
    prompt_len = int(example["prompt_len"])
    assert decode(tokenizer, example["chosen"][:prompt_len]) == PROMPT_TEXT
    np.testing.assert_array_equal(example["chosen"][:prompt_len], example["rejected"][:prompt_len])
    # The template writes "\n" after <|im_end|>: not part of the reply, which ends with EOS.
    assert decode(tokenizer, response_of(example, "chosen")) == "Hello<|im_end|>"
    assert decode(tokenizer, response_of(example, "rejected")) == "Go away<|im_end|>"
    expected_chosen = tokenizer.encode(PROMPT_TEXT) + byte_ids("Hello") + [EOS]
    np.testing.assert_array_equal(example["chosen"], expected_chosen + [EOS] * (64 - len(expected_chosen)))
    assert example["chosen"].dtype == np.int32 and example["prompt_len"].dtype == np.int32
    assert example["margin"] == np.float32(0.5) and example["margin"].dtype == np.float32
    assert (result.prompt_truncated, result.response_truncated, result.prompt_tokens) == (False, False, prompt_len)


def test_standard_and_conversational_forms_give_the_same_tokens_with_auto():
    tokenizer = byte_chat_tokenizer()
    settings = ChatTokenization(max_len=64)
    standard = tokenize_preference_row(preference(conversational=False), tokenizer, settings).example
    conversational = tokenize_preference_row(preference(conversational=True), tokenizer, settings).example
    assert standard.keys() == conversational.keys()
    for key in standard:
        np.testing.assert_array_equal(standard[key], conversational[key], err_msg=key)
    assert decode(tokenizer, standard["chosen"][: standard["prompt_len"]]) == PROMPT_TEXT


def test_chat_template_none_writes_plain_text():
    tokenizer = byte_chat_tokenizer()
    example = tokenize_preference_row(
        preference(conversational=False), tokenizer, ChatTokenization(max_len=16, chat_template="none")
    ).example
    np.testing.assert_array_equal(example["chosen"], byte_ids("HiHello") + [EOS] * 9)
    assert (example["prompt_len"], example["chosen_len"], example["rejected_len"]) == (2, 6, 8)


def test_plain_text_matches_tokenize_preference_of_the_preferences_module():
    # A tokenizer without a template ("auto" falls back to plain text) and a single-turn
    # conversational row: the same arrays as the existing text-pair path.
    row = preference(prompt="hello", chosen="abcdefgh", rejected="z")
    ours = tokenize_preference_row(row, ByteTokenizer(), ChatTokenization(max_len=6)).example
    theirs = tokenize_preference(ByteTokenizer(), "hello", "abcdefgh", "z", max_len=6)
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_a_reply_without_eos_text_gets_the_eos_id():
    # A template that ends turns with "<|endoftext|>", not the tokenizer's EOS text.
    template = CHATML.replace("'<|im_end|>' + '\n'", "'<|endoftext|>'")
    tokenizer = byte_chat_tokenizer(template)
    example = tokenize_preference_row(preference(), tokenizer, ChatTokenization(max_len=64)).example
    assert decode(tokenizer, response_of(example, "chosen")) == "Hello<|endoftext|><|im_end|>"


def test_chat_template_given_in_the_settings_replaces_the_tokenizers():
    tokenizer = byte_chat_tokenizer(template=None)
    settings = ChatTokenization(max_len=64, chat_template=CHATML)
    example = tokenize_preference_row(preference(), tokenizer, settings).example
    assert decode(tokenizer, example["chosen"][: example["prompt_len"]]) == PROMPT_TEXT
    assert tokenizer.chat_template is None


# --------------------------------------------------------------------------- SFT rows

CONVERSATION = [
    system("Be kind."),
    user("Q1"),
    assistant("A1"),
    user("Q2"),
    assistant("A2"),
]


def test_multi_turn_sft_masks_exactly_the_assistant_replies():
    tokenizer = byte_chat_tokenizer()
    row = SftRow(CONVERSATION, "chat.jsonl:1", conversational=True)
    example = tokenize_sft_row(row, tokenizer, ChatTokenization(max_len=128)).example
    tokens, mask = example["tokens"], example["loss_mask"]
    assert [decode(tokenizer, run) for run in masked_runs(tokens, mask)] == ["A1<|im_end|>", "A2<|im_end|>"]
    prompt_len, response_len = int(example["prompt_len"]), int(example["response_len"])
    assert decode(tokenizer, tokens[:prompt_len]) == (
        "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n"
    )
    # The response runs to the last trained token; everything after it is padding, unmasked.
    full = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=False)
    assert decode(tokenizer, tokens[: prompt_len + response_len]) == full.removesuffix("\n")
    assert mask[prompt_len + response_len - 1] == 1 and not mask[prompt_len + response_len :].any()
    assert not mask[:prompt_len].any()
    response = slice(prompt_len, prompt_len + response_len)
    unmasked_response = tokens[response][mask[response] == 0]
    assert decode(tokenizer, unmasked_response) == "\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n"
    assert set(np.unique(mask).tolist()) == {0, 1}


def test_single_turn_sft_mask_is_the_response_span():
    tokenizer = byte_chat_tokenizer()
    row = SftRow([user("Hi"), assistant("Hello")], "chat.jsonl:2", conversational=False)
    example = tokenize_sft_row(row, tokenizer, ChatTokenization(max_len=64)).example
    prompt_len, response_len = int(example["prompt_len"]), int(example["response_len"])
    response_span = np.arange(prompt_len, prompt_len + response_len)
    np.testing.assert_array_equal(np.flatnonzero(example["loss_mask"]), response_span)
    assert decode(tokenizer, example["tokens"][prompt_len : prompt_len + response_len]) == "Hello<|im_end|>"


def test_sft_turns_after_the_last_reply_are_left_out():
    tokenizer = byte_chat_tokenizer()
    row = SftRow([user("Q1"), assistant("A1"), user("unanswered")], "chat.jsonl:3", conversational=True)
    example = tokenize_sft_row(row, tokenizer, ChatTokenization(max_len=64)).example
    end = int(example["prompt_len"] + example["response_len"])
    assert decode(tokenizer, example["tokens"][:end]).endswith("A1<|im_end|>")
    assert (example["tokens"][end:] == EOS).all()


def test_plain_sft_row_without_template():
    row = SftRow([user("ab"), assistant("cd")], "sft.jsonl:1", conversational=False)
    example = tokenize_sft_row(row, ByteTokenizer(), ChatTokenization(max_len=8)).example
    np.testing.assert_array_equal(example["tokens"], ByteTokenizer().encode("abcd") + [0, 0, 0, 0])
    np.testing.assert_array_equal(example["loss_mask"], [0, 0, 1, 1, 1, 0, 0, 0])
    assert (example["prompt_len"], example["response_len"]) == (2, 3)


# --------------------------------------------------------------------------- unpaired and prompt rows


def test_unpaired_row_has_its_label():
    tokenizer = byte_chat_tokenizer()
    settings = ChatTokenization(max_len=64)
    good = UnpairedRow([user("Hi")], [assistant("Hello")], True, "kto:1", True)
    bad = UnpairedRow([user("Hi")], [assistant("No")], False, "kto:2", True)
    good, bad = (tokenize_unpaired_row(row, tokenizer, settings) for row in (good, bad))
    assert (good.example["label"], bad.example["label"]) == (1, 0) and good.example["label"].dtype == np.int32
    example = good.example
    assert decode(tokenizer, example["tokens"][: example["prompt_len"]]) == PROMPT_TEXT
    start = int(example["prompt_len"])
    assert decode(tokenizer, example["tokens"][start : start + int(example["response_len"])]) == "Hello<|im_end|>"


def test_prompt_row_holds_the_prompt_with_the_assistant_header():
    tokenizer = byte_chat_tokenizer()
    result = tokenize_prompt_row(PromptRow([user("Hi")], "rl:1", True, {"answer": "4"}), tokenizer,
                                 ChatTokenization(max_len=64))
    example = result.example
    assert example["response_len"] == 0 and example["prompt_len"] == len(tokenizer.encode(PROMPT_TEXT))
    assert decode(tokenizer, example["tokens"][: example["prompt_len"]]) == PROMPT_TEXT
    assert (example["tokens"][example["prompt_len"] :] == EOS).all()
    plain = tokenize_prompt_row(PromptRow([user("Hi")], "rl:1", False), tokenizer,
                                ChatTokenization(max_len=4, chat_template="none")).example
    np.testing.assert_array_equal(plain["tokens"], byte_ids("Hi") + [EOS, EOS])


# --------------------------------------------------------------------------- truncation


def test_fit_prompt_and_responses_keeps_the_prompt_end_and_cuts_responses():
    fitted = fit_prompt_and_responses([1, 2, 3, 4, 5], [[6, 7, 0], [8, 0]], max_len=6)
    assert (fitted.prompt, fitted.responses) == ([3, 4, 5], [[6, 7, 0], [8, 0]])
    assert fitted.prompt_truncated and not fitted.response_truncated
    fitted = fit_prompt_and_responses([1, 2, 3, 4, 5], [[6, 7, 8, 9, 10, 11, 0], [8, 0]], max_len=6)
    assert (fitted.prompt, fitted.responses) == ([5], [[6, 7, 8, 9, 10], [8, 0]])
    assert fitted.prompt_truncated and fitted.response_truncated
    fitted = fit_prompt_and_responses([1, 2, 3, 4, 5], [[6, 0]], max_len=20, max_prompt_len=2)
    assert (fitted.prompt, fitted.responses, fitted.prompt_truncated) == ([4, 5], [[6, 0]], True)
    fitted = fit_prompt_and_responses([1, 2], [[6, 0]], max_len=4, max_prompt_len=2)
    assert (fitted.prompt, fitted.prompt_truncated, fitted.response_truncated) == ([1, 2], False, False)


def test_with_max_prompt_len_the_prompt_keeps_its_budget_and_responses_are_cut():
    """TRL's order: the prompt is cut to max_prompt_len first, the responses to the room left
    (not the prompt down to one token to make room for long responses)."""
    fitted = fit_prompt_and_responses([1, 2, 3, 4, 5], [[6, 7, 8, 9, 10, 11, 0], [8, 0]], max_len=6, max_prompt_len=3)
    assert (fitted.prompt, fitted.responses) == ([3, 4, 5], [[6, 7, 8], [8, 0]])
    assert fitted.prompt_truncated and fitted.response_truncated
    # a budget of max_len or more still leaves one token for every response
    fitted = fit_prompt_and_responses([1, 2, 3, 4, 5], [[6, 0]], max_len=4, max_prompt_len=10)
    assert (fitted.prompt, fitted.responses) == ([3, 4, 5], [[6]])
    # brute force: every (prompt, response, budget) gives prompt = last min(p, budget, L-1) tokens
    for p in range(1, 7):
        for r in range(1, 7):
            for budget in (1, 2, 4, 9):
                fitted = fit_prompt_and_responses(list(range(p)), [list(range(10, 10 + r))], max_len=6, max_prompt_len=budget)
                kept = min(p, budget, 5)
                assert fitted.prompt == list(range(p))[p - kept:]
                assert fitted.responses == [list(range(10, 10 + r))[: 6 - kept]]


def test_a_long_prompt_keeps_its_end():
    tokenizer = ByteTokenizer()
    row = preference(prompt="abcdefgh", chosen="xy", rejected="z")
    result = tokenize_preference_row(row, tokenizer, ChatTokenization(max_len=8))
    np.testing.assert_array_equal(result.example["chosen"], tokenizer.encode("defghxy") + [0])
    np.testing.assert_array_equal(result.example["rejected"], tokenizer.encode("defghz") + [0, 0])
    assert (result.prompt_truncated, result.response_truncated, result.prompt_tokens) == (True, False, 8)


def test_max_prompt_len_is_respected():
    tokenizer = ByteTokenizer()
    row = preference(prompt="abcdefgh", chosen="xy", rejected="z")
    result = tokenize_preference_row(row, tokenizer, ChatTokenization(max_len=32, max_prompt_len=3))
    assert result.example["prompt_len"] == 3
    np.testing.assert_array_equal(result.example["chosen"][:6], tokenizer.encode("fghxy") + [0])
    assert result.prompt_truncated and not result.response_truncated


def test_a_long_response_is_cut_without_eos():
    tokenizer = byte_chat_tokenizer()
    row = preference(chosen="abcdefghijklmnop", rejected="z")
    result = tokenize_preference_row(row, tokenizer, ChatTokenization(max_len=10))
    example = result.example
    assert example["prompt_len"] == 1  # the prompt gives way first, down to one token: "\n" of "assistant\n"
    assert decode(tokenizer, example["chosen"]) == "\nabcdefghi"
    assert EOS not in response_of(example, "chosen").tolist()
    assert decode(tokenizer, response_of(example, "rejected")) == "z<|im_end|>"
    assert result.prompt_truncated and result.response_truncated


def test_sft_mask_is_cut_with_the_tokens():
    tokenizer = byte_chat_tokenizer()
    row = SftRow(CONVERSATION, "chat.jsonl:1", conversational=True)
    whole = tokenize_sft_row(row, tokenizer, ChatTokenization(max_len=128)).example
    # No room for the whole response: the prompt gives way down to one token, then the response
    # loses its last 2 tokens ("2" and <|im_end|>).
    cut = tokenize_sft_row(row, tokenizer, ChatTokenization(max_len=1 + int(whole["response_len"]) - 2))
    example = cut.example
    assert example["prompt_len"] == 1 and cut.prompt_truncated and cut.response_truncated
    response_len = int(example["response_len"])
    start = int(whole["prompt_len"])
    assert response_len == whole["response_len"] - 2
    for key in ("tokens", "loss_mask"):
        np.testing.assert_array_equal(example[key][1 : 1 + response_len], whole[key][start : start + response_len])
    runs = [decode(tokenizer, run) for run in masked_runs(example["tokens"], example["loss_mask"])]
    assert runs == ["A1<|im_end|>", "A"]  # the last reply lost its end (and its EOS)
    assert not example["loss_mask"][1 + response_len :].any() and example["loss_mask"][0] == 0


# --------------------------------------------------------------------------- errors


def test_a_template_that_does_not_render_incrementally_is_refused():
    # Writes the number of messages first: the prompt's rendering is not the start of the full one.
    tokenizer = byte_chat_tokenizer("{{ messages|length }}" + CHATML)
    with pytest.raises(DataError, match=r"pairs.jsonl:3: the chat template does not render conversations incre"):
        tokenize_preference_row(preference(), tokenizer, ChatTokenization(max_len=64))
    with pytest.raises(DataError, match=r"chat.jsonl:1: .*does not render conversations incrementally"):
        tokenize_sft_row(SftRow(CONVERSATION, "chat.jsonl:1", True), tokenizer, ChatTokenization(max_len=128))


def test_multi_turn_rows_without_a_template_are_refused():
    row = preference(prompt=[system("Be kind."), user("Hi")])
    with pytest.raises(DataError, match=r"pairs.jsonl:3: the model has no chat template.*give chat_template"):
        tokenize_preference_row(row, ByteTokenizer(), ChatTokenization(max_len=64))
    with pytest.raises(DataError, match=r"chat.jsonl:1: chat_template='none' writes plain text"):
        tokenize_sft_row(SftRow(CONVERSATION, "chat.jsonl:1", True), byte_chat_tokenizer(),
                         ChatTokenization(max_len=128, chat_template="none"))


def test_other_row_errors_name_the_row_and_the_fix():
    with pytest.raises(DataError, match=r"pairs.jsonl:3: the prompt is empty"):
        tokenize_preference_row(preference(prompt=""), ByteTokenizer(), ChatTokenization(max_len=64))
    with pytest.raises(DataError, match=r"kto:1: the prompt is empty"):
        tokenize_unpaired_row(UnpairedRow([user("")], [assistant("a")], True, "kto:1", False), byte_chat_tokenizer(),
                              ChatTokenization(max_len=8, chat_template="none"))
    with pytest.raises(DataError, match=r"chat.jsonl:9: the conversation has no assistant turn"):
        tokenize_sft_row(SftRow([user("Hi")], "chat.jsonl:9", True), byte_chat_tokenizer(),
                         ChatTokenization(max_len=64))
    two_turn_reply = PreferenceRow([user("Hi")], [assistant("a"), user("b")], [assistant("c")], "p:1", True)
    with pytest.raises(DataError, match=r"p:1: the chosen response must be one assistant message"):
        tokenize_preference_row(two_turn_reply, byte_chat_tokenizer(), ChatTokenization(max_len=64))
    refusing = byte_chat_tokenizer("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(DataError, match=r"pairs.jsonl:3: .*roles must alternate"):
        tokenize_preference_row(preference(), refusing, ChatTokenization(max_len=64))


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(max_len=1), "max_len must be an integer of at least 2"),
        (dict(max_len=8, max_prompt_len=0), "max_prompt_len must be a positive integer or None"),
        (dict(max_len=8, chat_template="chatml"), "chat_template must be 'auto'"),
    ],
)
def test_settings_are_checked(settings, message):
    with pytest.raises(DataError, match=message):
        ChatTokenization(**settings)


# --------------------------------------------------------------------------- SmolLM2-135M-Instruct


@pytest.fixture(scope="module")
def smollm2():
    from jirl.models.gguf import smollm2_gguf_path
    from jirl.models.tokenizers import tokenizer_from_gguf

    return tokenizer_from_gguf(smollm2_gguf_path())  # the tokenizer only, no weights (~3 s)


@pytest.mark.slow
def test_smollm2_sharegpt_row_masks_the_reply_and_its_im_end(smollm2):
    # A ShareGPT row ({"from": "human"/"gpt", "value": ...}) as the readers hand it over.
    row = SftRow([user("What is 2 + 2?"), assistant("2 + 2 = 4.")], "sharegpt.json[0]", conversational=True)
    example = tokenize_sft_row(row, smollm2, ChatTokenization(max_len=96)).example
    tokens, mask = example["tokens"], example["loss_mask"]
    assert [decode(smollm2, run) for run in masked_runs(tokens, mask)] == ["2 + 2 = 4.<|im_end|>"]
    prompt = decode(smollm2, tokens[: example["prompt_len"]])
    # The template's default system prompt, then the turn.
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")
    # Encoding the segments separately gives the ids of the whole text (ChatML's special tokens split it anyway).
    end = int(example["prompt_len"] + example["response_len"])
    full = smollm2.apply_chat_template(row.messages, add_generation_prompt=False)
    assert tokens[:end].tolist() == smollm2.encode(full.removesuffix("\n"))
    assert tokens[end - 1] == smollm2.eos_id == 2 and (tokens[end:] == 2).all()
