"""The engine on a tiny random Llama: batching, joining mid-flight, sampling, stops, limits, aborts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from qadapter.core.base import BaseModelInfo
from qadapter.core.decode import DecodeParams, Stream, decode
from qadapter.core.errors import AdapterNotFound, ContextTooLong, InvalidRequest, Overloaded, RequestFault
from qadapter.core.knobs import Knobs
from qadapter.core.lora import AdapterHost
from qadapter.core.model import LoadedModel
from qadapter.core.settings import Settings
from qadapter.server.engine.engine import Engine
from qadapter.server.engine.registry import LoadAdapter, UnloadAdapter
from qadapter.server.engine.request import (
    FinishReason,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from qadapter.server.engine.stream import RequestStream
from qadapter.testing.synthetic_adapters import poisoned_adapter, random_adapter
from tests.conftest import tiny_model

PROMPTS = [[5, 17, 42, 99, 3, 250, 7], [11, 12], [300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310], [8] * 5]
ADAPTERS = {"calm": 0.4, "loud": 1.0, "odd": 0.7}


def _engine(tmp_path: Path, embedded: LoadedModel, start: bool = True, **settings: object) -> Engine:
    """An engine on the tiny model with ADAPTERS loaded; `start=False` leaves stepping to the test."""
    model = tiny_model()
    info = BaseModelInfo.from_model(model, "tiny-llama")
    loaded = LoadedModel(model=model, tokenizer=embedded.tokenizer, info=info)
    engine = Engine(loaded, AdapterHost(model), Settings(**settings))
    changes = [
        engine.adapters.apply(LoadAdapter(random_adapter(tmp_path / name, info, name=name, b_std=b_std, seed=i)))
        for i, (name, b_std) in enumerate(ADAPTERS.items())
    ]
    engine.start() if start else engine.step()  # a step applies queued changes first
    for change in changes:
        change.result(timeout=30)
    return engine


async def drive(engine: Engine, plan: list[tuple[int, GenerationRequest]]) -> dict[str, list[TokenEvent]]:
    """Step an unstarted engine by hand; each request is submitted before the step its number names."""
    streams, step = {}, 0
    pending = sorted(plan, key=lambda item: item[0])
    while pending or engine.stats().num_running or engine.stats().num_waiting:
        while pending and pending[0][0] <= step:
            request = pending.pop(0)[1]
            streams[request.request_id] = engine.submit(request)
        engine.step()
        step += 1
        await asyncio.sleep(0)  # let the events the step sent arrive
    await asyncio.sleep(0)
    return {rid: [event async for event in stream] for rid, stream in streams.items()}


@pytest.fixture
def engine(tmp_path: Path, embedded: LoadedModel) -> Iterator[Engine]:
    engine = _engine(tmp_path, embedded)
    yield engine
    engine.shutdown()


def greedy(max_tokens: int = 12, **overrides: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, ignore_eos=True, **overrides)


async def collect(engine: Engine, request: GenerationRequest, delay_s: float = 0.0) -> list[TokenEvent]:
    await asyncio.sleep(delay_s)
    return [event async for event in engine.submit(request)]


async def outcomes(streams: dict[str, RequestStream]) -> dict[str, list[TokenEvent] | Exception]:
    """Each stream's events, or the RequestFault that ended it."""
    results: dict[str, list[TokenEvent] | Exception] = {}
    for rid, stream in streams.items():
        try:
            results[rid] = [event async for event in stream]
        except RequestFault as exc:
            results[rid] = exc
    return results


def tokens(events: list[TokenEvent]) -> list[int]:
    return [t for event in events for t in event.token_ids]


