"""A random-initialised base model of a given shape, with a synthetic tokenizer, written as a local model
directory that `--model DIR` loads: for measuring speed where no real weights can travel (a GPU
machine reached with 64 MiB of files) — weights' values do not change speed.

The tokenizer maps whitespace-separated words `t0 … t{vocab-1}` to their ids (any other word is
`t0`), with `t1` as end of sequence and a minimal chat template.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# The shape of Llama-3.2-1B (1.24 B parameters): a 1B-class model for the GPU check.
LLAMA_1B = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    tie_word_embeddings=True,
)
# Small enough for a CPU smoke run.
TINY = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} t1 {% endfor %}"
    "{% if add_generation_prompt %}assistant {% endif %}"
)


def synthetic_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    vocab = {f"t{i}": i for i in range(vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins the words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="t0", eos_token="t1", pad_token="t2")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def write_synthetic_base(
    directory: Path, shape: dict[str, object], dtype: torch.dtype, device: str = "cpu", seed: int = 0
) -> Path:
    """A random Llama of `shape` and its tokenizer, saved under `directory` (initialised on `device`,
    which is quicker on a GPU for a 1B model); returns it."""
    torch.manual_seed(seed)
    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=1, pad_token_id=2)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(directory)
    synthetic_tokenizer(int(shape["vocab_size"])).save_pretrained(directory)  # type: ignore[call-overload]
    return directory
