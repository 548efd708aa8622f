"""Reference decoding on a tiny random Llama: one mixed-adapter forward per token, Q-Adapter combination."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel

from qadapter.adapters.format import LoraSpec
from qadapter.core.base import BaseModelInfo
from qadapter.core.decode import DecodeParams, Stream, decode
from qadapter.core.errors import AdapterNotFound, InvalidAdapter
from qadapter.core.knobs import Knobs
from qadapter.core.lora import AdapterHost
from qadapter.core.policy import customised_logits
from qadapter.testing.synthetic_adapters import random_adapter
from tests.conftest import tiny_model

PROMPT = [5, 17, 42, 99, 3, 250, 7]
NO_STOP: frozenset[int] = frozenset()


def _host_with(tmp_path: Path, info: BaseModelInfo, **adapters: float) -> AdapterHost:
    """A host on a fresh tiny model with adapters name → b_std loaded."""
    host = AdapterHost(tiny_model())
    for i, (name, b_std) in enumerate(adapters.items()):
        adapter = random_adapter(tmp_path / name, info, name=name, b_std=b_std, seed=i)
        host.load(adapter.name, adapter.read_weights())
    return host


@pytest.mark.parametrize(("alpha", "omega"), [(1.0, 0.01), (0.3, 0.0), (2.0, 1.0), (1.0, 5.0)])
def test_zero_lora_reproduces_the_base_greedy_output(
    tmp_path: Path, tiny_info: BaseModelInfo, alpha: float, omega: float
) -> None:
    host = _host_with(tmp_path, tiny_info, zero=0.0)
    adapted, base = decode(
        host, [PROMPT], [Stream("zero", Knobs(alpha, omega)), Stream(None)], DecodeParams(max_tokens=24), NO_STOP
    )[0]
    assert adapted == base
    assert len(base) == 24


def test_a_large_random_lora_changes_the_output(tmp_path: Path, tiny_info: BaseModelInfo) -> None:
    host = _host_with(tmp_path, tiny_info, loud=2.0)
    adapted, base = decode(host, [PROMPT], [Stream("loud"), Stream(None)], DecodeParams(max_tokens=24), NO_STOP)[0]
    assert adapted != base


def test_matches_separate_uncached_forwards(tmp_path: Path, tiny_info: BaseModelInfo) -> None:
    """The batched, cached decode equals the paper's approach: two full forwards per token."""
    host = _host_with(tmp_path, tiny_info, first=0.5, second=0.8)
    streams = [Stream("first", Knobs(1.5, 0.2)), Stream("second", Knobs(0.7, 0.05)), Stream(None)]
    got = decode(host, [PROMPT], streams, DecodeParams(max_tokens=12), NO_STOP)[0]
    for stream, tokens in zip(streams[:2], got):
        reference = PeftModel.from_pretrained(tiny_model(), str(tmp_path / stream.adapter)).eval()
        sequence = list(PROMPT)
        for _ in range(12):
            ids = torch.tensor([sequence])
            with torch.no_grad():
                q = reference(input_ids=ids).logits[:, -1]
                with reference.disable_adapter():
                    base = reference(input_ids=ids).logits[:, -1]
            sequence.append(int(customised_logits(q, base, stream.knobs.alpha, stream.knobs.omega).argmax()))
        assert tokens == sequence[len(PROMPT) :]
    with torch.no_grad():
        plain = tiny_model().generate(torch.tensor([PROMPT]), max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert got[2] == plain[0, len(PROMPT) :].tolist()


def test_seeded_sampling_repeats_and_seeds_differ(tmp_path: Path, tiny_info: BaseModelInfo) -> None:
    host = _host_with(tmp_path, tiny_info, a=0.5)

    def sample(seed: int) -> list[int]:
        params = DecodeParams(max_tokens=16, temperature=1.5, seed=seed)
        return decode(host, [PROMPT], [Stream("a")], params, NO_STOP)[0][0]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_a_stop_token_ends_only_its_stream(tmp_path: Path, tiny_info: BaseModelInfo) -> None:
    host = _host_with(tmp_path, tiny_info, a=1.0)
    free = decode(host, [PROMPT], [Stream("a"), Stream(None)], DecodeParams(max_tokens=10), NO_STOP)[0]
    stop = free[1][3]
    stopped = decode(host, [PROMPT], [Stream("a"), Stream(None)], DecodeParams(max_tokens=10), frozenset({stop}))[0]
    assert stopped[1] == free[1][: free[1].index(stop) + 1]
    expected_adapted = free[0][: free[0].index(stop) + 1] if stop in free[0] else free[0]
    assert stopped[0] == expected_adapted


def test_loading_the_same_name_twice_is_refused(tmp_path: Path, tiny_info: BaseModelInfo) -> None:
    host = _host_with(tmp_path, tiny_info, a=0.0)
    with pytest.raises(InvalidAdapter, match="an adapter named 'a' is already loaded"):
        host.load("a", random_adapter(tmp_path / "again", tiny_info, name="a").read_weights())
    assert host.adapter_names == ["a"]


def test_a_failed_load_leaves_the_host_as_it_was(tmp_path: Path, tiny_info: BaseModelInfo) -> None:
    host = _host_with(tmp_path, tiny_info, a=0.5)
    before = decode(host, [PROMPT], [Stream("a")], DecodeParams(max_tokens=8), NO_STOP)[0]
    broken = random_adapter(tmp_path / "broken", tiny_info, name="broken", b_std=0.5)
    weights = broken.path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # damaged after validation
    with pytest.raises(InvalidAdapter, match="adapter 'broken' could not be loaded"):
        host.load(broken.name, broken.read_weights())
    assert host.adapter_names == ["a"]
    assert decode(host, [PROMPT], [Stream("a")], DecodeParams(max_tokens=8), NO_STOP)[0] == before
    host.load("fine", random_adapter(tmp_path / "fine", tiny_info, name="fine", b_std=0.5).read_weights())
    assert host.adapter_names == ["a", "fine"]


def test_unloading_keeps_the_other_adapters_and_frees_the_slot(tmp_path: Path, tiny_info: BaseModelInfo) -> None:
    host = _host_with(tmp_path, tiny_info, a=0.5, b=0.8, c=1.0)
    streams = [Stream("a"), Stream("c")]
    before = decode(host, [PROMPT], streams, DecodeParams(max_tokens=10), NO_STOP)[0]
    bytes_before = host.lora_bytes
    host.unload("b")
    assert host.adapter_names == ["a", "c"]
    assert decode(host, [PROMPT], streams, DecodeParams(max_tokens=10), NO_STOP)[0] == before
    with pytest.raises(AdapterNotFound):
        decode(host, [PROMPT], [Stream("b")], DecodeParams(max_tokens=2), NO_STOP)[0]
    host.load("d", random_adapter(tmp_path / "d", tiny_info, name="d", b_std=0.3, seed=7).read_weights())
    assert host.slot_of("d") == 2 and host.lora_bytes == bytes_before  # b's slot, reused: the pool did not grow
    assert decode(host, [PROMPT], streams, DecodeParams(max_tokens=10), NO_STOP)[0] == before


def test_adapters_of_different_ranks_share_a_batch(tmp_path: Path, tiny_info: BaseModelInfo) -> None:
    small = random_adapter(tmp_path / "small", tiny_info, name="small", b_std=0.5, lora=LoraSpec(r=4))
    big = random_adapter(
        tmp_path / "big",
        tiny_info,
        name="big",
        b_std=0.5,
        lora=LoraSpec(r=16, target_modules=("q_proj", "o_proj")),
        seed=3,
    )
    alone = []
    for adapter in (small, big):
        host = AdapterHost(tiny_model())
        host.load(adapter.name, adapter.read_weights())
        alone += decode(host, [PROMPT], [Stream(adapter.name)], DecodeParams(max_tokens=10), NO_STOP)[0]
    together = AdapterHost(tiny_model())
    together.load(small.name, small.read_weights())
    together.load(big.name, big.read_weights())
    assert (
        decode(together, [PROMPT], [Stream("small"), Stream("big")], DecodeParams(max_tokens=10), NO_STOP)[0] == alone
    )