def test_matches_the_reference_decode(engine: Engine, tmp_path: Path) -> None:
    """Engine output equals `qadapter generate`'s step-by-step computation (same adapter, α, ω)."""
    reference_host = AdapterHost(tiny_model())
    info = BaseModelInfo.from_model(tiny_model(), "tiny-llama")
    reference_host.load("loud", random_adapter(tmp_path / "ref", info, name="loud", b_std=1.0, seed=1).read_weights())
    expected = decode(
        reference_host, [PROMPTS[0]], [Stream("loud", Knobs(0.5, 0.3)), Stream(None)], DecodeParams(12), frozenset()
    )[0]
    got = asyncio.run(collect(engine, GenerationRequest("a", tuple(PROMPTS[0]), "loud", greedy(alpha=0.5, omega=0.3))))
    base = asyncio.run(collect(engine, GenerationRequest("b", tuple(PROMPTS[0]), None, greedy())))
    assert tokens(got) == expected[0]
    assert tokens(base) == expected[1]
    assert got[-1].finish_reason == FinishReason.LENGTH


def test_greedy_output_does_not_depend_on_the_batch(tmp_path: Path, embedded: LoadedModel) -> None:
    engine = _engine(tmp_path, embedded, start=False)
    target = GenerationRequest("target", tuple(PROMPTS[0]), "calm", greedy(16))
    alone = asyncio.run(drive(engine, [(0, target)]))["target"]
    others = [
        (0, GenerationRequest(f"o{i}", tuple(PROMPTS[i % 4]), [None, "loud", "odd"][i % 3], greedy(30)))
        for i in range(8)
    ]
    crowded = asyncio.run(drive(engine, [*others, (5, target)]))  # joins at step 5, while the 8 decode
    assert all(len(tokens(events)) == 30 for rid, events in crowded.items() if rid != "target")
    assert tokens(crowded["target"]) == tokens(alone)
    assert "".join(e.text for e in crowded["target"]) == "".join(e.text for e in alone)


def test_seeded_sampling_repeats_whatever_the_batch(tmp_path: Path, embedded: LoadedModel) -> None:
    engine = _engine(tmp_path, embedded, start=False)
    params = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=123, ignore_eos=True)
    request = GenerationRequest("s", tuple(PROMPTS[1]), "odd", params)
    alone = tokens(asyncio.run(drive(engine, [(0, request)]))["s"])
    noise = [
        (
            0,
            GenerationRequest(
                f"n{i}", tuple(PROMPTS[2]), "loud", SamplingParams(max_tokens=30, temperature=1.0, ignore_eos=True)
            ),
        )
        for i in range(4)
    ]
    assert tokens(asyncio.run(drive(engine, [*noise, (3, request)]))["s"]) == alone
    other_seed = GenerationRequest("s", tuple(PROMPTS[1]), "odd", SamplingParams(**{**params.__dict__, "seed": 124}))
    assert tokens(asyncio.run(drive(engine, [(0, other_seed)]))["s"]) != alone


def test_stop_token_ends_the_stream_with_stop(engine: Engine) -> None:
    free = tokens(asyncio.run(collect(engine, GenerationRequest("f", tuple(PROMPTS[0]), "calm", greedy(12)))))
    stop_at = free[4]
    events = asyncio.run(
        collect(engine, GenerationRequest("s", tuple(PROMPTS[0]), "calm", greedy(12, stop_token_ids=(stop_at,))))
    )
    assert events[-1].finish_reason == FinishReason.STOP
    assert tokens(events) == free[: free.index(stop_at) + 1]


def test_stop_string_ends_the_text_before_it(engine: Engine, embedded: LoadedModel) -> None:
    free = asyncio.run(collect(engine, GenerationRequest("f", tuple(PROMPTS[2]), "odd", greedy(16))))
    text = "".join(e.text for e in free)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert len(stop) == 3
    events = asyncio.run(collect(engine, GenerationRequest("s", tuple(PROMPTS[2]), "odd", greedy(16, stop=(stop,)))))
    assert events[-1].finish_reason == FinishReason.STOP
    assert "".join(e.text for e in events) == text[: text.index(stop)]


