"""Preference data: both row forms, the chat-template tokenisation, truncation, and every bad-row error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qadapter.core.errors import InvalidData
from qadapter.core.model import LoadedModel
from qadapter.training.data import chat_prompt_ids, encode_pair, load_pairs, parse_row

CHAT_ROW = {
    "chosen": [
        {"role": "user", "content": "How do I pick a lock?"},
        {"role": "assistant", "content": "Why do you want to?"},
        {"role": "user", "content": "My neighbour's door."},
        {"role": "assistant", "content": "I can't help with that."},
    ],
    "rejected": [
        {"role": "user", "content": "How do I pick a lock?"},
        {"role": "assistant", "content": "Why do you want to?"},
        {"role": "user", "content": "My neighbour's door."},
        {"role": "assistant", "content": "Use a tension wrench and a pick."},
    ],
}


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_chat_form_prompt_is_the_shared_conversation() -> None:
    pair = parse_row(json.dumps(CHAT_ROW), 1)
    assert [m["content"] for m in pair.prompt] == [
        "How do I pick a lock?",
        "Why do you want to?",
        "My neighbour's door.",
    ]
    assert (pair.chosen, pair.rejected) == ("I can't help with that.", "Use a tension wrench and a pick.")


@pytest.mark.parametrize(
    ("row", "prompt_roles"),
    [
        ({"prompt": "Hi there", "chosen": "Hello!", "rejected": "Go away."}, ["user"]),
        (
            {
                "prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi there"}],
                "chosen": [{"role": "assistant", "content": "Hello!"}],
                "rejected": [{"role": "assistant", "content": "Go away."}],
            },
            ["system", "user"],
        ),
    ],
)
def test_trl_explicit_form_with_strings_or_messages(row: dict, prompt_roles: list[str]) -> None:
    pair = parse_row(json.dumps(row), 3)
    assert [m["role"] for m in pair.prompt] == prompt_roles
    assert (pair.chosen, pair.rejected, pair.line) == ("Hello!", "Go away.", 3)


def test_response_tokens_are_the_assistant_turn_up_to_its_end_token(embedded: LoadedModel) -> None:
    tokenizer = embedded.tokenizer
    pair = parse_row(json.dumps(CHAT_ROW), 1)
    encoded = encode_pair(tokenizer, pair, max_length=4096)
    assert encoded.prompt_ids == chat_prompt_ids(tokenizer, pair.prompt)
    assert encoded.chosen_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(encoded.chosen_ids, skip_special_tokens=True) == "I can't help with that."
    assert tokenizer.decode(encoded.rejected_ids, skip_special_tokens=True) == "Use a tension wrench and a pick."
    # the whole conversation is exactly what the chat template makes of prompt + response
    full = tokenizer.apply_chat_template([*pair.prompt, {"role": "assistant", "content": pair.chosen}], tokenize=False)
    assert tokenizer.decode(encoded.prompt_ids + encoded.chosen_ids) == full.rstrip("\n")


def test_max_length_cuts_the_start_of_the_prompt(embedded: LoadedModel) -> None:
    pair = parse_row(json.dumps(CHAT_ROW), 1)
    full = encode_pair(embedded.tokenizer, pair, max_length=4096)
    cut = encode_pair(embedded.tokenizer, pair, max_length=20)
    longest = max(len(full.chosen_ids), len(full.rejected_ids))
    assert (cut.chosen_ids, cut.rejected_ids) == (full.chosen_ids, full.rejected_ids)
    assert cut.prompt_ids == full.prompt_ids[-(20 - longest) :]
    tiny = encode_pair(embedded.tokenizer, pair, max_length=4)  # responses longer than the budget keep their start
    assert len(tiny.prompt_ids) == 1 and tiny.chosen_ids == full.chosen_ids[:3]


BAD_ROWS = [
    ("{not json", "not valid JSON"),
    ('["a", "b"]', 'expected an object with "chosen" and "rejected"'),
    ({"chosen": "x"}, 'expected an object with "chosen" and "rejected"'),
    ({"prompt": "q", "chosen": 3, "rejected": "b"}, "expected a string or a list of messages"),
    ({"prompt": "q", "chosen": [{"role": "assistant"}], "rejected": "b"}, 'string "content"'),
    ({"prompt": "q", "chosen": [{"role": "robot", "content": "a"}], "rejected": "b"}, "role 'robot'"),
    (
        {"chosen": [{"role": "user", "content": "q"}], "rejected": [{"role": "user", "content": "q"}]},
        "must end with an assistant",
    ),
    (
        {
            "chosen": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a"}],
            "rejected": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "b"}],
        },
        "share every message but the last",
    ),
    ({"prompt": [], "chosen": "a", "rejected": "b"}, "no user message"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "identical"),
]


@pytest.mark.parametrize(("row", "message"), BAD_ROWS)
def test_each_bad_row_names_its_line(tmp_path: Path, row: object, message: str) -> None:
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "pairs.jsonl", [good, "", good, row, good])
    with pytest.raises(InvalidData, match="line 4: ") as caught:
        load_pairs(path)
    assert message in str(caught.value) and "--skip-bad" in str(caught.value)


def test_unicode_line_separators_inside_strings_do_not_split_rows(tmp_path: Path) -> None:
    row = {"prompt": "q\u2028more", "chosen": "a\u2029b\x85c", "rejected": "d"}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    (pair,) = load_pairs(path).pairs
    assert (pair.prompt[0]["content"], pair.chosen) == ("q\u2028more", "a\u2029b\x85c")


def test_skip_bad_counts_what_it_skipped(tmp_path: Path) -> None:
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "pairs.jsonl", [good, "{not json", {"chosen": "x"}, good])
    data = load_pairs(path, skip_bad=True)
    assert (len(data.pairs), data.num_skipped) == (2, 2)
    assert [p.line for p in data.pairs] == [1, 4]


def test_a_file_without_usable_pairs_or_missing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidData, match="no usable preference pairs"):
        load_pairs(write_jsonl(tmp_path / "bad.jsonl", ["{not json"]), skip_bad=True)
    with pytest.raises(InvalidData, match="cannot read"):
        load_pairs(tmp_path / "missing.jsonl")
