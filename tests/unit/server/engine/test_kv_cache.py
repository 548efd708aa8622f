"""The slot KV cache: a join writes only its own rows, a leave moves only the last row into the slot it
frees, and a decode step's mask and positions give each row its own length."""

from __future__ import annotations

import torch

from qadapter.server.engine.kv_cache import GrowableCache, SlotCache

HEADS, DIM, LAYERS = 2, 4, 3


def prefilled(mask: list[list[int]], seed: int) -> tuple[GrowableCache, torch.Tensor]:
    """A left-padded prefill cache of random keys and values for rows with this mask."""
    generator = torch.Generator().manual_seed(seed)
    rows, width = len(mask), len(mask[0])
    cache = GrowableCache()
    for layer in range(LAYERS):
        keys = torch.randn(rows, HEADS, width, DIM, generator=generator)
        cache.update(keys, keys + 100, layer)
    return cache, torch.tensor(mask)


def row_tokens(cache: SlotCache, layer: int, slot: int) -> torch.Tensor:
    return cache._keys[layer][slot, :, : cache.lengths[slot]].clone()


def test_a_join_copies_each_row_s_real_tokens_to_the_start_of_a_free_slot() -> None:
    slots = SlotCache()
    group, mask = prefilled([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]], seed=0)
    slots.add_rows(group, mask)
    assert slots.lengths == [3, 5, 4]
    for layer in range(LAYERS):
        for slot, count in enumerate(slots.lengths):
            assert torch.equal(row_tokens(slots, layer, slot), group.layers[layer].keys[slot, :, 5 - count :])
            assert torch.equal(slots._values[layer][slot, :, :count], group.layers[layer].values[slot, :, 5 - count :])


def test_a_join_and_a_leave_touch_no_other_row() -> None:
    slots = SlotCache()
    slots.add_rows(*prefilled([[1, 1, 1], [0, 1, 1], [1, 1, 1]], seed=1))  # A, B, C
    a_before, c_before = row_tokens(slots, 1, 0), row_tokens(slots, 1, 2)
    storage = slots._keys[1].data_ptr()
    slots.add_rows(*prefilled([[1, 1, 1, 1]], seed=2))  # D joins: written into slot 3 only
    d_before = row_tokens(slots, 1, 3)
    assert slots._keys[1].data_ptr() == storage  # no growth, no copy of the cache
    assert torch.equal(row_tokens(slots, 1, 0), a_before) and torch.equal(row_tokens(slots, 1, 2), c_before)

    order = slots.remove_rows([1])  # B leaves: D, the last row, moves into its slot
    assert order == [0, 3, 2] and slots.lengths == [3, 4, 3]
    assert torch.equal(row_tokens(slots, 1, 0), a_before) and torch.equal(row_tokens(slots, 1, 2), c_before)
    assert torch.equal(row_tokens(slots, 1, 1), d_before)
    assert slots._keys[1].data_ptr() == storage

    slots.remove_rows([0, 1, 2])
    assert slots.num_rows == 0 and slots._keys == []  # nothing decodes: the memory goes back


def test_a_decode_step_writes_each_row_at_its_own_length() -> None:
    slots = SlotCache()
    slots.add_rows(*prefilled([[0, 1, 1], [1, 1, 1]], seed=3))  # lengths 2 and 3
    mask, positions = slots.step_inputs(torch.float32, additive=False)
    assert positions.flatten().tolist() == [2, 3]
    assert mask[:, 0, 0].tolist() == [[True, True, True, False], [True, True, True, True]]
    new = torch.full((2, HEADS, 1, DIM), 7.0)
    with torch.inference_mode():  # as in the engine's forward
        keys, _ = slots.update(new, new, 0)
    assert keys.shape == (2, HEADS, 4, DIM)
    assert torch.equal(keys[0, :, 2], new[0, :, 0]) and torch.equal(keys[1, :, 3], new[1, :, 0])
    slots.advance()
    assert slots.lengths == [3, 4]


def test_a_leaving_row_leaves_nothing_behind_for_the_next_one() -> None:
    """A faulted request's NaN must not stay in a freed slot: the next row in it attends over those
    columns (masked, but 0 × NaN is NaN)."""
    slots = SlotCache()
    slots.add_rows(*prefilled([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]], seed=3))  # A, poisoned B, C
    with torch.inference_mode():  # the buffers are inference tensors, as the engine writes them
        for layer in range(LAYERS):
            slots._keys[layer][1].fill_(float("nan"))
            slots._values[layer][1].fill_(float("inf"))
    slots.remove_rows([1])  # C moves into B's slot, 2 tokens over B's 5
    slots.add_rows(*prefilled([[1]], seed=4))  # D joins the slot C left
    for buffers in (slots._keys, slots._values):
        for buffer in buffers:
            assert bool(torch.isfinite(buffer).all())
            assert not buffer[1, :, 2:].any() and not buffer[2, :, 1:].any()  # past each row's tokens: zeros
