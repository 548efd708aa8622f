"""What `qadapter eval` asks the models: the bundled prompt and question sets, and the greedy answers
to them (and to the held-out pairs' prompts) of the base and of each served policy."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from transformers import PreTrainedTokenizerBase

from qadapter.core.chat import chat_prompt_ids, user_prompt_ids
from qadapter.core.decode import DecodeParams, Stream, decode
from qadapter.core.errors import InvalidData
from qadapter.core.model import LoadedModel
from qadapter.training.data import PreferencePair
from qadapter.training.scoring import ModelRows

EVAL_SETS = Path(__file__).parent / "eval_sets"


# Each bundled set comes in two halves: `validation` to choose on (recipe, epochs, strength), `test`
# to report once. The validation halves hold the questions and prompts the first recipes were tuned on.
Split = Literal["validation", "test"]
SPLITS: tuple[Split, ...] = ("validation", "test")


@dataclass(frozen=True)
class EvalSets:
    """Neutral prompts (for KL and answer length) and factual questions with accepted answers."""

    neutral_prompts: list[str]
    questions: list[tuple[str, list[str]]]
    max_answer_tokens: int = 128  # greedy answers to the neutral prompts
    max_question_tokens: int = 32  # greedy answers to the questions
    max_refusal_prompts: int = 100  # the first held-out pairs' prompts answered, for the refusal rate
    max_refusal_tokens: int = 48  # a refusal says so at once

    @classmethod
    def load(
        cls,
        split: Split = "test",
        neutral_prompts: Path | None = None,
        questions: Path | None = None,
        **limits: int,
    ) -> EvalSets:
        """The bundled `split` (100 prompts, 100 questions), or the files given instead."""
        prompts_file = neutral_prompts or EVAL_SETS / f"neutral_prompts.{split}.txt"
        questions_file = questions or EVAL_SETS / f"factual_questions.{split}.jsonl"
        try:
            prompts = [line.strip() for line in prompts_file.read_text(encoding="utf-8").split("\n") if line.strip()]
            question_lines = questions_file.read_text(encoding="utf-8").split("\n")
        except OSError as exc:
            raise InvalidData(f"cannot read {exc.filename}: {exc.strerror}") from None
        parsed = []
        for number, line in enumerate(question_lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                accepted = row["answers"]
                if not isinstance(accepted, list) or not all(isinstance(a, str) and a for a in accepted):
                    raise TypeError
                parsed.append((str(row["question"]), accepted))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InvalidData(
                    f'{questions_file}: line {number}: expected {{"question": str, "answers": [str, ...]}}'
                ) from None
        if not prompts or not parsed:
            raise InvalidData("the neutral prompts and the questions must each hold at least one entry")
        return cls(prompts, parsed, **limits)


@dataclass(frozen=True)
class Answers:
    """One stream's greedy answer ids: to the neutral prompts, the factual questions and the first
    held-out pairs' prompts (the requests)."""

    neutral: list[list[int]]
    replies: list[list[int]]
    requests: list[list[int]]

    @classmethod
    def generate(
        cls,
        loaded: LoadedModel,
        rows: ModelRows,
        streams: list[Stream],
        pairs: Sequence[PreferencePair],
        sets: EvalSets,
        show_progress: bool,
    ) -> list[Answers]:
        """Every stream's answers, in the order of `streams`, all streams of a prompt decoded together."""

        def answer(prompts: list[list[int]], max_tokens: int) -> list[list[list[int]]]:
            params, label = DecodeParams(max_tokens), "answers" if show_progress else None
            decoded = decode(rows, prompts, streams, params, loaded.stop_token_ids, loaded.pad_token_id, progress=label)
            return [[per_prompt[s] for per_prompt in decoded] for s in range(len(streams))]  # [stream][prompt]

        neutral = answer([user_prompt_ids(loaded.tokenizer, p) for p in sets.neutral_prompts], sets.max_answer_tokens)
        replies = answer([user_prompt_ids(loaded.tokenizer, q) for q, _ in sets.questions], sets.max_question_tokens)
        requests = [chat_prompt_ids(loaded.tokenizer, p.prompt) for p in pairs[: sets.max_refusal_prompts]]
        asked = answer(requests, sets.max_refusal_tokens)
        return [cls(*per_stream) for per_stream in zip(neutral, replies, asked)]

    def texts(self, tokenizer: PreTrainedTokenizerBase) -> dict[str, list[str]]:
        return {
            name: [tokenizer.decode(ids, skip_special_tokens=True) for ids in answers]
            for name, answers in asdict(self).items()
        }
