"""Typed results of the client's calls, parsed from the server's JSON (unknown fields are ignored)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict


class Sampling(TypedDict, total=False):
    """Generation options of complete() and chat(); alpha and omega (set together) or strength (0 the
    base model, 1 the adapter as trained) are the Q-adapter knobs."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    n: int
    stop: str | list[str]
    seed: int
    alpha: float
    omega: float
    strength: float
    ignore_eos: bool
    stop_token_ids: list[int]
    user: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Usage:
        return cls(data["prompt_tokens"], data["completion_tokens"], data["total_tokens"])


@dataclass(frozen=True)
class Choice:
    index: int
    text: str
    finish_reason: str | None


@dataclass(frozen=True)
class Completion:
    """The answer of complete() or chat(); `text` is the first choice's."""

    id: str
    model: str
    choices: list[Choice]
    usage: Usage

    @property
    def text(self) -> str:
        return self.choices[0].text

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Completion:
        choices = [
            Choice(c["index"], c["message"]["content"] if "message" in c else c["text"], c.get("finish_reason"))
            for c in data["choices"]
        ]
        return cls(data["id"], data["model"], choices, Usage.from_json(data["usage"]))


@dataclass(frozen=True)
class Chunk:
    """One streamed piece: a text delta of choice `index`, its finish reason, or the final usage."""

    text: str = ""
    index: int = 0
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class Model:
    """An entry of /v1/models: the base model (parent None) or an adapter on it."""

    id: str
    parent: str | None
    version: int | None
    owned_by: str

    @property
    def is_adapter(self) -> bool:
        return self.parent is not None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Model:
        return cls(data["id"], data.get("parent"), data.get("version"), data.get("owned_by", ""))


@dataclass(frozen=True)
class Adapter:
    """A served adapter, as /admin/adapters describes it."""

    name: str
    version: int
    description: str
    created: str
    alpha: float
    omega: float
    size_bytes: int
    base_model_id: str
    resident: bool
    running_requests: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Adapter:
        return cls(
            name=data["name"],
            version=data["version"],
            description=data.get("description", ""),
            created=data.get("created", ""),
            alpha=data["alpha"],
            omega=data["omega"],
            size_bytes=data["size_bytes"],
            base_model_id=data["base_model"]["id"],
            resident=data.get("resident", True),
            running_requests=data.get("running_requests", 0),
        )
