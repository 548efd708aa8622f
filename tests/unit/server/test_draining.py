"""server/draining.py's Drain on a real Engine (the tiny model): once begun it reads as draining at
once; a request that finishes within the timeout finishes whole; one still running at the timeout
ends with `abort`; `on_done` runs once, after the engine is idle; a second begin starts nothing."""

from __future__ import annotations

import asyncio
import threading

import pytest

from qadapter.server.draining import Drain
from qadapter.server.engine.engine import Engine
from qadapter.server.engine.request import FinishReason, GenerationRequest, SamplingParams, TokenEvent


@pytest.fixture
def engine(tiny_engine: Engine) -> Engine:
    return tiny_engine


async def run_while_draining(engine: Engine, drain: Drain, max_tokens: int, done: threading.Event) -> list[TokenEvent]:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    events = await engine.open(GenerationRequest("r", (5, 6, 7), None, params))
    assert drain.begin(on_done=done.set)
    assert drain.is_draining and not drain.begin(on_done=pytest.fail)  # a second signal starts nothing
    return [event async for event in events]


def test_a_request_that_finishes_within_the_timeout_finishes_whole(engine: Engine) -> None:
    drain, done = Drain(engine, timeout_s=60.0), threading.Event()
    assert not drain.is_draining
    events = asyncio.run(run_while_draining(engine, drain, max_tokens=8, done=done))
    assert events[-1].num_generated_tokens == 8 and events[-1].finish_reason == FinishReason.LENGTH
    assert done.wait(timeout=5.0) and engine.is_idle


def test_a_request_still_running_at_the_timeout_is_aborted_then_on_done_runs(engine: Engine) -> None:
    drain, done = Drain(engine, timeout_s=0.0), threading.Event()  # the timeout is over at once
    events = asyncio.run(run_while_draining(engine, drain, max_tokens=200, done=done))
    assert events[-1].finish_reason == FinishReason.ABORT and events[-1].num_generated_tokens < 200
    assert done.wait(timeout=5.0) and engine.is_idle
