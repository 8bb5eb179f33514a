"""Writes the Hugging Face model fixtures in tests/data/hf/ with transformers as the oracle.

Run by hand (needs torch and transformers; CI only reads the committed output):

    pip install torch --index-url https://download.pytorch.org/whl/cpu
    pip install transformers tokenizers
    python tests/make_hf_fixtures.py [NAME ...] [--templates DIR]

With names, only those fixtures are (re)written (the others stay byte-identical); without, all of them.
--templates names the folder of published chat templates (default tests/data/chat_templates): a fixture whose
family has a <template>.jinja there gets it as tokenizer_config.json's chat_template, else none.

Each fixture is a tiny random-init model saved with `save_pretrained` (float32 safetensors, config.json,
generation_config.json) plus a tokenizer.json built with `tokenizers` (tests/hf_tokenizers.py) and a
tokenizer_config.json, so the folder is complete; then `expected.json` (prompts, their token ids, greedy
continuations) and `logits_<i>.npy` (transformers' float32 logits for every position of prompt i). Each saved
folder is loaded back with AutoModelForCausalLM and must give the same logits.

- llama3-gqa: LlamaForCausalLM, GQA 4/2, llama3 RoPE scaling, Llama-3-style byte-level tokenizer.
- llama-tied: LlamaForCausalLM, tied embeddings, head_dim 32 != hidden/heads, linear RoPE scaling,
  Llama-2-style SentencePiece BPE tokenizer (byte fallback).
- qwen2-bias: Qwen2ForCausalLM (random q/k/v biases), tied embeddings, Qwen2-style tokenizer.
- mistral: MistralForCausalLM, sliding_window 4096, Metaspace SentencePiece-style tokenizer.

The model-family fixtures (issue 13) add a prompt of 55-64 tokens, longer than every window and than the
LongRoPE / YaRN original context, and use eager attention. Their expected.json has `notes` (what transformers
does that a reader must know) and `option_off_max_diff`: for each family option, the max abs difference of
transformers' logits (all prompts, all positions) when that one option is switched off, showing that a
reader which ignored it would fail the 1e-4 tolerance.

- gemma2: Gemma2ForCausalLM; layers alternate sliding (window 8) / global; attention-logit soft-capping 5
  and final-logit soft-capping 3 (both bite); query_pre_attn_scalar 24 != head_dim 32; head_dim 32 !=
  hidden 64 / 4 heads; GeGLU with tanh GELU; embeddings scaled by sqrt(hidden); (1 + w) RMSNorms before and
  after attention and FFN; tied embeddings; Gemma-style tokenizer (hf_tokenizers.gemma_style).
- gemma3: Gemma3ForCausalLM (text); 7 layers in transformers 5's `layer_types` 5:1 pattern (layers 0-4 and 6
  sliding, window 8; layer 5 global); local RoPE base 10k, global base 1M with linear scaling (factor 8) on
  the global layer only (as Gemma 3 4B+); QK-norm ((1 + w) RMSNorm per head); query_pre_attn_scalar 12 !=
  head_dim 16 != hidden 32 / 4 heads; the rest as gemma2 without soft-capping.
- gemma3-pattern: gemma3's weights, tokenizer and logits with a 4.x-style config.json: `sliding_window_pattern`
  6 instead of `layer_types`, `rope_theta` / `rope_local_base_freq` / `rope_scaling` instead of
  `rope_parameters` (transformers 5 still reads it, to the same layer types and logits: checked).
- qwen3 / qwen3-tied: Qwen3ForCausalLM, untied / tied embeddings; per-head q_norm / k_norm (randomized) before
  RoPE; head_dim 32 != hidden 64 / 4 heads; Qwen2-style byte-level tokenizer with <think> </think>.
- phi3-longrope: Phi3ForCausalLM (fused qkv_proj and gate_up_proj); LongRoPE with 6 short and 6 long factors
  (head_dim 12), original_max_position_embeddings 48, max_position_embeddings 192 (attention factor
  sqrt(1 + ln 4 / ln 48)); sliding_window 16 on every layer (as Phi-3-mini-4k has one: transformers masks
  every layer with it); Llama-2-style tokenizer with Phi-3's <|endoftext|> <|assistant|> <|end|> ... tokens.
- phi4-mini: Phi3ForCausalLM with partial_rotary_factor 0.75 (RoPE on 12 of 16 dims, as Phi-4-mini),
  LongRoPE (6 factors each), GQA 4/2, tied embeddings; byte-level tokenizer with Phi-4-mini's role tokens.
- smollm3: SmolLM3ForCausalLM, 4 layers, no_rope_layers [1, 1, 1, 0] (RoPE left out on layer 3), tied
  embeddings, Llama-3-style byte-level tokenizer with <|im_start|> <|im_end|> <think> </think>.
- granite: GraniteForCausalLM with embedding_multiplier 12, attention_multiplier 0.1 (!= 1/sqrt(16)),
  residual_multiplier 0.22, logits_scaling 4 (initializer_range 0.3, so that the logits stay of order 1); tied
  embeddings; Granite-3-style byte-level tokenizer (Digits + ByteLevel, no prefix space: llama.cpp's "refact"
  split) with Granite 3's <|start_of_role|> <|end_of_role|> <|end_of_text|> tokens.
- mistral-window: MistralForCausalLM with sliding_window 8, shorter than every prompt.
- qwen2-yarn: Qwen2ForCausalLM (random biases) with YaRN RoPE scaling (factor 4, original 32, beta 32 / 1,
  attention factor 0.1 ln 4 + 1), max_position_embeddings 128, tied embeddings.

transformers' rules recorded in the notes: a sliding window W lets position i attend to positions j with
i - W < j <= i (W keys, itself included); LongRoPE uses the long factors for every position when the
sequence (prompt plus greedy tokens so far, each step recomputed from scratch) is longer than
original_max_position_embeddings, else the short ones (so prompts 0-2 and their greedy steps use the short
factors, prompt 3 the long ones); YaRN's frequencies do not depend on the length.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from tokenizers import AddedToken

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import hf_tokenizers  # noqa: E402

OUT = Path(__file__).resolve().parent / "data" / "hf"
TEMPLATES = Path(__file__).resolve().parent / "data" / "chat_templates"
PROMPTS = ["Once upon a time, there was a little girl named Mia.", "Hello 世界! 1234 + 5678 = 6912 😀",
           "def add(a, b):\n    return a + b  # it's code"]
# 55-64 tokens in every fixture's tokenizer: longer than every window and than the original context of the
# LongRoPE fixtures (48, which prompts 0-2 and their greedy continuations stay within)
FAMILY_PROMPTS = [*PROMPTS, "Once upon a time, there was a little girl named Mia. She liked to play in the park "
                            "with her dog Max every day."]
WINDOW_NOTE = "sliding window W: position i attends to positions j with i - W < j <= i (W keys, itself included)"
LONGROPE_NOTE = ("LongRoPE: transformers uses long_factor for every position when the sequence (prompt, or prompt "
                 "plus the greedy tokens so far, recomputed from scratch at each step) is longer than "
                 "original_max_position_embeddings (48), else short_factor: prompts 0-2 and their greedy steps "
                 "use short_factor, prompt 3 long_factor; the attention factor sqrt(1 + ln(max/original) / "
                 "ln(original)) scales cos and sin in both cases")
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


# A family option switched off: a change of a copy of the config, and/or of the model built from it
ConfigChange = Callable[[Any], None]
ModelChange = Callable[[torch.nn.Module], None]
Off = tuple[ConfigChange | None, ModelChange | None]


def write(name: str, config: transformers.PretrainedConfig, cls: type, tok: Any, tok_config: dict,
          eos_ids: list[int], seed: int, prompts: list[str] = PROMPTS, notes: list[str] | None = None,
          offs: dict[str, Off] | None = None) -> None:
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
    expected: dict[str, Any] = {"transformers": transformers.__version__, "torch": torch.__version__}
    if notes:
        expected["notes"] = notes
    expected["prompts"] = []
    all_ids, all_logits = [], []
    for i, text in enumerate(prompts):
        ids = tok.encode(text, add_special_tokens=True).ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float().numpy()
            greedy: list[int] = []  # plain argmax steps, not stopping at end-of-generation ids
            for _ in range(GREEDY_TOKENS):
                step = model(torch.tensor([ids + greedy])).logits[0, -1]
                greedy.append(int(step.argmax()))
        np.save(folder / f"logits_{i}.npy", logits.astype(np.float32))
        expected["prompts"].append({"text": text, "ids": ids, "greedy": greedy})
        all_ids.append(ids)
        all_logits.append(logits)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    if max_diff(reloaded, all_ids, all_logits) > 1e-5:
        raise SystemExit(f"{folder}: the saved folder does not load back to the same logits")
    if offs:
        expected["option_off_max_diff"] = {option: max_diff(variant(model, config, cls, off), all_ids, all_logits)
                                           for option, off in offs.items()}
        print(f"{name}: " + ", ".join(f"{k} off: {v:.3g}" for k, v in expected["option_off_max_diff"].items()))
    (folder / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"{folder}: {size:,} bytes")


def max_diff(model: torch.nn.Module, all_ids: list[list[int]], all_logits: list[np.ndarray]) -> float:
    """The largest abs difference between `model`'s logits and `all_logits`, over all prompts and positions."""
    with torch.no_grad():
        return max(float(np.max(np.abs(model(torch.tensor([ids])).logits[0].float().numpy() - want)))
                   for ids, want in zip(all_ids, all_logits, strict=True))