def test_abort_frees_the_slot(engine: Engine) -> None:
    async def start_then_abort() -> list[TokenEvent]:
        events = []
        async for event in engine.submit(GenerationRequest("long", tuple(PROMPTS[0]), "loud", greedy(200))):
            events.append(event)
            if len(events) == 3:
                engine.abort("long")
        return events

    events = asyncio.run(start_then_abort())
    assert events[-1].finish_reason == FinishReason.ABORT
    assert len(events) < 10
    stats = engine.stats()
    assert (stats.num_running, stats.num_batch_rows, stats.num_waiting) == (0, 0, 0)


def test_closing_the_stream_aborts_the_request(engine: Engine) -> None:
    async def read_two() -> None:
        stream = engine.submit(GenerationRequest("gone", tuple(PROMPTS[0]), "calm", greedy(200)))
        async for _ in stream:
            break
        await stream.aclose()
        for _ in range(50):
            if engine.stats().num_running == 0:
                return
            await asyncio.sleep(0.05)

    asyncio.run(read_two())
    assert engine.stats().num_running == 0
    assert engine.stats().num_batch_rows == 0


def test_queue_full_raises_overloaded(tmp_path: Path, embedded: LoadedModel) -> None:
    engine = _engine(tmp_path, embedded, max_running=1, max_waiting=1)
    try:

        async def flood() -> None:
            first = engine.submit(GenerationRequest("1", tuple(PROMPTS[0]), None, greedy(50)))
            await first.__anext__()  # running now
            engine.submit(GenerationRequest("2", tuple(PROMPTS[0]), None, greedy(5)))  # waiting
            with pytest.raises(Overloaded) as caught:
                engine.submit(GenerationRequest("3", tuple(PROMPTS[0]), None, greedy(5)))
            assert caught.value.retry_after_s >= 1
            await first.aclose()

        asyncio.run(flood())
    finally:
        engine.shutdown()


def test_context_too_long_is_refused_before_any_work(engine: Engine) -> None:
    before = engine.stats().num_generated_tokens

    async def submit() -> None:
        engine.submit(GenerationRequest("c", tuple(PROMPTS[0]), "calm", greedy(256)))

    with pytest.raises(ContextTooLong, match="maximum context length is 256 tokens"):
        asyncio.run(submit())
    assert engine.stats().num_generated_tokens == before
    assert engine.stats().num_waiting == 0


def test_unknown_adapter_is_an_error_not_the_base(engine: Engine) -> None:
    async def submit() -> None:
        engine.submit(GenerationRequest("u", tuple(PROMPTS[0]), "nope", greedy()))

    with pytest.raises(AdapterNotFound, match="'nope' does not exist"):
        asyncio.run(submit())


def test_a_failed_step_fails_its_requests_and_the_engine_serves_on(engine: Engine) -> None:
    """A token id past the tiny model's vocabulary breaks the forward (the HTTP layer refuses such ids)."""

    async def run() -> tuple[BaseException | None, list[TokenEvent]]:
        broken = collect(engine, GenerationRequest("bad", (5, 10_000), "calm", greedy()))
        fine = collect(engine, GenerationRequest("ok", tuple(PROMPTS[0]), "calm", greedy()), delay_s=0.3)
        outcome = await asyncio.gather(broken, fine, return_exceptions=True)
        error = outcome[0] if isinstance(outcome[0], BaseException) else None
        return error, outcome[1]  # type: ignore[return-value]

    error, after = asyncio.run(run())
    assert isinstance(error, IndexError)
    assert after[-1].finish_reason == FinishReason.LENGTH and len(tokens(after)) == 12
    stats = engine.stats()
    assert (stats.num_running, stats.num_batch_rows) == (0, 0)


