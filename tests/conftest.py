"""Shared fixtures: a tiny random Llama for fast unit tests, the embedded SmolLM2 for end-to-end tests."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub; set before transformers loads

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from adapters.base import BaseModelInfo  # noqa: E402
from adapters.format import LoraSpec, Manifest, ValidatedAdapter, create, lora_weights  # noqa: E402
from server.config import Settings  # noqa: E402
from server.model import LoadedModel, load_base_model  # noqa: E402

TINY_CONFIG = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)


def tiny_model(seed: int = 0, **overrides: object) -> LlamaForCausalLM:
    """A random-initialised Llama small enough for unit tests (frozen, eval mode)."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY_CONFIG, **overrides}))
    return model.eval().requires_grad_(False)


@pytest.fixture
def tiny() -> LlamaForCausalLM:
    return tiny_model()


@pytest.fixture
def tiny_info(tiny: LlamaForCausalLM) -> BaseModelInfo:
    return BaseModelInfo.from_model(tiny, "tiny-llama")


def make_adapter(
    path: Path,
    base: BaseModelInfo,
    name: str = "test-adapter",
    b_std: float = 0.0,
    alpha: float = 1.0,
    omega: float = 0.01,
    lora: LoraSpec = LoraSpec(),
    seed: int = 0,
) -> ValidatedAdapter:
    """Write a valid adapter: zero LoRA (b_std=0, untrained) or random with B ~ N(0, b_std)."""
    manifest = Manifest(
        name=name,
        base_model={"id": base.id, "fingerprint": base.fingerprint},
        alpha=alpha,
        omega=omega,
    )
    return create(path, manifest, lora, lora_weights(base, lora, seed=seed, b_std=b_std), base)


@pytest.fixture(scope="session")
def embedded() -> LoadedModel:
    """The embedded SmolLM2-135M-Instruct on CPU (converted once into the cache)."""
    return load_base_model(Settings(device="cpu"))
