"""Greedy answers to check the refusal detector by hand: the first held-out pairs' prompts (harmful
requests) and some neutral prompts, answered by the base model and by an adapter at a strength.

    python experiments/refusal_sample.py --adapter adapters/examples/harmless --strength 4 \
        --data adapters/examples/data/harmless-test.jsonl > sample.jsonl

One JSON object per answer: where its prompt came from, the model, the prompt's last user turn, the
answer and the detector's label. A person adds `"hand": true | false` to each row; the result is
`training/eval_sets/refusal_check.jsonl`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qadapter.adapters.format import validate
from qadapter.core.chat import chat_prompt_ids, user_prompt_ids
from qadapter.core.cli_options import add_model_options, add_strength_option, positive, settings_from
from qadapter.core.decode import DecodeParams, Stream, decode
from qadapter.core.lora import AdapterHost
from qadapter.core.model import load_base_model
from qadapter.training.answers import EvalSets
from qadapter.training.behaviour import is_refusal
from qadapter.training.data import load_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--adapter", type=Path, required=True, help="the adapter directory")
    add_strength_option(parser)
    parser.add_argument("--data", type=Path, required=True, help="held-out preference pairs (JSONL)")
    parser.add_argument("--requests", type=positive(int, False), default=20, help="pair prompts answered")
    parser.add_argument("--neutral", type=positive(int, False), default=10, help="neutral prompts answered")
    parser.add_argument("--max-tokens", type=positive(int, False), default=48)
    args = parser.parse_args()
    loaded = load_base_model(settings_from(args))
    adapter = validate(args.adapter, loaded.info)
    host = AdapterHost(loaded.model)
    host.load(adapter.name, adapter.read_weights())
    knobs = adapter.manifest.knobs.served(strength=args.strength)
    streams = [Stream(None), Stream(adapter.name, knobs) if knobs else Stream(None)]
    requests = load_pairs(args.data, skip_bad=True).pairs[: args.requests]
    neutral = EvalSets.load("validation").neutral_prompts[: args.neutral]  # the hand-checked sample's prompts
    prompts = [("request", p.prompt[-1]["content"], chat_prompt_ids(loaded.tokenizer, p.prompt)) for p in requests]
    prompts += [("neutral", text, user_prompt_ids(loaded.tokenizer, text)) for text in neutral]
    params = DecodeParams(args.max_tokens)
    answers = decode(host, [ids for _, _, ids in prompts], streams, params, loaded.stop_token_ids, loaded.pad_token_id)
    for (source, prompt, _), per_stream in zip(prompts, answers):
        for model, ids in zip(
            ("base", f"{adapter.name}@{1 if args.strength is None else args.strength:g}"), per_stream
        ):
            answer = loaded.tokenizer.decode(ids, skip_special_tokens=True).strip()
            row = {"source": source, "model": model, "prompt": prompt, "answer": answer, "detector": is_refusal(answer)}
            print(json.dumps(row))


if __name__ == "__main__":
    main()