def test_a_stop_token_releases_text_held_back_for_a_stop_string(engine: Engine) -> None:
    free = asyncio.run(collect(engine, GenerationRequest("f", tuple(PROMPTS[2]), "odd", greedy(12))))
    ids = tokens(free)
    before_stop = engine._decode(ids[:6])
    # A stop string starting with the last visible character holds it back until the stop token.
    stop = (before_stop[-1] + "\u0000",)
    events = asyncio.run(
        collect(
            engine, GenerationRequest("s", tuple(PROMPTS[2]), "odd", greedy(12, stop=stop, stop_token_ids=(ids[6],)))
        )
    )
    assert events[-1].finish_reason == FinishReason.STOP
    assert "".join(e.text for e in events) == engine._decode(ids[: ids.index(ids[6])])


def test_removing_an_adapter_lets_its_running_requests_finish_then_frees_it(engine: Engine) -> None:
    async def run() -> dict[str, list[TokenEvent]]:
        on_it = engine.submit(GenerationRequest("on", tuple(PROMPTS[0]), "loud", greedy(40)))
        innocent = engine.submit(GenerationRequest("base", tuple(PROMPTS[1]), None, greedy(40)))
        first = await on_it.__anext__()
        resident_before = engine.stats().num_resident
        await asyncio.wrap_future(engine.adapters.apply(UnloadAdapter("loud")))
        assert "loud" not in engine.adapters.names()
        with pytest.raises(AdapterNotFound):
            engine.submit(GenerationRequest("late", tuple(PROMPTS[1]), "loud", greedy()))
        assert engine.stats().num_resident == resident_before  # still pinned by "on"
        done = {"on": [first, *[e async for e in on_it]], "base": [e async for e in innocent]}
        await asyncio.sleep(0.2)
        assert engine.stats().num_resident == resident_before - 1  # its slot is free once "on" is done
        return done

    done = asyncio.run(run())
    assert len(tokens(done["on"])) == 40 and len(tokens(done["base"])) == 40
    assert done["on"][-1].finish_reason == FinishReason.LENGTH


def test_shutdown_ends_every_stream_instead_of_hanging(tmp_path: Path, embedded: LoadedModel) -> None:
    engine = _engine(tmp_path, embedded, max_running=1)

    async def run() -> list[BaseException]:
        running = engine.submit(GenerationRequest("r", tuple(PROMPTS[0]), "calm", greedy(200)))
        waiting = engine.submit(GenerationRequest("w", tuple(PROMPTS[0]), "calm", greedy(5)))
        await running.__anext__()
        await asyncio.get_running_loop().run_in_executor(None, engine.shutdown)
        outcomes = []
        for stream in (running, waiting):
            with pytest.raises(Overloaded) as caught:
                async with asyncio.timeout(5):
                    async for _ in stream:
                        pass
            outcomes.append(caught.value)
        return outcomes

    assert all("shutting down" in str(e) for e in asyncio.run(run()))


def test_aborting_a_waiting_request_ends_its_stream(tmp_path: Path, embedded: LoadedModel) -> None:
    engine = _engine(tmp_path, embedded, max_running=1)
    try:

        async def run() -> list[TokenEvent]:
            running = engine.submit(GenerationRequest("r", tuple(PROMPTS[0]), None, greedy(100)))
            await running.__anext__()
            waiting = engine.submit(GenerationRequest("w", tuple(PROMPTS[0]), None, greedy(5)))
            engine.abort("w")
            events = [e async for e in waiting]
            await running.aclose()
            return events

        events = asyncio.run(run())
        assert [e.finish_reason for e in events] == [FinishReason.ABORT]
        assert engine.stats().num_waiting == 0
    finally:
        engine.shutdown()


