"""The CUDA path on a tiny model (skipped without a GPU; bench/device_check.py runs these on one): the
LoRA host and slot pool, the engine against the reference decode, the float32 policy under bf16."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from qadapter.core.base import BaseModelInfo
from qadapter.core.decode import DecodeParams, Stream, decode
from qadapter.core.lora import AdapterHost
from qadapter.core.model import LoadedModel
from qadapter.core.policy import customised_logits
from qadapter.core.settings import Settings
from qadapter.server.engine.engine import Engine
from qadapter.server.engine.registry import LoadAdapter
from qadapter.server.engine.request import GenerationRequest, SamplingParams
from qadapter.testing.synthetic_adapters import random_adapter
from qadapter.testing.synthetic_base import synthetic_tokenizer
from tests.conftest import TINY_CONFIG, tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
PROMPTS = [(5, 17, 42, 99, 3, 250, 7), (11, 12), (300, 301, 302, 303, 304, 305, 306, 307)]


def cuda_model(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    return tiny_model().to("cuda", dtype)


def test_the_lora_host_on_cuda_computes_what_it_does_on_the_cpu(tmp_path: Path) -> None:
    """Pinned weights copied into a CUDA slot give the CPU's logits, for adapter rows and base rows."""
    info = BaseModelInfo.from_model(tiny_model(), "tiny-llama")
    adapter = random_adapter(tmp_path / "a", info, "a", b_std=0.5, seed=1)
    logits = []
    for model, weights in ((tiny_model(), adapter.read_weights()), (cuda_model(), adapter.read_weights().pinned())):
        host = AdapterHost(model)
        host.load("a", weights)
        ids = torch.tensor([PROMPTS[0], PROMPTS[0]], device=model.device)
        logits.append(host.forward(ids, None, ["a", None])[0].cpu())
    torch.testing.assert_close(logits[1], logits[0], atol=1e-4, rtol=1e-4)


def test_the_engine_on_cuda_matches_the_reference_decode(tmp_path: Path) -> None:
    model = cuda_model()
    info = BaseModelInfo.from_model(model, "tiny-llama")
    loaded = LoadedModel(model=model, tokenizer=synthetic_tokenizer(int(TINY_CONFIG["vocab_size"])), info=info)
    adapter = random_adapter(tmp_path / "a", info, "a", b_std=0.5, seed=2)
    engine = Engine(loaded, AdapterHost(model), Settings(device="cuda"))
    engine.adapters.apply(LoadAdapter(adapter))
    engine.start()
    params = SamplingParams(max_tokens=10, ignore_eos=True)

    async def run() -> list[list[int]]:
        streams = [engine.submit(GenerationRequest(f"r{i}", p, "a", params)) for i, p in enumerate(PROMPTS)]
        return [[t for event in [e async for e in s] for t in event.token_ids] for s in streams]

    got = asyncio.run(run())
    engine.shutdown()
    reference_host = AdapterHost(cuda_model())
    reference_host.load("a", adapter.read_weights())
    expected = [
        decode(reference_host, [p], [Stream("a", adapter.manifest.knobs)], DecodeParams(10), frozenset())[0][0]
        for p in PROMPTS
    ]
    assert got == expected


def test_the_policy_is_float32_when_the_model_runs_in_bf16() -> None:
    q = torch.randn(4, 512, device="cuda", dtype=torch.bfloat16)
    base = torch.randn(4, 512, device="cuda", dtype=torch.bfloat16)
    custom = customised_logits(q, base, 0.5, 0.1)
    assert custom.dtype == torch.float32
    expected = (q.float() + 0.1 * torch.log_softmax(base.float(), -1)) / 0.5
    torch.testing.assert_close(custom, expected)