def variant(model: torch.nn.Module, config: transformers.PretrainedConfig, cls: type, off: Off) -> torch.nn.Module:
    """`model`'s weights in a model whose config and/or modules have one option switched off."""
    change_config, change_model = off
    config = copy.deepcopy(config)
    if change_config:
        change_config(config)
    other = cls(config).eval()
    other.load_state_dict(model.state_dict())
    if change_model:
        change_model(other)
    return other


def setting(**changes: Any) -> ConfigChange:
    def change(config: Any) -> None:
        for key, value in changes.items():
            setattr(config, key, value)
    return change


def rope(layer_type: str | None = None, **changes: Any) -> ConfigChange:
    """Changes rope_parameters (of one layer type, for Gemma 3's per-type parameters)."""
    def change(config: Any) -> None:
        (config.rope_parameters[layer_type] if layer_type else config.rope_parameters).update(changes)
    return change


def identity(*suffixes: str) -> ModelChange:
    """Replaces the modules whose names end with one of `suffixes` (norms) by the identity."""
    def change(model: torch.nn.Module) -> None:
        for name, _ in list(model.named_modules()):
            if name.endswith(suffixes):
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, torch.nn.Identity())
    return change


def unscaled_embeddings(model: torch.nn.Module) -> None:
    model.model.embed_tokens.embed_scale.fill_(1.0)


