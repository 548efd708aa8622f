"""What a generation request is and what comes back from it (no torch: tested without a model)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from qadapter.core.knobs import Knobs
from qadapter.core.temperature import is_greedy
from qadapter.server.engine.detokenize import TextTracker

MAX_SEED = 2**63 - 1
MAX_TOP_LOGPROBS = 20
# vLLM takes any positive repetition penalty; past these bounds a seen token is as good as banned (or
# forced), and a tiny one overflows the scores to infinity
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 10.0


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens; temperature 0 is greedy, a seed makes sampling repeatable."""

    max_tokens: int = 64  # 0: run the prompt only (for its log-probabilities), generate nothing
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no limit
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    alpha: float | None = None  # None = the adapter manifest's value
    omega: float | None = None
    strength: float | None = None  # instead of alpha and omega: 0 = the base, 1 = the adapter as trained
    # sampling controls on the customised scores (server/engine/controls.py)
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias)
    min_tokens: int = 0
    logprobs: int | None = None  # log-probabilities of each token and of this many alternatives; None: none
    prompt_logprobs: int | None = None  # the same for each prompt token (completions' echo); None: none
    grammar: str | None = None  # llguidance's form of the structured output asked for (server/engine/grammar.py)

    @property
    def is_greedy(self) -> bool:
        return is_greedy(self.temperature)

    @property
    def has_controls(self) -> bool:
        """Whether any control changes the scores (a request without any pays nothing for them)."""
        penalties = (self.repetition_penalty != 1.0, self.frequency_penalty, self.presence_penalty)
        return any(penalties) or bool(self.logit_bias) or self.min_tokens > 0

    def __post_init__(self) -> None:
        # The API's request body refused every bad value with a 400 (server/api/protocol.py, the one door);
        # these are the invariants the engine's loop relies on.
        assert 0 <= self.min_tokens <= self.max_tokens, "min_tokens within [0, max_tokens]"
        assert self.temperature >= 0 and 0 < self.top_p <= 1 and self.top_k >= 0, "sampling within its domain"
        assert (self.alpha is None) == (self.omega is None), "alpha and omega together"
        assert self.alpha is None or self.strength is None, "a knob pair or a strength, not both"

    @property
    def sets_knobs(self) -> bool:
        return self.alpha is not None or self.strength is not None


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to complete with one adapter (None = the base model)."""

    request_id: str
    prompt_ids: tuple[int, ...]
    adapter: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability under the served policy, and the most likely tokens' (id, log-prob);
    the first prompt token, which nothing comes before, has None."""

    token_id: int
    logprob: float | None
    top: tuple[tuple[int, float], ...] = ()


class FinishReason(enum.StrEnum):
    STOP = "stop"  # EOS, a stop token or a stop string
    LENGTH = "length"  # max_tokens reached
    ABORT = "abort"  # cancelled by the caller


@dataclass(frozen=True)
class TokenEvent:
    """What one step produced for one request: new text (may be empty) and, at the end, why it ended."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    num_prompt_tokens: int
    num_generated_tokens: int
    finish_reason: FinishReason | None = None
    logprobs: tuple[TokenLogprob, ...] = ()  # of the tokens this event adds, when the request asked
    prompt_logprobs: tuple[TokenLogprob, ...] = ()  # of every prompt token, in the first event, when asked


@dataclass(eq=False)
class Sequence:
    """The engine's state of one admitted request (owned by the engine thread once running)."""

    request: GenerationRequest
    knobs: Knobs | None  # a Q-adapter's, resolved (request overrides on the manifest's); None for the base
    tracker: TextTracker  # its text so far, and where a stop string ends it
    adapter_key: str | None = None  # the loaded version it pins (the adapter host's key)
    output_ids: list[int] = field(default_factory=list)
    is_aborted: bool = False
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of its output tokens not sent yet, when asked
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)  # filled while its prompt runs, when asked
    grammar_state: Any = None  # its grammar's matcher, from its first step (when it has a grammar)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def adapter(self) -> str | None:
        return self.request.adapter

    @property
    def num_rows(self) -> int:
        """Batch rows it needs: an adapter row and a base row for a Q-adapter, one row for the base."""
        return 1 if self.adapter is None else 2

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_ids)

    def take(self, token: int, eos_ids: frozenset[int]) -> tuple[str, FinishReason | None]:
        """Append a generated token: the new text, and why the sequence ends now (None: it goes on)."""
        params = self.request.params
        if params.max_tokens == 0:  # the prompt alone (echo): the token its prefill picked is no output
            self.logprobs.clear()
            return "", FinishReason.LENGTH
        self.output_ids.append(token)
        is_stop_token = token in params.stop_token_ids or (token in eos_ids and not params.ignore_eos)
        if is_stop_token and self.logprobs:  # a stop token is no part of the output: neither is its log-prob
            self.logprobs.pop()
        visible = self.output_ids[:-1] if is_stop_token else self.output_ids
        text, hit_stop_string = self.tracker.update(visible)
        if hit_stop_string:
            return text, FinishReason.STOP
        grammar_done = self.grammar_state is not None and self.grammar_state.is_stopped()
        if is_stop_token or grammar_done:  # text held back as a possible stop-string start is real text now
            return text + self.tracker.flush(visible), FinishReason.STOP
        if len(self.output_ids) >= params.max_tokens:
            return text + self.tracker.flush(visible), FinishReason.LENGTH
        return text, None

    def event(self, text: str, reason: FinishReason | None) -> TokenEvent:
        """What this step produced for the caller, with the log-probabilities not sent yet."""
        logprobs, self.logprobs = tuple(self.logprobs), []
        prompt_logprobs, self.prompt_logprobs = tuple(self.prompt_logprobs), []
        return TokenEvent(
            request_id=self.request_id,
            text=text,
            token_ids=tuple(self.output_ids[-1:]) if self.output_ids and reason != FinishReason.ABORT else (),
            num_prompt_tokens=self.num_prompt_tokens,
            num_generated_tokens=len(self.output_ids),
            finish_reason=reason,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
        )
