"""The one chat encoder: serving, training, evaluation and the benchmarks turn conversations into
token ids here, so that training and serving build the same prompt from the same conversation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from transformers import PreTrainedTokenizerBase

Message = Mapping[str, str]
# OpenAI's `developer` role is the system role of newer models; chat templates know `system`.
_TEMPLATE_ROLE = {"developer": "system"}


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> list[int]:
    """The conversation so far, ready for the assistant's turn (what the model is fed to answer)."""
    return _encode(tokenizer, messages, add_generation_prompt=True)


def conversation_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> list[int]:
    """A whole conversation, ending with its last message (no turn opened after it)."""
    return _encode(tokenizer, messages, add_generation_prompt=False)


def user_prompt_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """One user message, ready for the assistant's answer."""
    return chat_prompt_ids(tokenizer, [{"role": "user", "content": text}])


def _encode(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], add_generation_prompt: bool) -> list[int]:
    conversation = [{**m, "role": _TEMPLATE_ROLE.get(m["role"], m["role"])} for m in messages]
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False).input_ids
