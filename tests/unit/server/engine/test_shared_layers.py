"""The engine's runner with shared lower layers: prefill groups (chunked, a row leaving mid-way), the
decoding slots (rows joining, a row leaving and the last one moving into its slot) give every row
the logits a runner that shares nothing gives it."""

from __future__ import annotations

from pathlib import Path

import torch

from qadapter.adapters.format import LoraSpec
from qadapter.core.base import BaseModelInfo
from qadapter.core.lora import AdapterHost
from qadapter.server.engine.detokenize import TextTracker
from qadapter.server.engine.request import GenerationRequest, Sequence
from qadapter.server.engine.runner import BatchRunner
from qadapter.testing.synthetic_adapters import random_adapter
from tests.conftest import tiny_model

NUM_LAYERS = 4
SHAPES = {"top": LoraSpec().on_top(2, NUM_LAYERS), "last": LoraSpec().on_top(1, NUM_LAYERS), "every": LoraSpec()}
PROMPTS = {
    "a": ("top", [5, 17, 42, 99, 3, 250, 7, 8]),
    "b": (None, [11, 12, 13]),
    "c": ("every", [300, 301, 302, 303, 304]),
    "d": ("top", [60, 61]),
    "e": ("last", [70, 71, 72, 73]),
}


def runner(tmp_path: Path, share: bool) -> BatchRunner:
    model = tiny_model(num_hidden_layers=NUM_LAYERS)
    info = BaseModelInfo.from_model(model, "tiny-llama")
    host = AdapterHost(model, share_lower_layers=share)
    for i, (name, lora) in enumerate(SHAPES.items()):
        host.load(
            name, random_adapter(tmp_path / f"{name}-{share}", info, name, b_std=1.0, lora=lora, seed=i).read_weights()
        )
    return BatchRunner(host, pad_token_id=0, prefill_chunk_tokens=12)  # a group of 5 rows: 2 columns a chunk


def scenario(runner: BatchRunner) -> list[torch.Tensor]:
    """The logits of every forward that returns some, through joins and leaves."""
    seqs = {
        name: Sequence(GenerationRequest(name, tuple(ids)), None, TextTracker(lambda _: "", ()), adapter_key=adapter)
        for name, (adapter, ids) in PROMPTS.items()
    }
    out = []

    def prefill(names: list[str], leaving: str | None = None) -> None:
        runner.start_prefill([seqs[n] for n in names])
        assert runner.prefill_chunk() is None
        if leaving:
            runner.remove([seqs[leaving]])
        while (logits := runner.prefill_chunk()) is None:
            pass
        out.append(logits)

    def decode(steps: int) -> None:
        for step in range(steps):
            for one, _ in runner.rows:
                one.output_ids.append(20 + step)
            out.append(runner.decode())

    prefill(["a", "b", "c"], leaving="b")  # b leaves the group mid-way
    decode(2)
    prefill(["d", "e"])
    decode(2)
    runner.remove([seqs["a"]])  # the last rows move into a's slots
    decode(3)
    return out


def test_shared_layers_give_every_row_the_logits_of_unshared_ones(tmp_path: Path) -> None:
    shared, unshared = runner(tmp_path, share=True), runner(tmp_path, share=False)
    got, want = scenario(shared), scenario(unshared)
    assert [t.shape for t in got] == [t.shape for t in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    rows = {(one.request_id, name): i for i, (one, name) in enumerate(shared.rows)}
    assert not torch.allclose(got[-1][rows["d", "top"]], got[-1][rows["d", None]])  # the adapters act
    assert shared._host.row_plan(["top", None], [1, None]) is not None  # and shared layers did run
