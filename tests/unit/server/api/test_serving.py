"""server/api/serving.py between a real Engine on the tiny model and the request bodies: an unknown
model is a 404 before any work (counted under one shared label, so arbitrary strings cannot grow
/metrics); max_tokens left out is what the context leaves, capped by the server default; every
finished request is recorded once, by its status, with its token counts and latencies, streamed
or not; a request the engine refuses is recorded with the refusal's status."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from qadapter.core.base import BaseModelInfo
from qadapter.core.errors import AdapterNotFound, ContextTooLong
from qadapter.core.knobs import Knobs
from qadapter.core.lora import AdapterHost
from qadapter.core.model import LoadedModel
from qadapter.core.settings import Settings
from qadapter.server.api.grammar_guard import GrammarGuard
from qadapter.server.api.metrics import Metrics
from qadapter.server.api.protocol import CompletionRequest
from qadapter.server.api.serving import UNKNOWN_MODEL_LABEL, Serving
from qadapter.server.engine.engine import Engine
from qadapter.server.engine.registry import LoadAdapter
from qadapter.testing.synthetic_adapters import random_adapter
from qadapter.testing.synthetic_base import synthetic_tokenizer
from tests.conftest import tiny_model

BASE = "tiny-llama"
MAX_CONTEXT = 40
DEFAULT_MAX_TOKENS = 12


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Serving]:
    model = tiny_model()
    loaded = LoadedModel(model, synthetic_tokenizer(512), BaseModelInfo.from_model(model, BASE))
    settings = Settings(max_context=MAX_CONTEXT, default_max_tokens=DEFAULT_MAX_TOKENS)
    engine = Engine(loaded, AdapterHost(model, 2), settings)
    engine.start()
    adapter = random_adapter(tmp_path / "a", loaded.info, name="a", knobs=Knobs(alpha=0.5, omega=2.0))
    engine.adapters.apply(LoadAdapter(adapter)).result()
    metrics = Metrics(engine.replica_stats, lambda: len(engine.adapters.names()), BASE)
    grammars = GrammarGuard(loaded.tokenizer, model.config.vocab_size, timeout_s=5.0)
    serving = Serving(engine, loaded, settings, metrics, grammars)
    yield serving
    serving.close()
    engine.shutdown()


def connected_request() -> Request:
    """An HTTP request whose client stays connected (its receive never says `http.disconnect`)."""

    async def receive() -> dict:
        await asyncio.Event().wait()
        return {}

    return Request({"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}, receive)


def complete(serving: Serving, **fields: object) -> dict:
    async def run() -> dict:
        response = await serving.completions(CompletionRequest(**fields), connected_request())
        if isinstance(response, StreamingResponse):
            lines = [line async for line in response.body_iterator]
            chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
            return {"chunks": chunks, "done": lines[-1].strip() == "data: [DONE]"}
        assert isinstance(response, JSONResponse)
        return json.loads(response.body)

    return asyncio.run(run())


def counted(serving: Serving, name: str, **labels: str) -> float:
    value = serving._metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_the_base_and_a_published_adapter_are_models_an_unknown_one_is_a_404(serving: Serving) -> None:
    serving.check_model(BASE)
    serving.check_model("a")
    assert [card["id"] for card in serving.models()["data"]] == [BASE, "a"]
    with pytest.raises(AdapterNotFound):
        serving.check_model("nope")
    assert counted(serving, "qadapter_requests_total", adapter=UNKNOWN_MODEL_LABEL, status="404") == 0  # a lookup
    for name in ("nope", "other"):
        with pytest.raises(AdapterNotFound) as caught:
            complete(serving, model=name, prompt=[5, 6])
        assert caught.value.param == "model"
    assert counted(serving, "qadapter_requests_total", adapter=UNKNOWN_MODEL_LABEL, status="404") == 2
    assert counted(serving, "qadapter_requests_total", adapter="nope", status="404") == 0


def test_max_tokens_left_out_is_what_the_context_leaves_capped_by_the_default(serving: Serving) -> None:
    short = complete(serving, model=BASE, prompt=[5] * 4, ignore_eos=True)
    assert short["usage"]["completion_tokens"] == DEFAULT_MAX_TOKENS
    long_prompt = MAX_CONTEXT - 3
    long = complete(serving, model=BASE, prompt=[5] * long_prompt, ignore_eos=True)
    assert long["usage"]["completion_tokens"] == MAX_CONTEXT - long_prompt
    asked = complete(serving, model="a", prompt=[5] * 4, ignore_eos=True, max_tokens=DEFAULT_MAX_TOKENS + 5)
    assert asked["usage"]["completion_tokens"] == DEFAULT_MAX_TOKENS + 5


def test_each_finished_request_is_recorded_once_with_its_tokens(serving: Serving) -> None:
    full = complete(serving, model="a", prompt=[5, 6, 7], max_tokens=4, ignore_eos=True, n=2)
    streamed = complete(serving, model="a", prompt=[5, 6], max_tokens=3, ignore_eos=True, stream=True)
    assert full["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}  # n shares the prompt
    assert streamed["done"] and sum(len(c["choices"]) for c in streamed["chunks"]) == 3
    assert counted(serving, "qadapter_requests_total", adapter="a", status="200") == 2
    assert counted(serving, "qadapter_prompt_tokens_total", adapter="a") == 3 + 2
    assert counted(serving, "qadapter_generation_tokens_total", adapter="a") == 8 + 3
    assert counted(serving, "qadapter_e2e_request_latency_seconds_count", adapter="a") == 2
    assert counted(serving, "qadapter_time_to_first_token_seconds_count", adapter="a") == 2 + 1  # one per choice
    assert counted(serving, "qadapter_inter_token_latency_seconds_count", adapter="a") == 2 * 3 + 2
    assert counted(serving, "qadapter_requests_total", adapter=BASE, status="200") == 0


def test_a_request_the_engine_refuses_is_recorded_with_its_status(serving: Serving) -> None:
    with pytest.raises(ContextTooLong):
        complete(serving, model=BASE, prompt=[5] * 10, max_tokens=MAX_CONTEXT)
    assert counted(serving, "qadapter_requests_total", adapter=BASE, status="400") == 1
    assert counted(serving, "qadapter_generation_tokens_total", adapter=BASE) == 0
