"""Preference pairs from JSONL, tokenised with the base model's chat template.

Two row forms are read:
- chat: `{"chosen": [messages], "rejected": [messages]}`; both share every message but the last
  assistant turn, which is the response (the HH-RLHF form of `shared/data/hh-rlhf-harmless`);
- TRL's explicit form: `{"prompt", "chosen", "rejected"}`, each a string or a list of messages.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from qadapter.core.chat import chat_prompt_ids, conversation_ids
from qadapter.core.errors import InvalidData

Message = dict[str, str]
ROLES = frozenset({"system", "developer", "user", "assistant"})


@dataclass(frozen=True)
class PreferencePair:
    """One prompt (a conversation ready for the assistant's turn) and two responses to it."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    line: int  # 1-based line in the source file


@dataclass(frozen=True)
class PreferenceData:
    """The pairs of a file, how many bad rows were skipped, and the file's hash (for manifests)."""

    pairs: list[PreferencePair]
    num_skipped: int
    sha256: str


@dataclass(frozen=True)
class EncodedPair:
    """Token ids: the (left-truncated) prompt and each response, ending with the end-of-turn token."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


def load_pairs(path: Path, skip_bad: bool = False) -> PreferenceData:
    """Read preference pairs; a bad row raises InvalidData naming its line, or is skipped and counted."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidData(f"cannot read preference data {str(path)!r}: {exc.strerror}") from None
    pairs, num_skipped = [], 0
    # JSONL rows end at "\n" only: str.splitlines() would also split inside strings at U+2028 and the like.
    for number, line in enumerate(raw.decode("utf-8", errors="replace").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            pairs.append(parse_row(line, number))
        except InvalidData:
            if not skip_bad:
                raise
            num_skipped += 1
    if not pairs:
        raise InvalidData(f"{str(path)!r} holds no usable preference pairs ({num_skipped} bad rows skipped)")
    return PreferenceData(pairs=pairs, num_skipped=num_skipped, sha256=hashlib.sha256(raw).hexdigest())


def parse_row(line: str, number: int) -> PreferencePair:
    """One JSONL row in either form."""

    def bad(reason: str) -> InvalidData:
        return InvalidData(f"line {number}: {reason} (use --skip-bad to skip bad rows)")

    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise bad(f"not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
        raise bad('expected an object with "chosen" and "rejected" (and optionally "prompt")')
    try:
        prompt = _messages(row["prompt"], "user") if "prompt" in row else []
        chosen = prompt + _messages(row["chosen"], "assistant")
        rejected = prompt + _messages(row["rejected"], "assistant")
        shared, chosen_text, rejected_text = _split_shared(chosen, rejected)
    except ValueError as exc:
        raise bad(str(exc)) from None
    if chosen_text == rejected_text:
        raise bad("chosen and rejected responses are identical, so the pair says nothing")
    return PreferencePair(prompt=tuple(shared), chosen=chosen_text, rejected=rejected_text, line=number)


def _messages(value: Any, role_of_string: str) -> list[Message]:
    """A string (one message of `role_of_string`) or a list of `{"role", "content"}` messages."""
    if isinstance(value, str):
        return [{"role": role_of_string, "content": value}]
    if not isinstance(value, list):
        raise ValueError(f"expected a string or a list of messages, got {type(value).__name__}")
    messages = []
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError('every message must be an object with a string "content"')
        if message.get("role") not in ROLES:
            raise ValueError(f"message role {message.get('role')!r} is not one of {sorted(ROLES)}")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _split_shared(chosen: list[Message], rejected: list[Message]) -> tuple[list[Message], str, str]:
    """The shared prompt and the two final assistant responses."""
    for messages, which in ((chosen, "chosen"), (rejected, "rejected")):
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError(f"the {which} conversation must end with an assistant message")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("chosen and rejected must share every message but the last assistant turn")
    if not any(m["role"] == "user" for m in chosen[:-1]):
        raise ValueError("the prompt has no user message")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def encode_pair(tokenizer: PreTrainedTokenizerBase, pair: PreferencePair, max_length: int) -> EncodedPair:
    """Tokenise with the chat template; each prompt+response fits `max_length` by cutting the prompt's start.

    A response longer than the budget keeps its beginning and leaves at least one prompt token.
    """
    if max_length < 2:
        raise InvalidData(
            f"--max-length must be at least 2 (one prompt token and one response token), got {max_length}"
        )
    prompt_ids = chat_prompt_ids(tokenizer, pair.prompt)
    chosen_ids = response_ids(tokenizer, pair.prompt, prompt_ids, pair.chosen)
    rejected_ids = response_ids(tokenizer, pair.prompt, prompt_ids, pair.rejected)
    longest = min(max(len(chosen_ids), len(rejected_ids)), max_length - 1)
    return EncodedPair(
        prompt_ids=prompt_ids[-(max_length - longest) :],
        chosen_ids=chosen_ids[:longest],
        rejected_ids=rejected_ids[:longest],
    )


def response_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: Sequence[Message], prompt_ids: list[int], response: str
) -> list[int]:
    """The assistant turn's tokens up to and including its end-of-turn token (where serving stops)."""
    full = conversation_ids(tokenizer, [*prompt, {"role": "assistant", "content": response}])
    if full[: len(prompt_ids)] != prompt_ids:
        raise InvalidData("the chat template does not extend the prompt with the response; use another base model")
    ids = full[len(prompt_ids) :]
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
    return ids
