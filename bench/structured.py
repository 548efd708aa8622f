"""What a grammar mask costs per token, on the embedded model, in one run.

    python bench/structured.py --json [--device cuda]

The same prompts decode 48 tokens each, at concurrency 1 and 8, unconstrained (EOS ignored) and
constrained to a JSON object whose one string must be longer than the budget (so every request
runs its 48 tokens under the mask). Prints tokens/s of both, their ratio, and the extra
milliseconds per token at concurrency 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import llguidance
from engine import make_prompts, timed_request  # bench/engine.py, beside this script

from qadapter.core.cli_options import add_model_options, settings_from
from qadapter.core.lora import AdapterHost
from qadapter.core.model import load_base_model
from qadapter.server.engine.engine import Engine
from qadapter.server.engine.request import SamplingParams

MAX_TOKENS = 48
LONG_STORY = {"type": "object", "properties": {"story": {"type": "string", "minLength": 4000}}, "required": ["story"]}


async def tokens_per_s(engine: Engine, prompts: list[tuple[int, ...]], params: SamplingParams) -> float:
    start = time.perf_counter()
    results = await asyncio.gather(
        *(timed_request(engine, f"s{i}-{start}", p, None, params) for i, p in enumerate(prompts))
    )
    assert all(n == MAX_TOKENS for _, _, n in results), "every request must run its whole budget"
    return sum(n for _, _, n in results) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    add_model_options(parser)
    settings = settings_from(parser.parse_args())
    loaded = load_base_model(settings)
    engine = Engine(loaded, AdapterHost(loaded.model, settings.max_resident_adapters + 1), settings)
    engine.start()
    grammar = llguidance.grammar_from("json_schema", json.dumps(LONG_STORY))
    free = SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True)
    constrained = SamplingParams(max_tokens=MAX_TOKENS, grammar=grammar)
    prompts = make_prompts(loaded, 8, 100)
    report: dict[str, object] = {}
    asyncio.run(tokens_per_s(engine, prompts[:2], constrained))  # warm-up: the grammar tokenizer, the shapes
    for concurrency in (1, 8):
        batch = prompts[:concurrency]
        plain, masked = (asyncio.run(tokens_per_s(engine, batch, p)) for p in (free, constrained))
        report |= {
            f"unconstrained_tps_c{concurrency}": round(plain, 2),
            f"constrained_tps_c{concurrency}": round(masked, 2),
            f"constrained_over_unconstrained_c{concurrency}": round(masked / plain, 3),
        }
        if concurrency == 1:
            report["mask_ms_per_token_c1"] = round(1000 * (1 / masked - 1 / plain), 2)
    engine.shutdown()
    print(json.dumps({**report, **loaded.placement}))


if __name__ == "__main__":
    main()
