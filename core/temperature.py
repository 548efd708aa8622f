"""When a temperature means greedy decoding (no torch here: the request objects use it too)."""

# Below this temperature sampling is greedy: dividing logits by ~0 overflows to inf (as vLLM does).
GREEDY_BELOW_TEMPERATURE = 1e-5


def is_greedy(temperature: float) -> bool:
    return temperature < GREEDY_BELOW_TEMPERATURE
