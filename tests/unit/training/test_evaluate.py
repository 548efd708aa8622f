"""`qadapter eval` metrics against values computed by hand, one unpadded sequence at a time, on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from qadapter.adapters.format import validate
from qadapter.core.base import BaseModelInfo
from qadapter.core.chat import user_prompt_ids
from qadapter.core.decode import DecodeParams, Stream, decode
from qadapter.core.errors import InvalidData, InvalidRequest
from qadapter.core.knobs import Knobs
from qadapter.core.model import LoadedModel
from qadapter.testing.synthetic_adapters import random_adapter
from qadapter.training.answers import EvalSets
from qadapter.training.data import PreferencePair, encode_pair
from qadapter.training.evaluate import (
    ServedPoint,
    evaluate,
    format_report,
    kl_to_base,
)
from qadapter.training.rankings import pair_margins, ranked_share, served_margins
from qadapter.training.scoring import ModelRows
from tests.conftest import tiny_model

VOCAB = 49152
PAIRS = [
    PreferencePair(({"role": "user", "content": "Say something kind."},), "You are great.", "Go away, you fool!", 1),
    PreferencePair(({"role": "user", "content": "What is 2+2?"},), "4", "It is five, obviously.", 2),
    PreferencePair(({"role": "user", "content": "Hi"},), "Hello! How can I help?", "No.", 3),
]


@pytest.fixture
def base_model() -> torch.nn.Module:
    return tiny_model(vocab_size=VOCAB)


def write_adapter(
    path: Path,
    model: torch.nn.Module,
    method: str | None,
    knobs: Knobs,
    objective: dict | None = None,
    seed: int = 3,
    name: str = "hand",
) -> Path:
    """A random LoRA; `objective` is the manifest's trained objective (hyper-parameters) when given."""
    training = None if method is None else {"method": method}
    if training is not None and objective is not None:
        training["hyperparameters"] = {"objective": objective}
    info = BaseModelInfo.from_model(model, "tiny")
    return random_adapter(path, info, name, b_std=0.3, knobs=knobs, seed=seed, training=training).path


def tiny_loaded(model: torch.nn.Module, embedded: LoadedModel) -> LoadedModel:
    """The tiny model served with the embedded model's tokenizer."""
    return LoadedModel(model=model, tokenizer=embedded.tokenizer, info=BaseModelInfo.from_model(model, "tiny"))


def full_logits(model: torch.nn.Module, ids: list[int], adapter_on: bool) -> torch.Tensor:
    """Logits `[len(ids), vocab]` of one unpadded sequence."""
    with torch.no_grad():
        if adapter_on or not isinstance(model, PeftModel):
            return model(input_ids=torch.tensor([ids])).logits[0].float()
        with model.disable_adapter():
            return model(input_ids=torch.tensor([ids])).logits[0].float()


def hand_reward(
    model: torch.nn.Module,
    prompt: list[int],
    response: list[int],
    method: str,
    alpha: float,
    omega: float,
    value_position: str = "same",
) -> float:
    """The implicit reward of one response, written out per token (V at s_t, or at s_{t+1} with "next")."""
    q = full_logits(model, prompt + response, adapter_on=True)
    base = full_logits(model, prompt + response, adapter_on=False)
    states = [len(prompt) - 1 + t for t in range(len(response))]  # the state that takes response token t
    if method == "base":
        return sum(float(torch.log_softmax(base[s], -1)[a]) for s, a in zip(states, response))
    custom = [(q[s] + omega * torch.log_softmax(base[s], -1)) / alpha for s in states]
    if method in ("sft", "dpo"):
        return sum(
            float(torch.log_softmax(c, -1)[a] - torch.log_softmax(base[s], -1)[a])
            for c, s, a in zip(custom, states, response)
        )
    values = [alpha * float(torch.logsumexp(c, -1)) for c in custom] + [0.0]  # V(terminal) = 0
    shift = 0 if value_position == "same" else 1
    rewards = [float(q[s][a]) - values[t + shift] for t, (s, a) in enumerate(zip(states, response))]
    return sum(rewards) / len(rewards)


