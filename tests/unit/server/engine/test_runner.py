"""server/engine/runner.py on the tiny model: chunked, left-padded prefills give the logits of one
plain forward; prefill groups take turns, the oldest's chunk and the newest's, at most 4 groups at
once; rows leave a prefill group or the decoding slots without disturbing the rows that stay."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from qadapter.core.lora import AdapterHost
from qadapter.server.engine.detokenize import TextTracker
from qadapter.server.engine.request import GenerationRequest, SamplingParams, Sequence
from qadapter.server.engine.runner import MAX_PREFILL_GROUPS, BatchRunner
from tests.conftest import tiny_model

CHUNK_TOKENS = 8  # a quarter of that, 2 columns, per chunk of a one-row group
LONG = [5, 17, 42, 99, 3, 250, 7, 8, 300, 11]  # 5 chunks alone
SHORT = [12, 13]  # one chunk


def seq(ids: list[int], name: str = "r", prompt_logprobs: int | None = None) -> Sequence:
    params = SamplingParams(max_tokens=4, prompt_logprobs=prompt_logprobs)
    return Sequence(GenerationRequest(name, tuple(ids), params=params), None, TextTracker(lambda _: "", ()))


@cache
def reference() -> torch.nn.Module:
    """The runner's model's weights (seed 0), untouched by an adapter host."""
    return tiny_model()


def expected(ids: list[int]) -> torch.Tensor:
    """The last position's logits of one unpadded forward of `ids`, from an empty cache."""
    with torch.no_grad():
        return reference()(torch.tensor([ids])).logits[0, -1]


@pytest.fixture
def runner() -> BatchRunner:
    return BatchRunner(AdapterHost(tiny_model()), pad_token_id=0, prefill_chunk_tokens=CHUNK_TOKENS)


def finish(runner: BatchRunner) -> tuple[int, torch.Tensor]:
    """Run chunks until one returns logits: (how many chunks ran, those logits)."""
    for num_chunks in range(1, 100):
        logits = runner.prefill_chunk()
        if logits is not None:
            return num_chunks, logits
    raise AssertionError("the prefill never finished")


def test_a_chunked_left_padded_group_gives_each_prompt_the_logits_of_one_plain_forward(runner: BatchRunner) -> None:
    long, short = seq(LONG, "long"), seq([40, 41, 42], "short")
    runner.start_prefill([long, short])
    num_chunks, logits = finish(runner)
    assert num_chunks == 5  # 2 columns per chunk (8 token-rows // 2 rows = 4, capped at a quarter, 2)
    assert [s for s, _ in runner.rows] == [long, short] and not runner.is_prefilling
    torch.testing.assert_close(logits[0], expected(LONG), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1], expected([40, 41, 42]), atol=1e-4, rtol=1e-4)


def test_a_short_arrival_during_a_long_prefill_finishes_at_the_next_chunk(runner: BatchRunner) -> None:
    long, short = seq(LONG, "long"), seq(SHORT, "short")
    runner.start_prefill([long])
    assert runner.prefill_chunk() is None and runner.prefill_chunk() is None  # the long prompt, alone
    runner.start_prefill([short])
    logits = runner.prefill_chunk()  # the newest's turn
    assert logits is not None and [s for s, _ in runner.rows] == [short]
    torch.testing.assert_close(logits[0], expected(SHORT), atol=1e-4, rtol=1e-4)
    num_chunks, logits = finish(runner)
    assert num_chunks == 3 and [s for s, _ in runner.rows] == [short, long]  # 2 + 3 = its 5 chunks
    torch.testing.assert_close(logits[0], expected(LONG), atol=1e-4, rtol=1e-4)


def test_a_stream_of_short_arrivals_cannot_starve_the_oldest_prompt_which_runs_every_other_chunk(
    runner: BatchRunner,
) -> None:
    long = seq(LONG, "long")
    runner.start_prefill([long])
    joining = {id(long): long}
    finished_at: dict[str, int] = {}
    for step in range(12):
        if 1 <= step <= 8 and runner.can_start_prefill:
            arrival = seq([20 + step, 30 + step], f"s{step}")
            runner.start_prefill([arrival])
            joining[id(arrival)] = arrival
        before = len(runner.rows)
        if runner.prefill_chunk() is not None:
            (done, _), *_ = runner.rows[before:]
            finished_at[done.request_id] = step
    # oldest and newest in turn: the long prompt's 5 chunks at steps 0, 2, 4, 6, 8; the groups in the
    # middle wait until the arrivals stop; the 4-group cap turns away the arrival of step 7
    assert finished_at == {"s1": 1, "s3": 3, "s5": 5, "s6": 7, "long": 8, "s8": 9, "s2": 10, "s4": 11}
    assert not runner.is_prefilling and sorted(map(id, (s for s, _ in runner.rows))) == sorted(joining)