def chat_template(name: str) -> dict[str, str]:
    """{"chat_template": the published template} if TEMPLATES has <name>.jinja, else nothing."""
    path = TEMPLATES / f"{name}.jinja"
    return {"chat_template": path.read_text()} if path.is_file() else {}


def llama3_gqa() -> None:
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


def llama_tied() -> None:
    tok = hf_tokenizers.sentencepiece_style(metaspace=False)
    cfg = transformers.LlamaConfig(
        **{**COMMON, "num_key_value_heads": 4}, head_dim=32, vocab_size=tok.get_vocab_size(), bos_token_id=1,
        eos_token_id=2, tie_word_embeddings=True,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})
    write("llama-tied", cfg, transformers.LlamaForCausalLM, tok,
          {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "add_eos_token": False}, [2], seed=2)


def qwen2_bias() -> None:
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


def mistral() -> None:
    tok = hf_tokenizers.sentencepiece_style(metaspace=True)
    cfg = transformers.MistralConfig(
        **COMMON, vocab_size=tok.get_vocab_size(), bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
        sliding_window=4096, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    write("mistral", cfg, transformers.MistralForCausalLM, tok,
          {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}, [2], seed=4)


# ------------------------------------------------------------------------------------------------
# The model families of issue 13
# ------------------------------------------------------------------------------------------------

FAMILY = dict(max_position_embeddings=256, initializer_range=0.1, attn_implementation="eager")
GEMMA_NORMS = ("post_attention_layernorm", "post_feedforward_layernorm")


def gemma_tok_config(template: str) -> dict:
    return {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
            "add_bos_token": True, "add_eos_token": False, **chat_template(template)}


def gemma2() -> None:
    tok = hf_tokenizers.gemma_style()
    cfg = transformers.Gemma2Config(
        **FAMILY, vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=24, rms_norm_eps=1e-6,
        layer_types=["sliding_attention", "full_attention"], sliding_window=8, attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, pad_token_id=0, eos_token_id=1,
        bos_token_id=2)
    write("gemma2", cfg, transformers.Gemma2ForCausalLM, tok, gemma_tok_config("gemma2"),
          [1, tok.token_to_id("<end_of_turn>")], seed=5, prompts=FAMILY_PROMPTS, notes=[WINDOW_NOTE], offs={
              "attn_logit_softcapping": (setting(attn_logit_softcapping=None), None),
              "final_logit_softcapping": (setting(final_logit_softcapping=None), None),
              "sliding_window": (setting(sliding_window=1024), None),
              "query_pre_attn_scalar": (setting(query_pre_attn_scalar=32), None),
              "embedding_scale": (None, unscaled_embeddings),
              "post_norms": (None, identity(*GEMMA_NORMS))})


GEMMA3_ROPE = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
               "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}


def gemma3() -> None:
    tok = hf_tokenizers.gemma_style()
    cfg = transformers.Gemma3TextConfig(
        **FAMILY, vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=7,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=12, rms_norm_eps=1e-6,
        layer_types=["sliding_attention"] * 5 + ["full_attention", "sliding_attention"], sliding_window=8,
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, rope_parameters=copy.deepcopy(GEMMA3_ROPE),
        pad_token_id=0, eos_token_id=1, bos_token_id=2)
    write("gemma3", cfg, transformers.Gemma3ForCausalLM, tok, gemma_tok_config("gemma3"),
          [1, tok.token_to_id("<end_of_turn>")], seed=6, prompts=FAMILY_PROMPTS, notes=[WINDOW_NOTE], offs={
              "sliding_window": (setting(sliding_window=1024), None),
              "local_rope_base": (rope("sliding_attention", rope_theta=1000000.0), None),
              "global_linear_scaling": (rope("full_attention", rope_type="default", factor=None), None),
              "qk_norm": (None, identity("q_norm", "k_norm")),
              "query_pre_attn_scalar": (setting(query_pre_attn_scalar=16), None),
              "embedding_scale": (None, unscaled_embeddings),
              "post_norms": (None, identity(*GEMMA_NORMS))})


def gemma3_pattern() -> None:
    """gemma3 (written first if absent) with the config.json spelling of transformers 4.x."""
    if not (OUT / "gemma3").is_dir():
        gemma3()
    folder = OUT / "gemma3-pattern"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(OUT / "gemma3", folder)
    config = json.loads((folder / "config.json").read_text())
    layer_types, rope_parameters = config.pop("layer_types"), config.pop("rope_parameters")
    config.pop("_sliding_window_pattern")  # transformers 5 saves its copy of the default as well
    if layer_types != ["sliding_attention"] * 5 + ["full_attention", "sliding_attention"]:
        raise SystemExit(f"{folder}: gemma3's layer_types {layer_types} is not the 5:1 pattern")
    config.update(sliding_window_pattern=6, rope_theta=rope_parameters["full_attention"]["rope_theta"],
                  rope_local_base_freq=rope_parameters["sliding_attention"]["rope_theta"],
                  rope_scaling={"rope_type": "linear", "factor": rope_parameters["full_attention"]["factor"]})
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    expected = json.loads((folder / "expected.json").read_text())
    expected["notes"].append("config.json in transformers 4.x's spelling (sliding_window_pattern, rope_theta, "
                             "rope_local_base_freq, rope_scaling): the same model as gemma3")
    (folder / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    if model.config.layer_types != layer_types:
        raise SystemExit(f"{folder}: transformers reads layer types {model.config.layer_types}")
    logits = [np.load(folder / f"logits_{i}.npy") for i in range(len(expected["prompts"]))]
    if max_diff(model, [p["ids"] for p in expected["prompts"]], logits) > 0:
        raise SystemExit(f"{folder}: transformers gives other logits than gemma3's")
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"{folder}: {size:,} bytes")


def qwen3_tokenizer() -> Any:
    tok = hf_tokenizers.byte_level("qwen2")
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t in ("<think>", "</think>", "<tool_call>", "</tool_call>")])
    return tok


