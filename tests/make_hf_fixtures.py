"""Writes the Hugging Face model fixtures in tests/data/hf/ with transformers as the oracle.

Run by hand (needs torch and transformers; CI only reads the committed output):

    pip install torch --index-url https://download.pytorch.org/whl/cpu
    pip install transformers tokenizers
    python tests/make_hf_fixtures.py

Each fixture is a tiny random-init model saved with `save_pretrained` (float32 safetensors, config.json,
generation_config.json) plus a tokenizer.json built with `tokenizers` (tests/hf_tokenizers.py) and a
tokenizer_config.json, so the folder is complete; then `expected.json` (prompts, their token ids, greedy
continuations) and `logits_<i>.npy` (transformers' float32 logits for every position of prompt i).

- llama3-gqa: LlamaForCausalLM, GQA 4/2, llama3 RoPE scaling, Llama-3-style byte-level tokenizer.
- llama-tied: LlamaForCausalLM, tied embeddings, head_dim 32 != hidden/heads, linear RoPE scaling,
  Llama-2-style SentencePiece BPE tokenizer (byte fallback).
- qwen2-bias: Qwen2ForCausalLM (random q/k/v biases), tied embeddings, Qwen2-style tokenizer.
- mistral: MistralForCausalLM, sliding_window 4096, Metaspace SentencePiece-style tokenizer.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import hf_tokenizers  # noqa: E402

OUT = Path(__file__).resolve().parent / "data" / "hf"
PROMPTS = ["Once upon a time, there was a little girl named Mia.", "Hello 世界! 1234 + 5678 = 6912 😀",
           "def add(a, b):\n    return a + b  # it's code"]
GREEDY_TOKENS = 12
COMMON = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, initializer_range=0.1)


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Norm weights and biases away from their 1 / 0 initial values, so that loading them wrong shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def write(name: str, config: transformers.PretrainedConfig, cls: type, tok: object, tok_config: dict,
          eos_ids: list[int], seed: int) -> None:
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    model = cls(config).eval()
    randomize(model, seed)
    model.generation_config.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    model.save_pretrained(folder, safe_serialization=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
    expected = {"transformers": transformers.__version__, "torch": torch.__version__, "prompts": []}
    for i, text in enumerate(PROMPTS):
        ids = tok.encode(text, add_special_tokens=True).ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float().numpy()
            greedy: list[int] = []  # plain argmax steps, not stopping at end-of-generation ids
            for _ in range(GREEDY_TOKENS):
                step = model(torch.tensor([ids + greedy])).logits[0, -1]
                greedy.append(int(step.argmax()))
        np.save(folder / f"logits_{i}.npy", logits.astype(np.float32))
        expected["prompts"].append({"text": text, "ids": ids, "greedy": greedy})
    (folder / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"{folder}: {size:,} bytes")


def main() -> None:
    tok = hf_tokenizers.byte_level("llama3")
    bos, eot, end = (tok.token_to_id(t) for t in ("<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>"))
    cfg = transformers.LlamaConfig(
        **COMMON, vocab_size=tok.get_vocab_size(), bos_token_id=bos, eos_token_id=end, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    write("llama3-gqa", cfg, transformers.LlamaForCausalLM, tok,
          {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
           "chat_template": "{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|eot_id|>"
                            "{% endfor %}"}, [end, eot], seed=1)

    tok = hf_tokenizers.sentencepiece_style(metaspace=False)
    cfg = transformers.LlamaConfig(
        **{**COMMON, "num_key_value_heads": 4}, head_dim=32, vocab_size=tok.get_vocab_size(), bos_token_id=1,
        eos_token_id=2, tie_word_embeddings=True,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})
    write("llama-tied", cfg, transformers.LlamaForCausalLM, tok,
          {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "add_eos_token": False}, [2], seed=2)

    tok = hf_tokenizers.byte_level("qwen2")
    end, im_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")
    cfg = transformers.Qwen2Config(
        **COMMON, vocab_size=tok.get_vocab_size() + 6, bos_token_id=None, eos_token_id=end, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, use_sliding_window=False,
        sliding_window=32)
    write("qwen2-bias", cfg, transformers.Qwen2ForCausalLM, tok,
          {"bos_token": None, "eos_token": "<|im_end|>", "chat_template": [
              {"name": "default", "template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                                              "<|im_end|>\n{% endfor %}"}]}, [im_end, end], seed=3)

    tok = hf_tokenizers.sentencepiece_style(metaspace=True)
    cfg = transformers.MistralConfig(
        **COMMON, vocab_size=tok.get_vocab_size(), bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
        sliding_window=4096, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    write("mistral", cfg, transformers.MistralForCausalLM, tok,
          {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}, [2], seed=4)


if __name__ == "__main__":
    main()
