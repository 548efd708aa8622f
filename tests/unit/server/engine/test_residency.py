"""The adapter slot pool and the loader thread: a load writes one free slot and moves nothing else, an
eviction frees the least recently used unpinned slot, and a cold adapter's load never holds up a
running stream."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import torch

from qadapter.adapters.format import ValidatedAdapter
from qadapter.core.base import BaseModelInfo
from qadapter.core.lora import AdapterHost, LoraWeights
from qadapter.core.model import LoadedModel
from qadapter.core.settings import Settings
from qadapter.server.engine.engine import Engine
from qadapter.server.engine.registry import LoadAdapter
from qadapter.server.engine.request import GenerationRequest, SamplingParams
from qadapter.server.engine.residency import Residency
from qadapter.testing.synthetic_adapters import random_adapter
from tests.conftest import tiny_model

PROMPT = (5, 17, 42, 99, 3, 250, 7)


def install_all(residency: Residency) -> None:
    deadline = time.monotonic() + 30
    while residency.num_loading and time.monotonic() < deadline:
        residency.install_ready()
        time.sleep(0.01)
    assert not residency.num_loading


def slot_contents(host: AdapterHost, key: str) -> list[torch.Tensor]:
    slot = host.slot_of(key)
    return [t[slot].clone() for layer in host._layers.values() for t in (layer.lora_a, layer.lora_b)]


def test_a_load_into_a_full_pool_evicts_the_lru_unpinned_slot_and_nothing_else_moves(
    tmp_path: Path, tiny_info: BaseModelInfo
) -> None:
    host = AdapterHost(tiny_model())
    pinned = {"c"}
    residency = Residency(host, max_resident=3, is_pinned=lambda key: key in pinned, wakeup=lambda: None)
    adapters = {n: random_adapter(tmp_path / n, tiny_info, n, b_std=0.5, seed=i) for i, n in enumerate("abcde")}
    for name in "abc":
        residency.prefetch(name, adapters[name])
        install_all(residency)  # one at a time: the use order is a, b, c
    residency.touch("a")  # now b is the least recently used, c the next but pinned
    before = {key: (host.slot_of(key), slot_contents(host, key)) for key in "ac"}
    pool_bytes, b_slot = host.lora_bytes, host.slot_of("b")

    residency.prefetch("d", adapters["d"])
    install_all(residency)
    assert host.adapter_names == ["a", "c", "d"] and residency.num_evictions == 1
    assert host.slot_of("d") == b_slot and host.lora_bytes == pool_bytes  # b's slot, written in place
    for key, (slot, contents) in before.items():
        assert host.slot_of(key) == slot
        assert all(torch.equal(x, y) for x, y in zip(contents, slot_contents(host, key)))  # untouched

    residency.touch("d")
    residency.prefetch("e", adapters["e"])
    install_all(residency)
    assert sorted(host.adapter_names) == ["c", "d", "e"]  # a went, the LRU; c stayed, pinned though older


def test_a_cold_adapters_load_does_not_hold_up_a_running_stream(tmp_path: Path, embedded: LoadedModel) -> None:
    """Stepped by hand: while the loader thread is held inside the cold adapter's read, every step
    still gives the running stream its token, and the cold request waits; released, it runs."""
    model = tiny_model()
    info = BaseModelInfo.from_model(model, "tiny-llama")
    loaded = LoadedModel(model=model, tokenizer=embedded.tokenizer, info=info)
    held = threading.Event()
    reading = threading.Event()

    def read(adapter: ValidatedAdapter) -> LoraWeights:
        if adapter.name == "cold":
            reading.set()
            assert held.wait(timeout=30)
        return adapter.read_weights()

    engine = Engine(loaded, AdapterHost(model), Settings(), read_weights=read)
    engine.adapters.apply(LoadAdapter(random_adapter(tmp_path / "warm", info, "warm", b_std=0.5, seed=1)))
    engine.adapters.apply(LoadAdapter(random_adapter(tmp_path / "cold", info, "cold", b_std=0.5, seed=2)))
    engine.step()  # publishes both (changes apply between steps)
    params = SamplingParams(max_tokens=30, ignore_eos=True)

    async def run() -> tuple[int, int]:
        running = engine.submit(GenerationRequest("running", PROMPT, "warm", params))
        while engine.stats().num_running < 1:  # warm loads (it is not held), then runs
            engine.step()
        await running.__anext__()
        assert reading.wait(timeout=30)  # the cold read began when it was published, and is held
        cold = engine.submit(GenerationRequest("cold", PROMPT, "cold", SamplingParams(max_tokens=3)))
        tokens_while_held = 0
        for _ in range(5):
            assert engine.step()
            await asyncio.sleep(0)
            tokens_while_held += len((await running.__anext__()).token_ids)
            assert engine.stats().num_waiting == 1  # the cold request waits for its load
        held.set()
        while engine.stats().num_running or engine.stats().num_waiting:
            engine.step()
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        return tokens_while_held, sum(len(e.token_ids) for e in [e async for e in cold])

    assert asyncio.run(run()) == (5, 3)