def qwen3(name: str, tied: bool, seed: int) -> None:
    tok = qwen3_tokenizer()
    end, im_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")
    cfg = transformers.Qwen3Config(
        **FAMILY, vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6, tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, bos_token_id=None, eos_token_id=end)
    write(name, cfg, transformers.Qwen3ForCausalLM, tok,
          {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", **chat_template("qwen3")},
          [im_end, end], seed=seed, prompts=FAMILY_PROMPTS, offs={"qk_norm": (None, identity("q_norm", "k_norm"))})


PHI3_ROLES = ("<|assistant|>", "<|system|>", "<|end|>", "<|user|>")


def phi3_longrope() -> None:
    tok = hf_tokenizers.sentencepiece_style(metaspace=False)
    # Phi-3's added tokens follow the Llama-2 vocabulary; its role tokens swallow the whitespace after them
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False, rstrip=True) for t in PHI3_ROLES])
    end, role_end, assistant = (tok.token_to_id(t) for t in ("<|endoftext|>", "<|end|>", "<|assistant|>"))
    short = [1.1, 1.2, 1.35, 1.5, 1.8, 2.2]
    cfg = transformers.Phi3Config(
        **{**FAMILY, "max_position_embeddings": 192}, original_max_position_embeddings=48,
        vocab_size=tok.get_vocab_size(), hidden_size=48, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5, tie_word_embeddings=False,
        sliding_window=16, rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": short,
                                            "long_factor": [1.5, 2.5, 4.0, 7.0, 12.0, 20.0]},
        bos_token_id=1, eos_token_id=end, pad_token_id=end)
    write("phi3-longrope", cfg, transformers.Phi3ForCausalLM, tok,
          {"bos_token": "<s>", "eos_token": "<|endoftext|>", "add_bos_token": True, "add_eos_token": False,
           **chat_template("phi3")}, [end, assistant, role_end], seed=7, prompts=FAMILY_PROMPTS,
          notes=[WINDOW_NOTE + "; Phi3's sliding_window applies to every layer", LONGROPE_NOTE], offs={
              "longrope": (setting(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), None),
              "long_factor": (rope(long_factor=short), None),
              "longrope_attention_factor": (rope(attention_factor=1.0), None),
              "sliding_window": (setting(sliding_window=None), None)})