def test_at_most_four_prefill_groups_run_at_once(runner: BatchRunner) -> None:
    assert MAX_PREFILL_GROUPS == 4
    for i in range(4):
        assert runner.can_start_prefill
        runner.start_prefill([seq(SHORT, f"s{i}")])
    assert not runner.can_start_prefill
    with pytest.raises(AssertionError, match="at most 4 prefill groups"):
        runner.start_prefill([seq(SHORT, "one too many")])
    assert runner.prefill_chunk() is not None  # one group done: room for another
    assert runner.can_start_prefill and runner.num_rows == 1


def test_rows_that_joined_decode_as_one_plain_forward_of_prompt_and_output(runner: BatchRunner) -> None:
    first, second = seq(LONG, "first"), seq([40, 41, 42], "second")
    runner.start_prefill([first])
    finish(runner)
    runner.start_prefill([second])
    finish(runner)
    first.output_ids.append(77)
    second.output_ids.append(88)
    logits = runner.decode()
    assert logits.shape == (2, reference().config.vocab_size)
    torch.testing.assert_close(logits[0], expected([*LONG, 77]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1], expected([40, 41, 42, 88]), atol=1e-4, rtol=1e-4)


def test_a_row_that_leaves_a_prefill_group_mid_way_leaves_the_others_prompts_intact(runner: BatchRunner) -> None:
    leaving, staying = seq(LONG, "leaving"), seq([60, 61, 62, 63, 64, 65], "staying")
    runner.start_prefill([leaving, staying])
    assert runner.prefill_chunk() is None
    runner.remove([leaving])
    assert runner.is_prefilling
    _, logits = finish(runner)
    assert logits.shape[0] == 1 and [s for s, _ in runner.rows] == [staying]
    torch.testing.assert_close(logits[0], expected([60, 61, 62, 63, 64, 65]), atol=1e-4, rtol=1e-4)


def test_a_prefill_group_whose_every_row_leaves_is_dropped(runner: BatchRunner) -> None:
    groups = [[seq(LONG, f"g{i}")] for i in range(MAX_PREFILL_GROUPS)]
    for group in groups:
        runner.start_prefill(group)
    runner.prefill_chunk()
    runner.remove(groups[0] + groups[2])
    assert runner.can_start_prefill and runner.is_prefilling
    runner.remove(groups[1] + groups[3])
    assert not runner.is_prefilling and runner.num_rows == 0


def test_a_decoding_row_that_leaves_frees_its_slot_and_the_others_decode_on(runner: BatchRunner) -> None:
    prompts = {"a": [5, 6, 7], "b": LONG, "c": [9, 10], "d": [100, 101, 102, 103]}
    seqs = {name: seq(ids, name) for name, ids in prompts.items()}
    for one in seqs.values():
        runner.start_prefill([one])
        finish(runner)
    runner.remove([seqs["b"], seqs["a"]])
    assert sorted(s.request_id for s, _ in runner.rows) == ["c", "d"]
    for one in seqs.values():
        one.output_ids.append(50)
    logits = runner.decode()
    for row, (one, _) in enumerate(runner.rows):
        torch.testing.assert_close(logits[row], expected([*prompts[one.request_id], 50]), atol=1e-4, rtol=1e-4)
    runner.start_prefill([seq([1, 2], "e")])  # a freed slot takes a new row
    finish(runner)
    assert [s.request_id for s, _ in runner.rows][-1] == "e" and runner.num_rows == 3


def test_removing_no_rows_or_unknown_ones_changes_nothing(runner: BatchRunner) -> None:
    kept = seq(SHORT, "kept")
    runner.start_prefill([kept])
    finish(runner)
    runner.start_prefill([seq(LONG, "prefilling")])
    runner.remove([])
    runner.remove([seq(SHORT, "stranger")])
    assert [s for s, _ in runner.rows] == [kept] and runner.is_prefilling


def test_a_group_that_scores_its_prompt_runs_narrower_chunks_and_records_every_prompt_token(
    runner: BatchRunner,
) -> None:
    scored = seq(LONG, "echo", prompt_logprobs=0)
    runner.start_prefill([scored])
    num_chunks, logits = finish(runner)
    assert num_chunks == len(LONG)  # a quarter of the budget: 1 column per chunk
    torch.testing.assert_close(logits[0], expected(LONG), atol=1e-4, rtol=1e-4)
    assert [entry.token_id for entry in scored.prompt_logprobs] == LONG
    assert scored.prompt_logprobs[0].logprob is None  # nothing predicts the first token
    with torch.no_grad():
        scores = torch.log_softmax(reference()(torch.tensor([LONG])).logits[0].float(), dim=-1)
    for position, entry in enumerate(scored.prompt_logprobs[1:], start=1):
        assert entry.logprob == pytest.approx(scores[position - 1, LONG[position]].item(), abs=1e-3)


def test_reset_drops_every_row_and_every_prefill(runner: BatchRunner) -> None:
    runner.start_prefill([seq(SHORT, "a")])
    finish(runner)
    runner.start_prefill([seq(LONG, "b")])
    runner.reset()
    assert runner.num_rows == 0 and not runner.is_prefilling and runner.can_start_prefill
