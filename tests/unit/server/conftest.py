"""A started Engine on the tiny model with the synthetic word tokenizer, for the server's unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qadapter.core.base import BaseModelInfo
from qadapter.core.lora import AdapterHost
from qadapter.core.model import LoadedModel
from qadapter.core.settings import Settings
from qadapter.server.engine.engine import Engine
from qadapter.testing.synthetic_base import synthetic_tokenizer
from tests.conftest import tiny_model


@pytest.fixture
def tiny_engine() -> Iterator[Engine]:
    model = tiny_model()
    loaded = LoadedModel(model, synthetic_tokenizer(512), BaseModelInfo.from_model(model, "tiny-llama"))
    engine = Engine(loaded, AdapterHost(model), Settings())
    engine.start()
    yield engine
    engine.shutdown()