def phi4_mini() -> None:
    tok = hf_tokenizers.byte_level("qwen2", specials=["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>",
                                                      "<|end|>", "<|tool|>", "<|/tool|>"])
    end, role_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|end|>")
    short, long = [1.05, 1.1, 1.2, 1.4, 1.7, 2.0], [1.5, 3.0, 5.0, 9.0, 16.0, 30.0]
    cfg = transformers.Phi3Config(
        **{**FAMILY, "max_position_embeddings": 192}, original_max_position_embeddings=48,
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                         "short_factor": short, "long_factor": long},
        bos_token_id=end, eos_token_id=end, pad_token_id=end)
    full = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 1.0,
            "short_factor": [*short, 1.0, 1.0], "long_factor": [*long, 1.0, 1.0]}
    write("phi4-mini", cfg, transformers.Phi3ForCausalLM, tok,
          {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "add_bos_token": False,
           **chat_template("phi4_mini")}, [end, role_end], seed=8, prompts=FAMILY_PROMPTS,
          notes=["partial_rotary_factor 0.75: RoPE (rotate-half) on the first 12 of each head's 16 dims, the "
                 "last 4 pass unrotated", LONGROPE_NOTE], offs={
              "partial_rotary_factor": (setting(rope_parameters=full), None),
              "longrope": (setting(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                    "partial_rotary_factor": 0.75}), None)})


