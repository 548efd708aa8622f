"""Shared fixtures: a tiny random Llama for fast unit tests, the embedded SmolLM2 for end-to-end tests."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub; set before transformers loads

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from qadapter.core.base import BaseModelInfo
from qadapter.core.model import LoadedModel, load_base_model
from qadapter.core.settings import Settings
from qadapter.testing.synthetic_base import TINY

TINY_CONFIG = {**TINY, "max_position_embeddings": 256}  # a short context: limits are quick to reach


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


@pytest.fixture(scope="session")
def embedded() -> LoadedModel:
    """The embedded SmolLM2-135M-Instruct on CPU (converted once into the cache)."""
    return load_base_model(Settings(device="cpu"))
