"""Structured outputs: a request's grammar (a JSON schema, a regex, a choice, a Lark grammar, made into
llguidance's form by the API layer) masks its scores, step by step, to the tokens that keep its
output in the grammar. llguidance, not xgrammar: the same speed class (tens of µs per mask on a
CPU), a 8 MB wheel with no dependencies where xgrammar pulls triton (1 GB) onto CPU-only hosts,
and it reads a Hugging Face tokenizer directly."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

import llguidance
import llguidance.hf
import torch

from qadapter.core.errors import InvalidRequest, RequestFault
from qadapter.server.grammar_worker import LIMITS, first_line

log = logging.getLogger(__name__)
BITS = torch.arange(32, dtype=torch.int32)
MAX_COMPILED = 32  # grammars kept compiled: n copies of a request, or a client's one schema, compile once


class GrammarMasks:
    """Each constrained sequence's matcher (made at its first step), its mask, and its progress.

    The tokenizer's llguidance view takes about a second to build: a thread builds it at the start,
    and only a constrained request ever waits for it."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self._vocab_size = vocab_size
        self._lltokenizer: llguidance.LLTokenizer | None = None
        self._failure = ""
        self._ready = threading.Event()
        self._compiled: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()  # each at its start
        threading.Thread(target=self._build, args=(tokenizer,), name="qadapter-grammar", daemon=True).start()

    def mask(self, row: torch.Tensor, state: llguidance.LLMatcher) -> InvalidRequest | None:
        """Set the scores `[vocab]` of every token the grammar forbids next to -inf (in place); the
        error that stops the request if its grammar reached llguidance's limits."""
        words = torch.frombuffer(bytearray(state.compute_bitmask()), dtype=torch.int32)  # bit i: token i allowed
        if state.is_error():
            return _over_limits(state)
        allowed = ((words.unsqueeze(-1) >> BITS) & 1).flatten()[: row.shape[-1]].bool()
        row.masked_fill_(~allowed.to(row.device), float("-inf"))
        return None

    def matcher(self, grammar: str) -> llguidance.LLMatcher:
        self._ready.wait()
        if self._lltokenizer is None:
            raise RequestFault(f"Structured outputs are unavailable on this server: {self._failure}")
        compiled = self._compiled.pop(grammar, None)
        if compiled is None:  # on the engine thread: the grammar check bounded how long this takes
            compiled = llguidance.LLMatcher(self._lltokenizer, grammar, log_level=0, limits=LIMITS)
        self._compiled[grammar] = compiled
        if len(self._compiled) > MAX_COMPILED:
            self._compiled.popitem(last=False)
        return compiled.deep_copy()

    @property
    def eos_token(self) -> int:
        assert self._lltokenizer is not None
        return self._lltokenizer.eos_token

    @staticmethod
    def advance(state: llguidance.LLMatcher, token: int) -> InvalidRequest | None:
        """Feed the picked token to the matcher. The mask allowed it, so a refusal means the grammar
        reached llguidance's limits (a client's grammar too complex to follow): that request stops."""
        return None if state.consume_token(token) else _over_limits(state)

    def _build(self, tokenizer: Any) -> None:
        try:
            self._lltokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=self._vocab_size)
        except Exception as exc:  # an unusual tokenizer: unconstrained requests are unaffected
            log.warning("structured outputs are off: llguidance cannot read this tokenizer (%s)", exc)
            self._failure = str(exc)
        finally:
            self._ready.set()


def _over_limits(state: llguidance.LLMatcher) -> InvalidRequest:
    return InvalidRequest(
        f"The request's grammar went past this server's grammar limits while decoding "
        f"({first_line(state.get_error() or '')}); simplify it."
    )
