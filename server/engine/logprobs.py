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
    nothing predicts, gets a None log-probability.
    """
    q_rows, base_rows = stream_rows(rows)
    asking = [k for k, i in enumerate(q_rows) if rows[i][0].request.params.prompt_logprobs is not None]
    if not asking:
        return
    q_rows, base_rows = [q_rows[k] for k in asking], [base_rows[k] for k in asking]
    seqs = [rows[i][0] for i in q_rows]
    scores = stream_scores(logits, q_rows, base_rows, [seq.knobs for seq in seqs])  # [seqs, columns, vocab]
    width, stop = ids.shape[1], start + scores.shape[1]
    for seq, row, seq_scores in zip(seqs, q_rows, scores):
        first = width - seq.num_prompt_tokens  # the column of its first prompt token
        if start <= first < stop:
            seq.prompt_logprobs.append(TokenLogprob(int(ids[row, first]), None))
        begin, end = max(start, first), min(stop, width - 1)  # the columns that predict a prompt token
        if begin < end:
            targets = ids[row, begin + 1 : end + 1]
            num_top = seq.request.params.prompt_logprobs or 0
            seq.prompt_logprobs += logprob_entries(seq_scores[begin - start : end - start], targets, num_top)
