"""vLLM's tokenizer routes (`/tokenize`, `/detokenize`, `/tokenizer_info`): evaluation tools ask the
server for token counts and the tokenizer instead of downloading it from a hub (which fails offline)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Security
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from qadapter.core.errors import InvalidRequest
from qadapter.server.api.auth import require_api_key
from qadapter.server.api.openapi import api_key_scheme, error_responses
from qadapter.server.api.protocol import STRICT, ChatMessage, NonEmptyText
from qadapter.server.api.serving import Serving


class TokenizeRequest(BaseModel):
    """A prompt, or a conversation as the chat route templates it (one of the two)."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    prompt: NonEmptyText | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    return_token_strs: bool = False


class DetokenizeRequest(BaseModel):
    model_config = STRICT

    model: str = Field(min_length=1)
    tokens: list[int]


def serving(request: Request) -> Serving:
    return request.app.state.serving


router = APIRouter(dependencies=[Security(api_key_scheme), Depends(require_api_key)], tags=["tokenizer"])


@router.post("/tokenize", responses=error_responses(400, 401, 404))
async def tokenize(body: TokenizeRequest, service: Serving = Depends(serving)) -> dict[str, Any]:
    """The prompt's token ids (`count`, `tokens`, `max_model_len`; `token_strs` on request)."""
    service.check_model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise InvalidRequest("give either prompt or messages", param="prompt")
    if body.messages is not None:
        tokens = await service.prompts.chat([{"role": m.role, "content": m.text()} for m in body.messages])
    else:
        (tokens,) = await service.prompts.completion(body.prompt)  # type: ignore[arg-type]
    answer: dict[str, Any] = {"count": len(tokens), "max_model_len": service.max_context, "tokens": tokens}
    if body.return_token_strs:
        answer["token_strs"] = await run_in_threadpool(service.tokenizer.convert_ids_to_tokens, tokens)
    return answer


@router.post("/detokenize", responses=error_responses(400, 401, 404))
async def detokenize(body: DetokenizeRequest, service: Serving = Depends(serving)) -> dict[str, str]:
    """The text of token ids."""
    service.check_model(body.model)

    def decoded() -> str:  # a long list takes a while: off the event loop
        service.prompts.token_ids(body.tokens, "tokens")
        return service.tokenizer.decode(body.tokens)

    return {"prompt": await run_in_threadpool(decoded)}


@router.get("/tokenizer_info", responses=error_responses(401))
async def tokenizer_info(service: Serving = Depends(serving)) -> dict[str, Any]:
    """The served tokenizer: its class, special tokens and chat template."""
    tokenizer = service.tokenizer
    special = {name: getattr(tokenizer, name) for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
    return {
        "tokenizer_class": type(tokenizer).__name__,
        "model": service.base_id,
        "vocab_size": len(tokenizer),
        "model_max_length": service.max_context,
        "chat_template": tokenizer.chat_template,
        **special,
    }
