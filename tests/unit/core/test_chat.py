"""The one chat encoder: training data and a served chat request build the same token ids from the
same conversation, OpenAI's `developer` role included."""

from __future__ import annotations

import json

from qadapter.core.chat import chat_prompt_ids
from qadapter.core.model import LoadedModel
from qadapter.server.api.protocol import ChatCompletionRequest
from qadapter.training.data import encode_pair, parse_row

CONVERSATION = [
    {"role": "developer", "content": "Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]


def test_training_and_serving_build_identical_prompt_ids(embedded: LoadedModel) -> None:
    tokenizer = embedded.tokenizer
    row = {
        "chosen": [*CONVERSATION, {"role": "assistant", "content": "Rome."}],
        "rejected": [*CONVERSATION, {"role": "assistant", "content": "I will not say."}],
    }
    trained = encode_pair(tokenizer, parse_row(json.dumps(row), 1), max_length=4096).prompt_ids
    served = chat_prompt_ids(tokenizer, ChatCompletionRequest(model="m", messages=CONVERSATION).conversation())
    assert trained == served


def test_the_developer_role_is_the_templates_system_role(embedded: LoadedModel) -> None:
    tokenizer = embedded.tokenizer
    as_system = [{**CONVERSATION[0], "role": "system"}, *CONVERSATION[1:]]
    assert chat_prompt_ids(tokenizer, CONVERSATION) == chat_prompt_ids(tokenizer, as_system)
    rendered_raw = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert "developer" in rendered_raw  # the template alone would render the role literally: the skew fixed here
