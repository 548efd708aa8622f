"""Request bodies of the OpenAI-compatible API (pydantic), with vLLM's and our extra fields.

Unknown fields are accepted and ignored (OpenAI clients send many); fields we know but cannot
honour are refused with a 400 that names them, rather than silently ignored. Types are strict:
"yes" is no boolean and `true` no token id (an integer is a number, as JSON has it).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from qadapter.core.errors import InvalidRequest
from qadapter.core.knobs import MAX_ALPHA, MAX_OMEGA, MIN_ALPHA
from qadapter.server.engine.request import MAX_SEED

# field → the values that mean "not used"; anything else is refused.
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None, ""),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "functions": (None, []),
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
    # vLLM's extras (the OpenAI SDK sends them as extra_body)
    top_k: int | None = Field(default=None, ge=0)
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    # the Q-adapter knobs (extra_body): override the adapter manifest for this request
    alpha: float | None = Field(default=None, ge=MIN_ALPHA, le=MAX_ALPHA)
    omega: float | None = Field(default=None, ge=0, le=MAX_OMEGA)

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise InvalidRequest("stop may hold at most 4 sequences", param="stop")
        if any(s == "" for s in stops):
            raise InvalidRequest("stop sequences must not be empty", param="stop")
        return tuple(stops)

    def refuse_unsupported(self) -> list[str]:
        """Raise for known fields we cannot honour; return the unknown fields (to be ignored)."""
        extra = self.model_extra or {}
        for name, unused in _UNSUPPORTED.items():
            if name in extra and extra[name] not in unused:
                raise InvalidRequest(f"{name} is not supported by this server", param=name)
        return sorted(name for name in extra if name not in _UNSUPPORTED)


class CompletionRequest(SamplingBody):
    prompt: (
        NonEmptyText
        | Annotated[list[NonEmptyText], Field(min_length=1)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1)]
    )


class TextPart(BaseModel):
    model_config = STRICT

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def conversation(self) -> list[dict[str, str]]:
        """The messages as the chat encoder takes them (role, text)."""
        return [{"role": m.role, "content": m.text()} for m in self.messages]
