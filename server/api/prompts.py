"""From a request to prompt token ids, off the event loop.

Chat templating and tokenisation run in a worker thread, so one large request cannot freeze /health
and every stream. Before either, a character count refuses inputs too long to fit whatever they
tokenise to: no token spans more than `max_token_chars` characters of text, so a text of more than
`max_context × max_token_chars` characters cannot fit the context.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi.concurrency import run_in_threadpool

from qadapter.core.chat import Message, chat_prompt_ids
from qadapter.core.errors import ContextTooLong, InvalidRequest
from qadapter.core.model import LoadedModel

CompletionPrompt = str | list[str] | list[int] | list[list[int]]


class PromptEncoder:
    def __init__(self, loaded: LoadedModel, max_context: int) -> None:
        self._loaded = loaded
        self._vocab_size = loaded.model.config.vocab_size
        # The longest text one token stands for (byte-level tokens: one character per byte).
        longest = max(len(token) for token in loaded.tokenizer.convert_ids_to_tokens(range(len(loaded.tokenizer))))
        self._max_chars = max_context * max(1, longest)

    async def chat(self, messages: list[Message]) -> list[int]:
        self._check_length([m["content"] for m in messages], "messages")
        return await run_in_threadpool(chat_prompt_ids, self._loaded.tokenizer, messages)

    async def completion(self, prompt: CompletionPrompt) -> list[list[int]]:
        """One token list per prompt: strings are tokenised, token ids checked against the vocabulary."""
        prompts = _each_prompt(prompt)
        self._check_length([p for p in prompts if isinstance(p, str)], "prompt")
        encoded = await run_in_threadpool(self._tokenize, prompts)
        for ids in encoded:
            self.token_ids(ids, "prompt")
        return encoded

    def token_ids(self, token_ids: list[int], param: str) -> tuple[int, ...]:
        """Token ids of this vocabulary (a 400 naming `param` for any other)."""
        if any(not 0 <= token < self._vocab_size for token in token_ids):
            raise InvalidRequest(f"{param} token ids must be in [0, {self._vocab_size})", param=param)
        return tuple(token_ids)

    def logit_bias(self, bias: dict[str, float]) -> tuple[tuple[int, float], ...]:
        """OpenAI's logit_bias (token ids as strings) as (token id, bias) pairs of this vocabulary."""
        try:
            pairs = tuple(sorted((int(token), value) for token, value in bias.items()))
        except ValueError:
            raise InvalidRequest('logit_bias keys must be token ids, e.g. {"1234": -100}', param="logit_bias") from None
        if not all(-100.0 <= value <= 100.0 for _, value in pairs):  # also refuses nan
            raise InvalidRequest("logit_bias values must be between -100 and 100", param="logit_bias")
        self.token_ids([token for token, _ in pairs], "logit_bias")
        return pairs

    async def texts(self, prompt: CompletionPrompt, encoded: list[list[int]]) -> list[str]:
        """Each prompt's text, as echo shows it: a string as given, token ids decoded."""
        return await run_in_threadpool(
            lambda: [
                p if isinstance(p, str) else self._loaded.tokenizer.decode(ids)
                for p, ids in zip(_each_prompt(prompt), encoded)
            ]
        )

    def _tokenize(self, prompts: Sequence[str | list[int]]) -> list[list[int]]:
        tokenizer = self._loaded.tokenizer
        return [tokenizer(p).input_ids if isinstance(p, str) else list(p) for p in prompts]

    def _check_length(self, texts: Sequence[str], param: str) -> None:
        num_chars = sum(len(text) for text in texts)
        if num_chars > self._max_chars:
            raise ContextTooLong(
                f"The {param} hold {num_chars} characters, more than any prompt of this model's context "
                f"can ({self._max_chars}); shorten them.",
                param=param,
            )


def _each_prompt(prompt: CompletionPrompt) -> list[str | list[int]]:
    """A completion's prompts, one entry per prompt: a string or a token list."""
    prompts: list = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise InvalidRequest("prompt must not be empty", param="prompt")
    return [prompts] if all(isinstance(p, int) for p in prompts) else prompts
