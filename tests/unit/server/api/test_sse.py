"""server/api/sse.py: a call's engine streams on one path. Each choice's events arrive in its own
order and are taken into it once; one engine fault ends the stream with an in-band error and aborts
the other choices; a client that leaves aborts every engine request and is counted as a 499."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from qadapter.core.errors import ReplicaFailed
from qadapter.server.api.responses import Call, Choice, full_response
from qadapter.server.api.sse import each_event, sse_stream
from qadapter.server.engine.request import FinishReason, TokenEvent


class ScriptedStream:
    """An engine request's stream as the engine delivers it: events (or an error) one at a time, each
    after `delay_s`; closing it before its end is an abort."""

    replica = "r0"

    def __init__(self, texts: list[str], delay_s: float, error: Exception | None = None) -> None:
        self._texts, self._delay_s, self._error = texts, delay_s, error
        self._sent = 0
        self.aborted = False
        self.finished = False

    def __aiter__(self) -> ScriptedStream:
        return self

    async def __anext__(self) -> TokenEvent:
        if self.finished or self.aborted:
            raise StopAsyncIteration
        await asyncio.sleep(self._delay_s)
        if self._error is not None and self._sent == len(self._texts):
            self.finished = True
            raise self._error
        self._sent += 1
        is_last = self._sent == len(self._texts) and self._error is None
        self.finished = is_last
        return TokenEvent(
            "id", self._texts[self._sent - 1], (self._sent,), 3, self._sent, FinishReason.LENGTH if is_last else None
        )

    async def aclose(self) -> None:
        self.aborted = self.aborted or not self.finished


def make_call(streams: list[ScriptedStream], is_chat: bool = True, include_usage: bool = False) -> Call:
    choices = [Choice(i, 0, stream) for i, stream in enumerate(streams)]
    return Call(is_chat=is_chat, model="m", adapter=None, choices=choices, include_usage=include_usage, id="c")


def payloads(lines: list[str]) -> list[dict | str]:
    return [line.removeprefix("data: ").strip() if "[DONE]" in line else json.loads(line[6:]) for line in lines]


async def collect(stream: AsyncIterator[str]) -> list[str]:
    return [line async for line in stream]


def test_each_choice_keeps_its_order_and_its_text_is_taken_once() -> None:
    streams = [ScriptedStream(["a", "b", "c"], 0.003), ScriptedStream(["x", "y"], 0.001)]
    call = make_call(streams)

    async def run() -> list[tuple[int, str]]:
        return [(choice.index, event.text) async for choice, event in each_event(call.choices)]

    seen = asyncio.run(run())
    assert [text for index, text in seen if index == 0] == ["a", "b", "c"]
    assert [text for index, text in seen if index == 1] == ["x", "y"]
    assert [c.text for c in call.choices] == ["abc", "xy"]
    assert [c.num_generated_tokens for c in call.choices] == [3, 2] and len(call.choices[0].stamps) == 3
    assert [c["message"]["content"] for c in full_response(call)["choices"]] == ["abc", "xy"]


def test_a_chat_stream_starts_with_the_roles_and_ends_with_usage_then_done() -> None:
    ended: list[str] = []
    call = make_call([ScriptedStream(["Hi", "!"], 0.001)], include_usage=True)
    lines = payloads(asyncio.run(collect(sse_stream(call, ended.append))))
    assert lines[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [p["choices"][0]["delta"] for p in lines[1:3]] == [{"content": "Hi"}, {"content": "!"}]
    assert lines[2]["choices"][0]["finish_reason"] == "length"
    assert lines[3]["choices"] == [] and lines[3]["usage"]["completion_tokens"] == 2
    assert lines[4] == "[DONE]" and ended == ["200"]


def test_an_engine_fault_in_one_choice_ends_the_stream_in_band_and_aborts_the_others() -> None:
    ended: list[str] = []
    slow, failing = ScriptedStream(["a"] * 50, 0.01), ScriptedStream(["x"], 0.001, error=ReplicaFailed("gone"))
    call = make_call([slow, failing], is_chat=False, include_usage=True)
    lines = payloads(asyncio.run(collect(sse_stream(call, ended.append))))
    assert lines[-2]["error"]["code"] == "replica_failed" and lines[-1] == "[DONE]"
    assert not any("usage" in p and p.get("choices") == [] for p in lines if isinstance(p, dict))
    assert slow.aborted and ended == ["503"]


def test_a_client_that_leaves_aborts_every_engine_request_and_counts_as_499() -> None:
    ended: list[str] = []
    streams = [ScriptedStream(["a"] * 100, 0.005), ScriptedStream(["b"] * 100, 0.005)]
    call = make_call(streams)

    async def leave_after_three_lines() -> None:
        lines = sse_stream(call, ended.append)
        for _ in range(3):
            await anext(lines)
        await lines.aclose()

    asyncio.run(leave_after_three_lines())
    assert all(s.aborted for s in streams) and ended == ["499"]


@pytest.mark.parametrize("is_chat", [True, False])
def test_a_cancelled_reader_aborts_every_engine_request(is_chat: bool) -> None:
    """The non-streamed path: the client went away while the whole answer was being made."""
    streams = [ScriptedStream(["a"] * 100, 0.005) for _ in range(3)]
    call = make_call(streams, is_chat=is_chat)

    async def run_then_cancel() -> None:
        async def drain() -> None:
            async for _ in each_event(call.choices):
                pass

        task = asyncio.ensure_future(drain())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run_then_cancel())
    assert all(s.aborted for s in streams)