def smollm3() -> None:
    tok = hf_tokenizers.byte_level("llama3", specials=["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>",
                                                       "<|im_end|>"])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t in ("<think>", "</think>", "<tool_call>", "</tool_call>")])
    bos, end, im_end = (tok.token_to_id(t) for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|im_end|>"))
    cfg = transformers.SmolLM3Config(
        **FAMILY, vocab_size=tok.get_vocab_size(), hidden_size=48, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=True,
        no_rope_layers=[1, 1, 1, 0], rope_parameters={"rope_type": "default", "rope_theta": 2000000.0},
        bos_token_id=bos, eos_token_id=im_end, pad_token_id=end)
    write("smollm3", cfg, transformers.SmolLM3ForCausalLM, tok,
          {"bos_token": "<|begin_of_text|>", "eos_token": "<|im_end|>", "pad_token": "<|end_of_text|>",
           **chat_template("smollm3")}, [im_end, end], seed=9, prompts=FAMILY_PROMPTS,
          notes=["no_rope_layers[i] == 1: layer i uses RoPE; 0: no position encoding on that layer"],
          offs={"no_rope_layers": (setting(no_rope_layers=[1, 1, 1, 1]), None)})


def granite() -> None:
    # Granite 3's split: digits one by one, then GPT-2's regex without a prefix space (llama.cpp's "refact",
    # the same rules as "smollm")
    tok = hf_tokenizers.byte_level("smollm", specials=["<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>",
                                                       "<|tool_call|>"])
    end = tok.token_to_id("<|end_of_text|>")
    cfg = transformers.GraniteConfig(
        # larger weights than the others': logits divided by logits_scaling stay of order 1
        **{**FAMILY, "initializer_range": 0.3}, vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=True,
        embedding_multiplier=12.0, attention_multiplier=0.1, residual_multiplier=0.22, logits_scaling=4.0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, bos_token_id=end, eos_token_id=end,
        pad_token_id=end)
    write("granite", cfg, transformers.GraniteForCausalLM, tok,
          {"bos_token": "<|end_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": False,
           **chat_template("granite3")}, [end], seed=10, prompts=FAMILY_PROMPTS,
          notes=["attention scores are q.k * attention_multiplier (no 1/sqrt(head_dim)); logits are divided by "
                 "logits_scaling"], offs={
              "embedding_multiplier": (setting(embedding_multiplier=1.0), None),
              "attention_multiplier": (setting(attention_multiplier=0.25), None),  # Llama's 1/sqrt(head_dim)
              "residual_multiplier": (setting(residual_multiplier=1.0), None),
              "logits_scaling": (setting(logits_scaling=1.0), None)})


def mistral_window() -> None:
    tok = hf_tokenizers.sentencepiece_style(metaspace=True)
    cfg = transformers.MistralConfig(
        **FAMILY, vocab_size=tok.get_vocab_size(), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=12, rms_norm_eps=1e-5, tie_word_embeddings=False,
        sliding_window=8, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, bos_token_id=1,
        eos_token_id=2)
    write("mistral-window", cfg, transformers.MistralForCausalLM, tok,
          {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, **chat_template("mistral")}, [2],
          seed=11, prompts=FAMILY_PROMPTS, notes=[WINDOW_NOTE],
          offs={"sliding_window": (setting(sliding_window=None), None)})


def qwen2_yarn() -> None:
    tok = hf_tokenizers.byte_level("qwen2")
    end, im_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")
    cfg = transformers.Qwen2Config(
        **{**FAMILY, "max_position_embeddings": 128}, vocab_size=tok.get_vocab_size(), hidden_size=64,
        intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
        tie_word_embeddings=True, use_sliding_window=False,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                         "original_max_position_embeddings": 32},
        bos_token_id=None, eos_token_id=end)
    write("qwen2-yarn", cfg, transformers.Qwen2ForCausalLM, tok,
          {"bos_token": None, "eos_token": "<|im_end|>", **chat_template("qwen2")}, [im_end, end], seed=12,
          prompts=FAMILY_PROMPTS, notes=["YaRN: static frequencies (the same for every length), beta_fast 32, "
                                         "beta_slow 1, attention factor 0.1 ln(factor) + 1 on cos and sin"],
          offs={"yarn": (setting(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), None),
                "yarn_attention_factor": (rope(attention_factor=1.0), None)})


FIXTURES: dict[str, Callable[[], None]] = {
    "llama3-gqa": llama3_gqa, "llama-tied": llama_tied, "qwen2-bias": qwen2_bias, "mistral": mistral,
    "gemma2": gemma2, "gemma3": gemma3, "gemma3-pattern": gemma3_pattern,
    "qwen3": lambda: qwen3("qwen3", tied=False, seed=13), "qwen3-tied": lambda: qwen3("qwen3-tied", tied=True, seed=14),
    "phi3-longrope": phi3_longrope, "phi4-mini": phi4_mini, "smollm3": smollm3, "granite": granite,
    "mistral-window": mistral_window, "qwen2-yarn": qwen2_yarn}


def main() -> None:
    global TEMPLATES
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"fixtures to write (default: all): {', '.join(FIXTURES)}")
    parser.add_argument("--templates", type=Path, default=TEMPLATES, help="folder of published chat templates")
    args = parser.parse_args()
    if unknown := [n for n in args.names if n not in FIXTURES]:
        parser.error(f"unknown fixtures {unknown}: choose from {', '.join(FIXTURES)}")
    TEMPLATES = args.templates
    for name in args.names or FIXTURES:
        FIXTURES[name]()


if __name__ == "__main__":
    main()
