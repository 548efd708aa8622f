"""The grammar check's own process (`python -m qadapter.server.grammar_worker TOKENIZER_JSON VOCAB EOS`).

llguidance's compiler is native code: a grammar deep enough (a long `$ref` or rule chain) overflows
its stack and kills the process it runs in, which no `try` can catch. So every grammar is first
compiled here, on a thread with a quarter of the engine thread's stack: a grammar that survives
this compiles in the engine with room to spare, and one that does not kills only this process,
which the server restarts. Reads one JSON request per line on stdin, answers one JSON line on a
private copy of stdout (fd 1 goes to stderr, so nothing native code prints can be read as an
answer). Imports llguidance only, so it starts in a fraction of a second.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import llguidance

ENGINE_STACK_BYTES = 8 << 20  # the engine thread's (server/engine/engine.py), which compiles grammars too
CHECK_STACK_BYTES = ENGINE_STACK_BYTES // 4
# No parser state or grammar text in messages (they go back to the client).
LIMITS = llguidance.LLParserLimits(verbose_errors=False)


def first_line(message: str) -> str:
    """An llguidance message without its detail lines (llguidance adds `<non-verbose/>` and context)."""
    lines = message.strip().splitlines()
    return lines[0][:300] if lines else "no reason given"


def check(tokenizer: llguidance.LLTokenizer, kind: str, text: str) -> dict[str, Any]:
    """Compile the grammar, compute its first mask and take one token it allows, as the engine will:
    limits that only show at the first step show here. `ends_at_once`: it allows nothing but the end."""
    try:
        grammar = llguidance.grammar_from(kind, text)  # type: ignore[arg-type]
    except ValueError as exc:
        return {"error": first_line(str(exc))}
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, None, limits=LIMITS)
    if is_error:
        return {"error": first_line(messages[0] if messages else "")}
    matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0, limits=LIMITS)
    eos = set(tokenizer.eos_tokens)
    first = next((token for token in _allowed(matcher.compute_bitmask()) if token not in eos), None)
    if first is not None and not matcher.is_error():
        matcher.consume_token(first)
    if matcher.is_error():
        return {"error": first_line(matcher.get_error())}
    return {"grammar": grammar, "ends_at_once": first is None}


def _allowed(mask: bytes) -> Iterator[int]:
    """The tokens a bitmask allows (bit i of the little-endian words: token i)."""
    return (i * 8 + bit for i, byte in enumerate(mask) if byte for bit in range(8) if byte >> bit & 1)


def _check_into(answer: dict[str, Any], tokenizer: llguidance.LLTokenizer, kind: str, text: str) -> None:
    try:
        answer.update(check(tokenizer, kind, text))
    except BaseException as exc:
        answer.update(error=f"it could not be compiled ({type(exc).__name__})")


def serve(tokenizer_json: str, vocab_size: int, eos_token: int) -> None:
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    tokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=eos_token)
    print(json.dumps({"ready": True}), file=answers, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        answer: dict[str, Any] = {}
        worker = threading.Thread(target=_check_into, args=(answer, tokenizer, request["kind"], request["text"]))
        worker.start()
        worker.join()
        print(json.dumps({"id": request["id"], **answer}), file=answers, flush=True)


if __name__ == "__main__":
    threading.stack_size(CHECK_STACK_BYTES)
    with open(sys.argv[1], encoding="utf-8") as source:
        serve(source.read(), int(sys.argv[2]), int(sys.argv[3]))