def test_a_stream_closed_before_reading_aborts_and_frees_its_id(engine: Engine) -> None:
    async def run() -> list[TokenEvent]:
        stream = engine.submit(GenerationRequest("x", tuple(PROMPTS[0]), "calm", greedy(200)))
        with pytest.raises(InvalidRequest) as caught:  # a live id cannot be reused...
            engine.submit(GenerationRequest("x", tuple(PROMPTS[0]), "calm", greedy(3)))
        assert caught.value.code == "invalid_request_error"
        await stream.__anext__()  # running now
        await stream.aclose()
        return [e async for e in engine.submit(GenerationRequest("x", tuple(PROMPTS[0]), "calm", greedy(3)))]

    events = asyncio.run(run())
    assert len(tokens(events)) == 3 and events[-1].finish_reason == FinishReason.LENGTH  # ...a closed one can
    assert engine.stats().num_running == 0


def test_a_replaced_adapter_serves_running_requests_on_their_version(tmp_path: Path, embedded: LoadedModel) -> None:
    engine = _engine(tmp_path, embedded, start=False)
    info = BaseModelInfo.from_model(tiny_model(), "tiny-llama")
    v1_alone = tokens(
        asyncio.run(drive(engine, [(0, GenerationRequest("a", tuple(PROMPTS[0]), "calm", greedy(20)))]))["a"]
    )
    v2 = random_adapter(tmp_path / "calm-v2", info, name="calm", b_std=1.5, seed=9)

    async def swap_mid_flight() -> tuple[list[int], list[int]]:
        old = engine.submit(GenerationRequest("old", tuple(PROMPTS[0]), "calm", greedy(20)))
        for _ in range(5):
            engine.step()
        swapped = engine.adapters.apply(LoadAdapter(v2, version=2))
        engine.step()  # applies the change between steps
        assert swapped.done() and engine.adapters.published("calm").version == 2
        new = engine.submit(GenerationRequest("new", tuple(PROMPTS[0]), "calm", greedy(20)))
        while engine.stats().num_running or engine.stats().num_waiting:
            engine.step()
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        return tokens([e async for e in old]), tokens([e async for e in new])

    old_tokens, new_tokens = asyncio.run(swap_mid_flight())
    assert old_tokens == v1_alone
    assert new_tokens != v1_alone
    assert engine.stats().num_resident == 3  # version 1 was freed once nothing pinned it
    assert engine.stats().num_adapters == 3


def test_a_tiny_top_p_keeps_the_most_likely_token(engine: Engine) -> None:
    params = SamplingParams(max_tokens=5, temperature=1.0, top_p=5e-324, seed=1, ignore_eos=True)
    sampled = asyncio.run(collect(engine, GenerationRequest("p", tuple(PROMPTS[0]), "calm", params)))
    greedy_run = asyncio.run(collect(engine, GenerationRequest("g", tuple(PROMPTS[0]), "calm", greedy(5))))
    assert tokens(sampled) == tokens(greedy_run)


def test_more_adapters_than_resident_slots_all_serve_and_memory_stays_bounded(
    tmp_path: Path, embedded: LoadedModel
) -> None:
    roomy = _engine(tmp_path / "roomy", embedded, start=False)
    tight = _engine(tmp_path / "tight", embedded, start=False, max_resident_adapters=1)
    plan = [(i, GenerationRequest(f"r{i}", tuple(PROMPTS[i % 4]), name, greedy(8))) for i, name in enumerate(ADAPTERS)]
    plan += [
        (10 + i, GenerationRequest(f"again{i}", tuple(PROMPTS[0]), name, greedy(8))) for i, name in enumerate(ADAPTERS)
    ]
    expected = {rid: tokens(events) for rid, events in asyncio.run(drive(roomy, plan)).items()}
    got = {rid: tokens(events) for rid, events in asyncio.run(drive(tight, plan)).items()}
    assert got == expected  # cold adapters were loaded on demand, not refused
    stats = tight.stats()
    assert stats.num_resident == 1 and stats.num_adapters == 3
    assert stats.num_evictions >= 2  # three adapters through one resident slot
    # (how many loads exactly depends on when each load lands: requests that share an adapter share its load)
    assert stats.num_loads == stats.num_evictions + stats.num_resident  # every other load was paid for by an eviction
    assert stats.lora_bytes == roomy.stats().lora_bytes  # every load reused a freed slot: the pool never grew


