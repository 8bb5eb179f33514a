"""Writes tests/data/embeddings/: transformers' embeddings of a few texts for two of the tiny committed model
folders of tests/data/hf (llama3-gqa: Llama 3 with GQA and llama3 RoPE scaling; gemma3: Gemma 3 with its
(1 + w) norms, scaled embeddings, QK-norm, norms after the blocks and sliding windows), the expected values of
tests/test_embeddings.py.

    /work/tvenv/bin/python tests/make_embedding_fixtures.py      # transformers + torch + tokenizers

For each folder: the texts are tokenized with its tokenizer.json as transformers does (add_special_tokens:
the folder's BOS rule); `model.model(ids).last_hidden_state` (float32, eager attention) is the final hidden
state after the final norm, checked here to be the classifier's input (lm_head of it gives the model's
logits, to 1e-5); it is pooled over the tokens: `<name>_mean.npy`, `<name>_last.npy`, `<name>_cls.npy`, each
(n_texts, dim) float32, not normalized. `<name>.json` records the texts, their ids and the versions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tokenizers
import torch
import transformers

HERE = Path(__file__).resolve().parent
HF = HERE / "data" / "hf"
OUT = HERE / "data" / "embeddings"
NAMES = ("llama3-gqa", "gemma3")
TEXTS = ["Once upon a time, there was a little girl named Mia.",
         "The cat sat on the mat.",
         "hello",
         "Embeddings turn text into vectors: similar meaning, nearby points. 12345 ✓"]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        folder = HF / name
        tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager",
                                                                  dtype=torch.float32).eval()
        pooled: dict[str, list[np.ndarray]] = {"mean": [], "last": [], "cls": []}
        all_ids = []
        for text in TEXTS:
            ids = tok.encode(text, add_special_tokens=True).ids
            with torch.no_grad():
                states = model.model(torch.tensor([ids])).last_hidden_state[0]
                logits = model(torch.tensor([ids])).logits[0]
                again = model.lm_head(states)
                cap = getattr(model.config, "final_logit_softcapping", None)
                if cap:
                    again = cap * torch.tanh(again / cap)
            diff = float((again - logits).abs().max())
            if diff > 1e-5:
                sys.exit(f"{name}: last_hidden_state is not the classifier's input (max diff {diff})")
            h = states.double().numpy()
            pooled["mean"].append(h.mean(axis=0))
            pooled["last"].append(h[-1])
            pooled["cls"].append(h[0])
            all_ids.append(ids)
        for pooling, rows in pooled.items():
            np.save(OUT / f"{name}_{pooling}.npy", np.stack(rows).astype(np.float32))
        meta = {"transformers": transformers.__version__, "torch": torch.__version__, "texts": TEXTS,
                "ids": all_ids}
        (OUT / f"{name}.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
        print(f"{name}: {len(TEXTS)} texts, {[len(i) for i in all_ids]} tokens, dim {model.config.hidden_size}")


if __name__ == "__main__":
    main()
