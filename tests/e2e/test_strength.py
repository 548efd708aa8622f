"""The strength knob through the API: 0 serves the base model exactly, 1 the adapter as trained, and
any other strength the α/ω pair it maps to; what the adapter cannot serve is a 400 naming the field."""

from __future__ import annotations

import openai
import pytest

from qadapter.core.knobs import Knobs
from qadapter.testing.server_process import ServerProcess
from tests.e2e.conftest import KEY

BASE = "smollm2-135m-instruct"
PROMPT = "My favourite thing about the sea is"


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def served(client: openai.OpenAI, model: str, **knobs: float) -> tuple[str, list[float]]:
    """A greedy completion's text and its tokens' log-probabilities."""
    done = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=12, temperature=0, logprobs=1, extra_body={"ignore_eos": True, **knobs}
    )
    return done.choices[0].text, done.choices[0].logprobs.token_logprobs


def test_strength_zero_is_the_base_and_one_the_adapter_as_trained(client: openai.OpenAI) -> None:
    base, adapter = served(client, BASE), served(client, "bold")
    assert base[0] != adapter[0]  # bold changes the answer: the comparisons below can fail
    at_zero, at_one = served(client, "bold", strength=0), served(client, "bold", strength=1)
    assert at_zero[0] == base[0] and at_zero[1] == pytest.approx(base[1], abs=1e-4)
    assert at_one[0] == adapter[0] and at_one[1] == pytest.approx(adapter[1], abs=1e-4)


def test_a_strength_serves_the_pair_it_maps_to(client: openai.OpenAI) -> None:
    pair = Knobs().at_strength(0.5)  # bold's manifest has the default knobs
    assert pair is not None
    by_strength = served(client, "bold", strength=0.5)
    assert by_strength[0] == served(client, "bold", alpha=pair.alpha, omega=pair.omega)[0]
    assert by_strength[1] == pytest.approx(served(client, "bold", alpha=pair.alpha, omega=pair.omega)[1], abs=1e-4)


@pytest.mark.parametrize(
    ("model", "knobs", "words"),
    [
        ("bold", {"strength": 3}, "strength must be 0 (the base model) or in [0.01, 1.01]"),
        ("bold", {"strength": 1, "alpha": 2, "omega": 1}, "not both"),
        ("bold", {"strength": 11}, "strength"),
        (BASE, {"strength": 1}, "the base model has none"),
        (BASE, {"alpha": 2, "omega": 1}, "the base model has none"),
    ],
)
def test_what_cannot_be_served_is_a_400_naming_the_field(
    client: openai.OpenAI, model: str, knobs: dict, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, extra_body=knobs
        )
    assert words in caught.value.message
    assert caught.value.param == ("alpha" if "strength" not in knobs else "strength")