def test_a_request_whose_scores_are_not_finite_fails_alone(tmp_path: Path, embedded: LoadedModel) -> None:
    """Finite but huge LoRA weights (past the default limit, which a server can raise) drive the
    adapter's logits to inf/NaN: its requests end with an error, greedy or sampled, and the rest of
    the batch goes on."""
    engine = _engine(tmp_path, embedded, start=False)
    info = BaseModelInfo.from_model(tiny_model(), "tiny-llama")
    engine.adapters.apply(LoadAdapter(poisoned_adapter(tmp_path / "poison", info)))
    alone = {
        rid: tokens(
            asyncio.run(drive(engine, [(0, GenerationRequest(rid, tuple(PROMPTS[0]), adapter, greedy(12)))]))[rid]
        )
        for rid, adapter in (("base", None), ("calm", "calm"))
    }
    plan = [
        ("poison-greedy", "poison", greedy(12)),
        ("poison-sampled", "poison", SamplingParams(max_tokens=12, temperature=1.0, seed=1, ignore_eos=True)),
        ("base", None, greedy(12)),
        ("calm", "calm", greedy(12)),
    ]

    async def run() -> dict[str, list[TokenEvent] | Exception]:
        streams = {rid: engine.submit(GenerationRequest(rid, tuple(PROMPTS[0]), a, p)) for rid, a, p in plan}
        while engine.stats().num_running or engine.stats().num_waiting:
            engine.step()
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        return await outcomes(streams)

    results = asyncio.run(run())
    assert isinstance(results["poison-greedy"], RequestFault) and isinstance(results["poison-sampled"], RequestFault)
    assert {rid: tokens(results[rid]) for rid in alone} == alone  # type: ignore[arg-type]
    assert engine.stats().num_running == 0 and engine.stats().num_batch_rows == 0


def test_a_poisoned_request_leaves_nothing_in_the_cache_for_the_next(tmp_path: Path, embedded: LoadedModel) -> None:
    """A long-running stream keeps the slot cache alive while a poisoned request (an 11-token prompt)
    fails in the slots after it; a 2-token request that joins later takes one of those slots and
    attends over 10+ columns of it (masked, but 0 × NaN is NaN): it decodes what it would alone."""
    poison = poisoned_adapter(tmp_path / "poison", BaseModelInfo.from_model(tiny_model(), "tiny-llama"))
    plan = [
        (0, GenerationRequest("long", tuple(PROMPTS[0]), None, greedy(30))),
        (2, GenerationRequest("poison", tuple(PROMPTS[2]), "poison", greedy(5))),
        (8, GenerationRequest("short", tuple(PROMPTS[1]), "calm", greedy(5))),
    ]
    alone = {
        r.request_id: tokens(
            asyncio.run(drive(_engine(tmp_path / r.request_id, embedded, start=False), [(0, r)]))[r.request_id]
        )
        for _, r in plan
        if r.adapter != "poison"
    }
    engine = _engine(tmp_path / "together", embedded, start=False)
    engine.adapters.apply(LoadAdapter(poison))

    async def run() -> dict[str, list[TokenEvent] | Exception]:
        streams, step = {}, 0
        while step < 12 or engine.stats().num_running:
            for at, request in plan:
                if at == step:
                    streams[request.request_id] = engine.submit(request)
            engine.step()
            step += 1
            await asyncio.sleep(0)
        return await outcomes(streams)

    results = asyncio.run(run())
    assert isinstance(results.pop("poison"), RequestFault)
    assert {rid: tokens(events) for rid, events in results.items()} == alone  # type: ignore[arg-type]


