"""training/step.py: a micro-batch from the head at response states only and the base from a cache
built once gives the same loss and the same LoRA gradients as the full-window forward of today's
scoring functions (`objectives.qadapter_token_rewards` and `log_ratios`, what evaluation uses), for
every method and reward form, whatever pairs the cache was built in batches with."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from qadapter.adapters.format import LoraSpec
from qadapter.core.errors import InvalidData
from qadapter.testing.reference_step import full_window_loss
from qadapter.training.data import EncodedPair
from qadapter.training.lower_layers import LowerLayers, residual_entering
from qadapter.training.objectives import Objective, pair_rows
from qadapter.training.scoring import collate, taken_logprobs, window_logits
from qadapter.training.step import BaseCache, base_side, compute_step
from tests.conftest import tiny_model

PAD = 0
OBJECTIVES = [
    Objective("qadapter"),
    Objective("qadapter", value_position="next", reward_norm="padded"),
    Objective("dpo"),
    Objective("sft"),
]


def trained_looking_lora(seed: int = 0, layers: tuple[int, ...] = ()) -> PeftModel:
    """The 4-layer tiny model with a LoRA whose B is not zero, so the adapter changes the scores, in
    train mode; on `layers` only when given."""
    spec = LoraSpec(r=4, dropout=0.0, layers=layers)
    model = get_peft_model(tiny_model(seed, num_hidden_layers=4), LoraConfig(**spec.peft_config()))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05)
    return model.train()


def random_pairs(num: int, seed: int = 0) -> list[EncodedPair]:
    """Prompts and responses of unequal lengths, so rows pad differently in every batch."""
    rng = random.Random(seed)

    def ids(lo: int, hi: int) -> list[int]:
        return [rng.randrange(3, 500) for _ in range(rng.randint(lo, hi))]

    return [EncodedPair(ids(1, 9), ids(1, 7), ids(1, 11)) for _ in range(num)]


def loss_and_grads(model: PeftModel, compute: Callable[[], torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return float(loss), grads


@pytest.mark.parametrize("layers", [(), (2, 3)], ids=["every-layer", "top-layers"])
@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: f"{o.method}-{o.value_position}-{o.reward_norm}")
def test_cached_and_uncached_steps_equal_the_full_window_loss_and_gradients(
    objective: Objective, layers: tuple[int, ...]
) -> None:
    model, pairs = trained_looking_lora(layers=layers), random_pairs(6)
    lower = LowerLayers.build(model, pairs, 2, PAD, batch_size=4, show=False) if layers else None
    cache = BaseCache.build(model, pairs, objective.method, PAD, batch_size=4, show=False, lower=lower)
    chosen = [4, 1, 3]  # in other batches than the caches were built with
    micro = [pairs[i] for i in chosen]
    expected, expected_grads = loss_and_grads(model, lambda: full_window_loss(model, micro, objective, PAD))
    rows = None if cache is None else cache.rows(chosen)
    entering = None if lower is None else lower.rows(chosen, chosen_only=objective.method == "sft")
    for base in (rows, None):  # from the cache, and computed in the step
        loss, grads = loss_and_grads(
            model, lambda base=base: compute_step(model, micro, objective, PAD, base, entering).loss
        )
        assert loss == pytest.approx(expected, rel=1e-5, abs=1e-6)
        for got, want in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in expected_grads)  # the comparison is of real gradients


def test_the_cache_gives_each_batchs_base_side_whatever_it_was_built_with() -> None:
    model, pairs = trained_looking_lora(), random_pairs(7)
    for method in ("qadapter", "dpo"):
        cache = BaseCache.build(model, pairs, method, PAD, batch_size=3, show=False)
        batch = collate(pair_rows([pairs[6], pairs[0]]), PAD, torch.device("cpu"))
        torch.testing.assert_close(cache.rows([6, 0]), base_side(model, batch, method), rtol=1e-5, atol=1e-5)
    assert BaseCache.build(model, pairs, "sft", PAD, batch_size=3, show=False) is None  # SFT has no base side


def test_the_lower_layers_give_each_batchs_stream_whatever_they_were_built_with() -> None:
    model, pairs = trained_looking_lora(layers=(2, 3)), random_pairs(7)
    lower = LowerLayers.build(model, pairs, 2, PAD, batch_size=3, show=False)
    batch = collate(pair_rows([pairs[6], pairs[0]]), PAD, torch.device("cpu"))
    real = batch.attention_mask.bool()
    entering = lower.rows([6, 0]).hidden
    torch.testing.assert_close(entering[real], residual_entering(model, batch, 2)[real], rtol=1e-5, atol=1e-5)
    assert (entering[~real] == 0).all() and lower.rows([6, 0], chosen_only=True).hidden.shape[0] == 2


def test_the_base_side_is_the_base_with_the_lora_off() -> None:
    model, pairs = trained_looking_lora(), random_pairs(3)
    batch = collate(pair_rows(pairs), PAD, torch.device("cpu"))
    with torch.no_grad():
        policy = (taken_logprobs(window_logits(model, batch), batch.actions) * batch.action_mask).sum(-1)
        with model.disable_adapter():
            base = (taken_logprobs(window_logits(model, batch), batch.actions) * batch.action_mask).sum(-1)
    torch.testing.assert_close(base_side(model, batch, "dpo"), base, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(policy, base, atol=1e-3)  # the LoRA changes the scores: the check can fail
    assert all(m.training for m in model.modules())  # and the model is left as it was


def test_a_model_whose_logits_are_not_its_heads_output_is_refused() -> None:
    model = get_peft_model(tiny_model(final_logit_softcapping=30.0), LoraConfig(**LoraSpec(r=4).peft_config()))
    with pytest.raises(InvalidData, match="final_logit_softcapping"):
        compute_step(model, random_pairs(2), Objective("dpo"), PAD)