@pytest.mark.parametrize(("method", "alpha", "omega"), [("qadapter", 0.7, 0.3), ("dpo", 1.0, 0.0), ("base", 1.0, 0.0)])
def test_pair_margins_equal_hand_computed_rewards(
    embedded: LoadedModel, base_model: torch.nn.Module, tmp_path: Path, method: str, alpha: float, omega: float
) -> None:
    tokenizer = embedded.tokenizer
    info = BaseModelInfo.from_model(base_model, "tiny")
    if method == "base":
        adapter, model = None, base_model
    else:
        adapter = validate(write_adapter(tmp_path / "a", base_model, method, Knobs(alpha, omega)), info)
        model = PeftModel.from_pretrained(base_model, str(adapter.path)).eval()
    margins = pair_margins(model, tokenizer, adapter, PAIRS, max_length=512, pad_id=2, show_progress=False)
    expected = []
    for pair in PAIRS:
        encoded = encode_pair(tokenizer, pair, 512)
        chosen = hand_reward(model, encoded.prompt_ids, encoded.chosen_ids, method, alpha, omega)
        rejected = hand_reward(model, encoded.prompt_ids, encoded.rejected_ids, method, alpha, omega)
        expected.append(chosen - rejected)
    assert margins.tolist() == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(("method", "alpha", "omega"), [("qadapter", 0.7, 0.3), ("dpo", 1.0, 0.0)])
def test_served_margins_are_the_served_log_ratio_for_every_method(
    embedded: LoadedModel, base_model: torch.nn.Module, tmp_path: Path, method: str, alpha: float, omega: float
) -> None:
    """One yardstick: Σ log π_served(y)/π_base(y), chosen minus rejected, whatever the method trains;
    beside it, from the same forwards, the Q-adapter's own reward."""
    tokenizer, knobs = embedded.tokenizer, Knobs(alpha, omega)
    adapter = validate(
        write_adapter(tmp_path / "a", base_model, method, knobs), BaseModelInfo.from_model(base_model, "t")
    )
    model = PeftModel.from_pretrained(base_model, str(adapter.path)).eval()
    policy, reward = served_margins(model, tokenizer, adapter, PAIRS, 512, 2, show_progress=False)
    policy, reward = policy[:, 0], None if reward is None else reward[:, 0]
    expected = []
    for pair in PAIRS:
        encoded = encode_pair(tokenizer, pair, 512)
        chosen = hand_reward(model, encoded.prompt_ids, encoded.chosen_ids, "dpo", alpha, omega)
        rejected = hand_reward(model, encoded.prompt_ids, encoded.rejected_ids, "dpo", alpha, omega)
        expected.append(chosen - rejected)
    assert policy.tolist() == pytest.approx(expected, abs=1e-4)
    if method == "qadapter":
        assert reward is not None
        assert reward.tolist() == pytest.approx(pair_margins(model, tokenizer, adapter, PAIRS, 512, 2, False).tolist())
    else:
        assert reward is None
    base_policy, base_reward = served_margins(model, tokenizer, None, PAIRS, 512, 2, show_progress=False)
    assert base_policy.tolist() == [[0.0]] * len(PAIRS) and base_reward is None


def test_a_tie_counts_half() -> None:
    assert ranked_share(torch.tensor([1.0, -1.0, 0.0, 2.0])) == 0.625


def test_kl_to_base_equals_the_hand_computed_mean(
    embedded: LoadedModel, base_model: torch.nn.Module, tmp_path: Path
) -> None:
    info = BaseModelInfo.from_model(base_model, "tiny")
    path = write_adapter(tmp_path / "a", base_model, "qadapter", Knobs(0.8, 0.2))
    model = PeftModel.from_pretrained(base_model, str(validate(path, info).path)).eval()
    prompts = [user_prompt_ids(embedded.tokenizer, t) for t in ("Hi", "Tell me a story")]
    answers = [[100, 200, 300], [7, 8]]
    total, count = 0.0, 0
    for prompt, answer in zip(prompts, answers):
        q = full_logits(model, prompt + answer, adapter_on=True)
        base = full_logits(model, prompt + answer, adapter_on=False)
        for t in range(len(answer)):
            s = len(prompt) - 1 + t
            custom = torch.log_softmax((q[s] + 0.2 * torch.log_softmax(base[s], -1)) / 0.8, -1)
            total += float((custom.exp() * (custom - torch.log_softmax(base[s], -1))).sum())
            count += 1
    (measured,) = kl_to_base(model, prompts, answers, [Knobs(0.8, 0.2)], pad_id=2)
    assert measured == pytest.approx(total / count, rel=1e-4)
    assert measured > 0


def greedy_by_hand(
    model: torch.nn.Module,
    prompt: list[int],
    knobs: Knobs | None,
    max_tokens: int,
    stop_ids: frozenset[int] = frozenset({2}),
) -> list[int]:
    """Uncached greedy decoding of one prompt (knobs None: the base), the whole sequence re-run every token."""
    ids = list(prompt)
    for _ in range(max_tokens):
        base = full_logits(model, ids, adapter_on=False)[-1]
        if knobs is not None:
            q = full_logits(model, ids, adapter_on=True)[-1]
            scores = (q + knobs.omega * torch.log_softmax(base, -1)) / knobs.alpha
        else:
            scores = base
        ids.append(int(scores.argmax()))
        if ids[-1] in stop_ids:
            break
    return ids[len(prompt) :]


