"""Request bodies of the OpenAI-compatible API (pydantic), with vLLM's and our extra fields.

Unknown fields are accepted and ignored (OpenAI clients send many); fields we know but cannot
honour are refused with a 400 that names them, rather than silently ignored. Types are strict:
"yes" is no boolean and `true` no token id (an integer is a number, as JSON has it).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from qadapter.core.errors import InvalidRequest
from qadapter.core.knobs import MAX_ALPHA, MAX_OMEGA, MAX_STRENGTH, MIN_ALPHA, check_knob_choice
from qadapter.server.engine.request import (
    MAX_REPETITION_PENALTY,
    MAX_SEED,
    MAX_TOP_LOGPROBS,
    MIN_REPETITION_PENALTY,
    SamplingParams,
)

# Fields of OpenAI's and vLLM's APIs this server cannot honour yet → the values that mean "not
# used"; anything else is refused with a 400 that names the field, never silently dropped.
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "prompt_logprobs": (None, 0),
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None, ""),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "audio": (None,),
    "use_beam_search": (None, False),
}


STRICT = ConfigDict(strict=True)
NonEmptyText = Annotated[str, Field(min_length=1)]
TokenIds = Annotated[list[int], Field(min_length=1)]


class StreamOptions(BaseModel):
    model_config = STRICT

    include_usage: bool = False


class SamplingBody(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED - 16)  # room for n seeded copies
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None  # token id (a string, as JSON keys are) → bias in [-100, 100]
    # vLLM's extras (the OpenAI SDK sends them as extra_body)
    top_k: int | None = Field(default=None, ge=0)
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    # structured outputs, as vLLM names them (server/api/structured.py)
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: Annotated[list[NonEmptyText], Field(min_length=1)] | None = None
    guided_grammar: str | None = None
    structured_outputs: dict[str, Any] | None = None
    repetition_penalty: float | None = Field(default=None, ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY)
    min_tokens: int | None = Field(default=None, ge=0)
    # the Q-adapter knobs (extra_body): override the adapter manifest for this request
    alpha: float | None = Field(default=None, ge=MIN_ALPHA, le=MAX_ALPHA)
    omega: float | None = Field(default=None, ge=0, le=MAX_OMEGA)
    strength: float | None = Field(default=None, ge=0, le=MAX_STRENGTH)  # instead of alpha/omega: 0 base, 1 as trained

    def num_logprobs(self) -> int | None:
        """How many alternatives to report per token with its log-probability; None: no log-probabilities."""
        return None

    def num_prompt_logprobs(self) -> int | None:
        """The same for each prompt token (completions' echo); None: none."""
        return None

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def sampling_params(
        self,
        max_tokens: int,
        copy: int,
        stop_token_ids: tuple[int, ...],
        logit_bias: tuple[tuple[int, float], ...],
        grammar: str | None,
    ) -> SamplingParams:
        """The engine's parameters for copy `copy` of this request, the one place a body becomes them.
        `max_tokens` is resolved against the prompt; the token ids were checked against the vocabulary."""
        if self.min_tokens is not None and self.min_tokens > max_tokens:
            raise InvalidRequest(f"min_tokens must be at most max_tokens ({max_tokens})", param="min_tokens")
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            seed=None if self.seed is None else self.seed + copy,  # n copies differ, and repeat
            stop=self.stop_strings(),
            stop_token_ids=stop_token_ids,
            ignore_eos=self.ignore_eos,
            alpha=self.alpha,
            omega=self.omega,
            strength=self.strength,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            frequency_penalty=self.frequency_penalty or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            logit_bias=logit_bias,
            min_tokens=self.min_tokens or 0,
            logprobs=self.num_logprobs(),
            prompt_logprobs=self.num_prompt_logprobs(),
            grammar=grammar,
        )

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise InvalidRequest("stop may hold at most 4 sequences", param="stop")
        if any(s == "" for s in stops):
            raise InvalidRequest("stop sequences must not be empty", param="stop")
        return tuple(stops)

    def refuse_unsupported(self) -> list[str]:
        """Raise for known fields we cannot honour; return the unknown fields (to be ignored)."""
        check_knob_choice(self.alpha, self.omega, self.strength)
        if self.stream_options is not None and not self.stream:  # as OpenAI
            raise InvalidRequest("stream_options is only allowed when stream is true", param="stream_options")
        extra = self.model_extra or {}
        for name, unused in _UNSUPPORTED.items():
            if name in extra and extra[name] not in unused:
                raise InvalidRequest(
                    f"{name} is not supported by this server; leave it out (docs/api.md lists the fields it honours)",
                    param=name,
                )
        return sorted(name for name in extra if name not in _UNSUPPORTED)


class CompletionRequest(SamplingBody):
    prompt: (
        NonEmptyText
        | Annotated[list[NonEmptyText], Field(min_length=1)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1)]
    )
    logprobs: int | None = Field(default=None, ge=0, le=5)  # the legacy API's: alternatives per token
    echo: bool = False  # the prompt before the completion (with its log-probabilities when logprobs is set)
    max_tokens: int | None = Field(default=None, ge=0)  # 0, with echo: score the prompt, generate nothing

    def num_logprobs(self) -> int | None:
        return self.logprobs

    def num_prompt_logprobs(self) -> int | None:
        return self.logprobs if self.echo else None

    def refuse_unsupported(self) -> list[str]:
        if self.max_tokens == 0 and not self.echo:
            raise InvalidRequest(
                "max_tokens must be at least 1; 0 is for echo alone (to score the prompt)", param="max_tokens"
            )
        return super().refuse_unsupported()


class TextPart(BaseModel):
    model_config = STRICT

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def only_text_parts(cls, content: Any) -> Any:
        """An image or audio part is refused in words a user understands, not in pydantic's."""
        if isinstance(content, list):
            kinds = {part.get("type") for part in content if isinstance(part, dict)} - {"text"}
            if kinds:
                found = ", ".join(sorted(str(kind) for kind in kinds))
                raise PydanticCustomError("text_only", f"only text content parts are supported (got {found})")
        return content

    def text(self) -> str:
        """Its text; an assistant's earlier tool calls, which have none, as the JSON they were decoded from."""
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        calls = (self.model_extra or {}).get("tool_calls")
        if not self.content and self.role == "assistant" and isinstance(calls, list):
            functions = [call.get("function") for call in calls if isinstance(call, dict)]
            return json.dumps([f for f in functions if isinstance(f, dict)])
        return self.content or ""


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolSpec(BaseModel):
    model_config = STRICT

    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    model_config = STRICT

    name: str


class NamedToolChoice(BaseModel):
    model_config = STRICT

    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)

    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = STRICT

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(SamplingBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None  # one forced call is made either way

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def num_logprobs(self) -> int | None:
        if self.top_logprobs and not self.logprobs:  # as OpenAI
            raise InvalidRequest("top_logprobs needs logprobs to be true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None

    def conversation(self) -> list[dict[str, str]]:
        """The messages as the chat encoder takes them (role, text)."""
        return [{"role": m.role, "content": m.text()} for m in self.messages]
