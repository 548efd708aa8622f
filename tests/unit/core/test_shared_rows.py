"""Shared lower layers (core/shared_rows.py): an adapter row and its base row run as one below the
adapter's lowest layer, and nothing a request gets changes — logits, greedy tokens, batch invariance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

from qadapter.adapters.format import LoraSpec
from qadapter.core.base import BaseModelInfo
from qadapter.core.decode import DecodeParams, Stream, decode
from qadapter.core.knobs import Knobs
from qadapter.core.lora import AdapterHost
from qadapter.core.shared_rows import LayerRows, decoder_layers, row_plan, shareable_decoder_layers
from qadapter.testing.synthetic_adapters import random_adapter
from tests.conftest import tiny_model

NUM_LAYERS = 4
PROMPTS = [[5, 17, 42, 99, 3, 250, 7], [11, 12, 13], [300, 301, 302, 303, 304]]
# name → the LoRA's layers: the top two, the top one, every layer
SHAPES = {"top": LoraSpec().on_top(2, NUM_LAYERS), "last": LoraSpec().on_top(1, NUM_LAYERS), "every": LoraSpec()}


def host(tmp_path: Path, share: bool, **config: object) -> AdapterHost:
    """A four-layer tiny model with the SHAPES adapters loaded (large random weights: they change tokens)."""
    model = tiny_model(num_hidden_layers=NUM_LAYERS, **config)
    info = BaseModelInfo.from_model(model, "tiny-llama")
    adapter_host = AdapterHost(model, share_lower_layers=share)
    for i, (name, lora) in enumerate(SHAPES.items()):
        adapter = random_adapter(tmp_path / f"{name}-{share}", info, name, b_std=1.0, lora=lora, seed=i)
        adapter_host.load(name, adapter.read_weights())
    return adapter_host


def test_a_plan_runs_each_layer_on_the_rows_that_differ_there() -> None:
    # row 0: an adapter from layer 2 on, sharing with row 1 (its base row); row 2: a plain base row
    plan = row_plan([2, 0, 0], [1, None, None])
    assert plan == [
        LayerRows((1, 2), (1, 2)),  # layer 0: the base rows only
        LayerRows((1, 2), None),
        LayerRows((0, 1, 2), (0, 0, 1)),  # layer 2: the adapter row starts from its base row's state
    ]
    assert row_plan([0, 0], [1, None]) is None  # an adapter on every layer shares nothing
    assert row_plan([3, 0], [None, None]) is None  # no partner, nothing shared
    with pytest.raises(AssertionError, match="a partner shares nothing itself"):
        row_plan([2, 2], [1, 0])  # two adapter rows each other's partner: no base row to start from


@pytest.mark.parametrize("attention", ["sdpa", "eager"])  # a boolean mask, an additive one
def test_shared_rows_give_the_logits_of_unshared_ones_over_a_prefill_and_decode_steps(
    tmp_path: Path, attention: str
) -> None:
    rows = ["top", None, "last", None, "every", None, None]
    partners = [1, None, 3, None, 5, None, None]
    prompts = [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2 + [PROMPTS[2]] * 3  # left-padded: a 4-D mask per row
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    shared = host(tmp_path, share=True, attn_implementation=attention)
    unshared = host(tmp_path, share=False, attn_implementation=attention)
    assert shared.row_plan(rows, partners) is not None and unshared.row_plan(rows, partners) is None
    assert shared.uses_additive_masks == (attention == "eager")
    caches = [DynamicCache(), DynamicCache()]
    for step in range(4):
        got, _ = shared.forward(ids, caches[0], rows, mask, positions, plan=shared.row_plan(rows, partners))
        want, _ = unshared.forward(ids, caches[1], rows, mask, positions, plan=unshared.row_plan(rows, partners))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        ids = torch.tensor([[7 + step]] * len(rows))
        mask, positions = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1), positions[:, -1:] + 1
    assert not torch.allclose(got[0], got[1])  # the adapter acts: the test can fail


def test_greedy_decoding_is_the_same_shared_or_not_and_whatever_decodes_beside(tmp_path: Path) -> None:
    streams = [Stream("top", Knobs(0.7, 0.1)), Stream("last"), Stream("every"), Stream(None)]
    params = DecodeParams(max_tokens=10)
    shared = decode(host(tmp_path, share=True), PROMPTS, streams, params, frozenset())
    assert shared == decode(host(tmp_path, share=False), PROMPTS, streams, params, frozenset())
    alone = decode(host(tmp_path, share=True), PROMPTS[:1], streams[:1], params, frozenset())
    assert alone[0][0] == shared[0][0]
    assert shared[0][0] != shared[0][3]  # the adapter changed the answer: the test can fail


def test_a_model_whose_layers_the_hook_cannot_cut_runs_every_row_in_every_layer(tmp_path: Path) -> None:
    adapter_host = host(tmp_path, share=True)
    assert adapter_host.share_lower_layers
    model = tiny_model(num_hidden_layers=NUM_LAYERS)
    model.config.model_type = "bloom"  # its alibi tensor is per head and row: not cut
    unknown = AdapterHost(model)
    assert not unknown.share_lower_layers and unknown.row_plan(["top", None], [1, None]) is None
    unknown.share_lower_layers = True  # nor can it be switched on
    assert not unknown.share_lower_layers


def test_the_decoder_layers_are_found_by_the_decoders_layers_list_and_another_shape_has_none() -> None:
    model = tiny_model(num_hidden_layers=NUM_LAYERS)
    assert decoder_layers(model) is model.model.layers
    assert shareable_decoder_layers(model) == ("model.layers", model.model.layers)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64))  # its blocks are `h`
    assert decoder_layers(gpt2) is None and shareable_decoder_layers(gpt2) is None