@pytest.mark.parametrize("use_adapter", [True, False])
def test_batched_generation_equals_uncached_greedy_with_padding_and_stops(
    embedded: LoadedModel, tmp_path: Path, use_adapter: bool
) -> None:
    varied = tiny_model(vocab_size=VOCAB, initializer_range=0.3)  # the default init repeats one token
    path = write_adapter(tmp_path / "a", varied, None, Knobs(0.9, 0.2))
    model = PeftModel.from_pretrained(varied, str(path)).eval()
    knobs = Knobs(0.9, 0.2) if use_adapter else None
    stream = Stream("default", knobs) if knobs else Stream(None)
    prompts = [
        user_prompt_ids(embedded.tokenizer, t)
        for t in ("Hi", "Tell me a much longer story about a cat and a dog.", "Why?")
    ]
    free = [greedy_by_hand(model, p, knobs, 8, stop_ids=frozenset()) for p in prompts]
    # the first answer stops at the first token it has not produced before (from its 3rd on); the
    # others stop where (if) they meet that token, and decoding goes on for the rest of the batch
    stop_at = next(i for i in range(2, 8) if free[0][i] not in free[0][:i])
    stop = free[0][stop_at]
    expected = [answer[: answer.index(stop) + 1] if stop in answer else answer for answer in free]
    decoded = decode(ModelRows(model), prompts, [stream], DecodeParams(8), frozenset({stop}), pad_id=2, batch_size=2)
    assert [answer for (answer,) in decoded] == expected
    assert len(expected[0]) == stop_at + 1 and max(map(len, expected)) == 8


def test_evaluate_reports_retention_and_answer_length_as_decoded_by_hand(
    embedded: LoadedModel, base_model: torch.nn.Module, tmp_path: Path
) -> None:
    tokenizer = embedded.tokenizer
    path = write_adapter(tmp_path / "a", base_model, None, Knobs(1.0, 0.01))
    questions = ["What is the capital of France?", "Name a colour."]
    # what the adapter policy answers to the first question, by hand; the second's answer is impossible
    hand_model = PeftModel.from_pretrained(tiny_model(vocab_size=VOCAB), str(path)).eval()
    knobs = Knobs(1.0, 0.01)
    first_ids = user_prompt_ids(tokenizer, questions[0])
    own_answer = tokenizer.decode(greedy_by_hand(hand_model, first_ids, knobs, 12), skip_special_tokens=True)
    base_answer = tokenizer.decode(greedy_by_hand(hand_model, first_ids, None, 12), skip_special_tokens=True)
    assert own_answer.strip() and own_answer != base_answer
    (tmp_path / "q.jsonl").write_text(
        json.dumps({"question": questions[0], "answers": [own_answer.strip()]})
        + "\n"
        + json.dumps({"question": questions[1], "answers": ["\u2603 never said"]})
        + "\n"
    )
    (tmp_path / "p.txt").write_text("Hi\nTell me a story about a cat.\n")
    sets = EvalSets.load("test", tmp_path / "p.txt", tmp_path / "q.jsonl", max_answer_tokens=10, max_question_tokens=12)
    (report,) = evaluate(tiny_loaded(base_model, embedded), path, PAIRS, sets, max_length=512, show_progress=False)

    assert report.retention_accuracy == 0.5
    assert report.base_retention_accuracy == (0.5 if own_answer.strip() in base_answer else 0.0)
    lengths = [len(greedy_by_hand(hand_model, user_prompt_ids(tokenizer, p), knobs, 10)) for p in sets.neutral_prompts]
    assert report.mean_answer_tokens == sum(lengths) / len(lengths)
    assert (report.num_pairs, report.num_questions, report.num_neutral_prompts) == (3, 2, 2)
    assert report.method == "qadapter" and report.kl_to_base > 0
    assert report.reward_margin is not None and not math.isnan(report.reward_margin)
    assert report.reward_accuracy is not None and 0 <= report.policy_accuracy <= 1
    assert report.num_refusal_prompts == len(PAIRS) and 0 <= report.refusal_rate <= 1
    table = format_report(report)
    assert "policy accuracy" in table and "reward accuracy" in table and "retention accuracy" in table


def test_bad_question_file_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "q.jsonl").write_text('{"question": "a", "answers": ["b"]}\n{"question": "c"}\n')
    (tmp_path / "p.txt").write_text("Hi\n")
    with pytest.raises(InvalidData, match="line 2"):
        EvalSets.load("test", tmp_path / "p.txt", tmp_path / "q.jsonl")