def test_a_prefill_in_chunks_gives_the_same_tokens(tmp_path: Path, embedded: LoadedModel) -> None:
    """With room for 4 prompt tokens a step, an 11-token prompt on an adapter (2 rows) runs in 6 chunks
    while another request decodes; every token equals the one-forward prefill's."""
    plan = [
        (0, GenerationRequest("long", tuple(PROMPTS[2]), "loud", greedy(10))),
        (0, GenerationRequest("short", tuple(PROMPTS[1]), None, greedy(20))),
    ]
    whole = asyncio.run(drive(_engine(tmp_path / "whole", embedded, start=False), plan))
    chunked = asyncio.run(drive(_engine(tmp_path / "chunked", embedded, start=False, prefill_chunk_tokens=4), plan))
    assert {rid: tokens(events) for rid, events in chunked.items()} == {
        rid: tokens(events) for rid, events in whole.items()
    }


def test_an_abort_during_a_chunked_prefill_frees_it_within_a_step(tmp_path: Path, embedded: LoadedModel) -> None:
    engine = _engine(tmp_path, embedded, start=False, prefill_chunk_tokens=4)

    async def run() -> list[TokenEvent]:
        stream = engine.submit(GenerationRequest("long", tuple(PROMPTS[2]), "loud", greedy(10)))
        while not engine._runner.is_prefilling:  # the adapter is resident: the first of its 6 chunks
            engine.step()
        engine.abort("long")
        engine.step()
        await asyncio.sleep(0)
        return [event async for event in stream]

    events = asyncio.run(run())
    assert events[-1].finish_reason == FinishReason.ABORT and not tokens(events)
    assert not engine._runner.is_prefilling and engine.stats().num_running == 0


def test_a_request_joins_while_a_long_prompt_is_prefilled(tmp_path: Path, embedded: LoadedModel) -> None:
    """With room for 16 prompt token-rows a step (4 columns), a 200-token prompt takes 50 chunks; a
    5-token request that comes at its fourth step goes first, in turn with it, and has its first token
    after its two chunks; both decode what they would alone."""
    long_prompt = tuple(range(100, 300))
    plan = [
        (0, GenerationRequest("long", long_prompt, None, greedy(3))),
        (3, GenerationRequest("short", tuple(PROMPTS[3]), None, greedy(3))),
    ]
    engine = _engine(tmp_path, embedded, start=False, prefill_chunk_tokens=16)
    first_token_step: dict[str, int] = {}

    async def run() -> None:
        streams = {}
        for step in range(80):
            for at, request in plan:
                if at == step:
                    streams[request.request_id] = engine.submit(request)
            engine.step()
            await asyncio.sleep(0)
            for rid, stream in streams.items():
                if rid not in first_token_step and stream._events.qsize():
                    first_token_step[rid] = step

    asyncio.run(run())
    assert first_token_step["short"] <= 5 < 50 <= first_token_step["long"], first_token_step
    alone = {
        rid: tokens(asyncio.run(drive(_engine(tmp_path / rid, embedded, start=False), [(0, r)]))[rid])
        for _, r in plan
        for rid in [r.request_id]
    }
    together = asyncio.run(drive(_engine(tmp_path / "both", embedded, start=False, prefill_chunk_tokens=16), plan))
    assert {rid: tokens(events) for rid, events in together.items()} == alone


def test_short_arrivals_every_step_do_not_starve_a_long_prompt(tmp_path: Path, embedded: LoadedModel) -> None:
    """A new 2-token request at every step: each goes first only once an older group has run a
    chunk, so the 200-token prompt (50 chunks) still joins within ~100 steps."""
    engine = _engine(tmp_path, embedded, start=False, prefill_chunk_tokens=16, max_running=256, max_waiting=256)

    async def run() -> int:
        stream = engine.submit(GenerationRequest("long", tuple(range(100, 300)), None, greedy(1)))
        for step in range(200):
            engine.submit(GenerationRequest(f"short-{step}", tuple(PROMPTS[1]), None, greedy(1)))
            engine.step()
            await asyncio.sleep(0)
            if stream._events.qsize():
                return step
        return -1

    assert 50 <= asyncio.run(run()) <= 110
