"""Log-probabilities under the served policy: of a generated token, and of every prompt token (echo).

Both are the softmax of the customised scores (after α/ω), before temperature and top-k/top-p: the
policy the adapter defines, whatever a request samples it with. A generated token's also has the
request's sampling controls applied (penalties, logit_bias, min_tokens: they shape what is picked);
a prompt token's has not, since those controls are about the tokens a request generates.
"""

from __future__ import annotations

import torch

from qadapter.core.policy import stream_scores
from qadapter.server.engine.request import Sequence, TokenLogprob

Row = tuple[Sequence, str | None]  # a sequence and its adapter key (None: a base row)
LOWEST_LOGPROB = -9999.0  # what a banned token's -inf is reported as (JSON has no infinity), as vLLM
SCORING_COLUMNS = 64  # prompt positions scored at a time


def stream_rows(rows: list[Row]) -> tuple[list[int], list[int]]:
    """Each sequence's Q row (its adapter row, or its only row) and base row, in the order of their Q rows."""
    base_row = {id(seq): i for i, (seq, key) in enumerate(rows) if key is None}
    q_rows = [i for i, (seq, key) in enumerate(rows) if key is not None or seq.adapter is None]
    return q_rows, [base_row[id(rows[i][0])] for i in q_rows]


def logprob_entries(scores: torch.Tensor, tokens: torch.Tensor, num_top: int) -> list[TokenLogprob]:
    """The log-probability of `tokens[i]` under the softmax of `scores[i]` (`[n, vocab]`), and the
    `num_top` likeliest tokens' of each row."""
    logprobs = torch.log_softmax(scores.float(), dim=-1).clamp(min=LOWEST_LOGPROB)
    taken = logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).tolist()
    if num_top:
        top = torch.topk(logprobs, num_top)
        tops = [tuple(zip(ids, values)) for ids, values in zip(top.indices.tolist(), top.values.tolist())]
    else:
        tops = [()] * len(taken)
    return [TokenLogprob(token, logprob, top) for token, logprob, top in zip(tokens.tolist(), taken, tops)]


def record_prompt_logprobs(logits: torch.Tensor, rows: list[Row], ids: torch.Tensor, start: int) -> None:
    """Append to each sequence that asked the log-probabilities of its prompt tokens that one chunk of
    its prefill predicts.

    `logits` `[rows, columns, vocab]` are those of columns `start…` of `ids` `[rows, width]`, the
    group's left-padded prompts; column c predicts the token at c + 1. The first prompt token, which
    nothing predicts, gets a None log-probability. Columns are scored a few at a time, so that the
    float32 copies of the policy's scores stay small whatever the chunk and the vocabulary.
    """
    width, stop = ids.shape[1], start + logits.shape[1]
    for q_row, base_row in zip(*stream_rows(rows)):
        seq = rows[q_row][0]
        num_top = seq.request.params.prompt_logprobs
        if num_top is None:
            continue
        first = width - seq.num_prompt_tokens  # the column of its first prompt token
        if start <= first < stop:
            seq.prompt_logprobs.append(TokenLogprob(seq.request.prompt_ids[0], None))
        last = min(stop, width - 1)  # the columns before it predict a prompt token
        for begin in range(max(start, first), last, SCORING_COLUMNS):
            end = min(begin + SCORING_COLUMNS, last)
            window = logits[[q_row, base_row], begin - start : end - start]  # [2, columns, vocab]
            scores = stream_scores(window, [0], [1], [seq.knobs])[0]
            seq.prompt_logprobs += logprob_entries(scores, ids[q_row, begin + 1 : end + 1], num_top)