def test_length_shortcut_shares_count_agreement_only_where_lengths_differ() -> None:
    from experiments.length_shortcut import shares

    margin = torch.tensor([1.0, -1.0, 2.0, -3.0])
    shorter_wins = torch.tensor([1.0, 1.0, -1.0, 0.0])  # chosen shorter, shorter, longer, same length
    near = torch.tensor([True, False, False, True])
    assert shares(margin, shorter_wins, near) == pytest.approx(
        {"accuracy": 0.5, "agrees_with_shorter_wins": 1 / 3, "accuracy_near_equal_length": 0.5}
    )


@pytest.mark.parametrize("method", ["qadapter", "dpo"])
def test_serving_alpha_and_omega_evaluate_the_adapter_as_if_its_manifest_said_so(
    embedded: LoadedModel, tmp_path: Path, method: str
) -> None:
    sets = EvalSets(
        ["Hi", "Tell me a story about a cat."],
        [("What is the capital of France?", ["Paris"])],
        max_answer_tokens=6,
        max_question_tokens=6,
    )

    def report(path: Path, knobs: Knobs | None = None) -> dict[str, object]:
        model = tiny_model(vocab_size=VOCAB)  # a fresh model each time: peft injects the LoRA into it
        points = [ServedPoint(knobs, None)] if knobs else []
        (served,) = evaluate(tiny_loaded(model, embedded), path, PAIRS, sets, 512, points, show_progress=False)
        return served.as_dict() | {"strength": None}  # the manifest's knobs are strength 1

    model = tiny_model(vocab_size=VOCAB)
    trained_as = write_adapter(tmp_path / "trained", model, method, Knobs(0.8, 0.2))
    served_as = write_adapter(tmp_path / "served", model, method, Knobs(3.0, 2.0))  # the same weights
    overridden = report(trained_as, knobs=Knobs(3.0, 2.0))
    assert overridden == report(served_as)
    assert overridden != report(trained_as)
    assert (overridden["alpha"], overridden["omega"]) == (3.0, 2.0)


def test_serving_constants_need_an_adapter(embedded: LoadedModel, base_model: torch.nn.Module) -> None:
    sets = EvalSets(["Hi"], [("Name a colour.", ["red"])])
    with pytest.raises(InvalidData, match="not to the base model"):
        evaluate(
            tiny_loaded(base_model, embedded),
            None,
            PAIRS,
            sets,
            max_length=512,
            points=[ServedPoint(Knobs(2.0, 1.0), None)],
            show_progress=False,
        )


@pytest.mark.parametrize("value_position", ["next", "same"])
def test_alpha_sweep_ranks_by_the_reward_and_the_policy_of_each_serving_alpha(
    embedded: LoadedModel, tmp_path: Path, value_position: str
) -> None:
    from experiments.alpha_sweep import sweep_margins

    tokenizer = embedded.tokenizer
    model = tiny_model(vocab_size=VOCAB)
    trained = {"value_position": value_position, "reward_norm": "length"}  # as the manifest records it
    adapter = validate(
        write_adapter(tmp_path / "a", model, "qadapter", Knobs(0.8, 0.2), objective=trained),
        BaseModelInfo.from_model(model, "tiny"),
    )
    scored = PeftModel.from_pretrained(model, str(adapter.path)).eval()
    swept = sweep_margins(scored, tokenizer, adapter, PAIRS, [2.0, 5.0], max_length=512, pad_id=2)
    for alpha, (reward, policy) in swept.items():
        expected = {"qadapter": [], "dpo": []}  # "dpo" ranks by the policy's log-ratio to the base
        for pair in PAIRS:
            encoded = encode_pair(tokenizer, pair, 512)
            for kind, margins in expected.items():
                margins.append(
                    hand_reward(scored, encoded.prompt_ids, encoded.chosen_ids, kind, alpha, alpha - 1, value_position)
                    - hand_reward(
                        scored, encoded.prompt_ids, encoded.rejected_ids, kind, alpha, alpha - 1, value_position
                    )
                )
        assert reward.tolist() == pytest.approx(expected["qadapter"], abs=1e-4)
        assert policy.tolist() == pytest.approx(expected["dpo"], abs=1e-4)
    assert swept[2.0][1].tolist() != pytest.approx(swept[5.0][1].tolist(), abs=1e-4)


@pytest.mark.parametrize("knobs", [(0.0, 0.0), (2.0, -1.0), (float("nan"), 1.0), (10001.0, 10000.0)])
def test_knobs_out_of_bounds_are_refused_as_a_manifest_would_be(knobs: tuple[float, float]) -> None:
    with pytest.raises(InvalidRequest, match="must be in"):
        Knobs(*knobs)
