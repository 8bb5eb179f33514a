"""Speed of llmrun against llama.cpp's llama-bench on random-weight models of the new families' real shapes.

    python benchmarks/families.py --llama-bench PATH/TO/llama-bench --models gemma3-1b,qwen3-0.6b \\
        --types Q4_0,Q8_0 --threads 1,2 --rounds 2 --reps 2 [--dir /tmp/families-bench] [--json out.json]

Models: a random-weight Hugging Face folder per shape (config.json from the committed fixture of the family,
tests/data/hf/FAMILY, with the real dimensions; weights N(0, 1) / sqrt(cols) in F16, norms at their identity;
a tokenizer.json of the fixture's, padded with filler tokens up to the vocabulary size, since llama.cpp needs a
vocabulary of the classifier's size), written once under --dir, then `llmrun quantize FOLDER OUT.gguf --type T`
for each type (llama.cpp loads what llmrun writes). Shapes (SHAPES below):
  - gemma3-1b: Gemma 3 1B (dim 1152, 26 layers, 4 heads x 256, 1 KV head, ffn 6912, window 512, 5 local
    layers to 1 global) with the vocabulary cut from 262144 to 32000 (the classifier is an ordinary product;
    the cut keeps the files small and puts the weight on the layers, where the family's options are).
  - qwen3-0.6b: Qwen3 0.6B (dim 1024, 28 layers, 16 heads x 128, 8 KV heads, ffn 3072, tied, vocab 151936).
  - gemma2-2b-6l: Gemma 2 2B's width (dim 2304, 8 heads x 256, 4 KV heads, ffn 9216, full 256000 vocabulary,
    attention soft-cap 50, final soft-cap 30) with 6 of its 26 layers.
  - phi4-mini-8l: Phi-4-mini's width (dim 3072, 24 heads x 128, 8 KV heads, ffn 8192, partial rotary 0.75)
    with 8 of its 32 layers and the vocabulary cut from 200064 to 32000.
Tests, as llama-bench's: ppN (N random tokens from an empty cache) and tgN (N single-token steps), tokens/s.
llama-bench runs with `-fa 0 -r REPS -o json` (its own warm-up), llmrun as `llmrun bench --json -r REPS` (its
own untimed warm-up) from this source tree, each a fresh process per (model, type, threads); the two tools
alternate, order reversed on odd rounds. Tables give the median over all rounds of each tool's per-process
mean and the ratio llmrun / llama.cpp (> 1: llmrun faster).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
from machine import cpu_name  # benchmarks/machine.py: this script's folder

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "data" / "hf"

SHAPES: dict[str, dict] = {
    "gemma3-1b": dict(fixture="gemma3", config=dict(
        hidden_size=1152, num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
        intermediate_size=6912, vocab_size=32000, query_pre_attn_scalar=256, sliding_window=512,
        max_position_embeddings=32768, tie_word_embeddings=True,
        layer_types=[("full_attention" if (i + 1) % 6 == 0 else "sliding_attention") for i in range(26)],
        rope_parameters={"full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
                         "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}})),
    "gemma2-2b-6l": dict(fixture="gemma2", config=dict(
        hidden_size=2304, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
        intermediate_size=9216, vocab_size=256000, query_pre_attn_scalar=256, sliding_window=4096,
        max_position_embeddings=8192, tie_word_embeddings=True, attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0, layer_types=["sliding_attention", "full_attention"] * 3)),
    "qwen3-0.6b": dict(fixture="qwen3-tied", config=dict(
        hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        intermediate_size=3072, vocab_size=151936, max_position_embeddings=40960, tie_word_embeddings=True,
        layer_types=["full_attention"] * 28)),
    "phi4-mini-8l": dict(fixture="phi4-mini", config=dict(
        hidden_size=3072, num_hidden_layers=8, num_attention_heads=24, num_key_value_heads=8,
        intermediate_size=8192, vocab_size=32000, tie_word_embeddings=True, max_position_embeddings=131072,
        original_max_position_embeddings=4096,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                         "original_max_position_embeddings": 4096,
                         "short_factor": [1.0 + j / 48 for j in range(48)],
                         "long_factor": [1.0 + j for j in range(48)]})),
}


def tensor_shapes(cfg: dict, names: list[str]) -> dict[str, tuple[int, ...]]:
    """The real shapes of the fixture's tensor names (layer 0's names stand for every layer's)."""
    dim, hd = cfg["hidden_size"], cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    q, kv, ffn, vocab = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd, cfg["intermediate_size"], \
        cfg["vocab_size"]
    per = {"q_proj": (q, dim), "k_proj": (kv, dim), "v_proj": (kv, dim), "o_proj": (dim, q),
           "qkv_proj": (q + 2 * kv, dim),
           "gate_proj": (ffn, dim), "up_proj": (ffn, dim), "gate_up_proj": (2 * ffn, dim), "down_proj": (dim, ffn),
           "q_norm": (hd,), "k_norm": (hd,)}
    out: dict[str, tuple[int, ...]] = {}
    for layer in range(cfg["num_hidden_layers"]):
        for n in names:
            if not n.startswith("model.layers.0."):
                continue
            rest = n[len("model.layers.0."):]
            key = rest.split(".")[-2]
            out[f"model.layers.{layer}.{rest}"] = per.get(key, (dim,))
    out["model.embed_tokens.weight"] = (vocab, dim)
    out["model.norm.weight"] = (dim,)
    if not cfg.get("tie_word_embeddings") and "lm_head.weight" in names:
        out["lm_head.weight"] = (vocab, dim)
    return out


def write_random_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], norm_value: float, seed: int = 0) -> None:
    """F16 safetensors, tensor by tensor (never all in memory): matrices N(0, 1) / sqrt(cols), norms norm_value."""
    entries, offset = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * 2
        entries[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header = json.dumps(entries).encode()
    header += b" " * (-len(header) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        for shape in shapes.values():
            if len(shape) == 1:
                a = np.full(shape, norm_value, dtype=np.float16)
            else:
                a = (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[1])).astype(np.float16)
            f.write(a.tobytes())


def pad_tokenizer(src: Path, dst: Path, vocab: int, sentencepiece: bool) -> None:
    """The fixture's tokenizer.json with filler tokens (no merges reach them) up to `vocab` ids."""
    j = json.loads(src.read_text())
    v = j["model"]["vocab"]
    used = set(v.values()) | {t["id"] for t in j.get("added_tokens", [])}
    prefix = "\u2581" if sentencepiece else ""
    for i in range(vocab):
        if i not in used:
            v[f"{prefix}zq{i}"] = i
    dst.write_text(json.dumps(j))


def build_folder(shape: str, out: Path) -> Path:
    spec = SHAPES[shape]
    folder = out / shape
    if (folder / "model.safetensors").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    fx = FIXTURES / spec["fixture"]
    cfg = json.loads((fx / "config.json").read_text())
    cfg.update(spec["config"])
    cfg["dtype"] = "float16"
    if "_sliding_window_pattern" in cfg:
        cfg["_sliding_window_pattern"] = 6
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    for f in ("tokenizer_config.json", "generation_config.json"):
        if (fx / f).exists():
            shutil.copy(fx / f, folder / f)
    pad_tokenizer(fx / "tokenizer.json", folder / "tokenizer.json", cfg["vocab_size"],
                  sentencepiece=spec["fixture"].startswith("gemma"))
    sys.path.insert(0, str(ROOT / "tests"))
    from hf_builders import read_tensors

    names = list(read_tensors(fx / "model.safetensors"))
    shapes = tensor_shapes(cfg, names)
    norm_value = 0.0 if spec["fixture"].startswith("gemma") else 1.0  # Gemma's norms are (1 + w)
    write_random_safetensors(folder / "model.safetensors.tmp", shapes, norm_value)
    (folder / "model.safetensors.tmp").rename(folder / "model.safetensors")
    return folder


def quantized(shape: str, typ: str, out: Path) -> Path:
    path = out / f"{shape}-{typ}.gguf"
    if not path.exists():
        folder = build_folder(shape, out)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        subprocess.run([sys.executable, "-m", "llmrun.cli", "quantize", str(folder), str(path) + ".tmp", "--type", typ],
                       check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        Path(str(path) + ".tmp").rename(path)
    return path


def run_llmrun(model: Path, threads: int, p: int, n: int, reps: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = "import sys; from llmrun.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "bench", str(model), "-t", str(threads), "-p", str(p), "-n",
                        str(n), "-r", str(reps), "--json"], capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-800:])
    out = {}
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            out[d["test"]] = d["tokens_per_second"]
    return out


def run_llama_bench(binary: str, model: Path, threads: int, p: int, n: int, reps: int) -> dict[str, float]:
    r = subprocess.run([binary, "-m", str(model), "-t", str(threads), "-p", str(p), "-n", str(n), "-r", str(reps),
                        "-fa", "0", "-o", "json"], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-800:])
    out = {}
    for d in json.loads(r.stdout):
        test = f"pp{d['n_prompt']}" if d["n_gen"] == 0 else f"tg{d['n_gen']}"
        out[test] = d["avg_ts"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--models", default="gemma3-1b,qwen3-0.6b")
    ap.add_argument("--types", default="Q4_0,Q8_0")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/families-bench"))
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    a.dir.mkdir(parents=True, exist_ok=True)
    files = [(m, t, quantized(m, t, a.dir)) for m in a.models.split(",") for t in a.types.split(",")]
    if a.build_only:
        return 0
    threads = [int(t) for t in a.threads.split(",")]
    res: dict[tuple, list[float]] = {}
    for rnd in range(a.rounds):
        for m, typ, path in files:
            for t in threads:
                tools = [("llmrun", lambda path=path, t=t: run_llmrun(path, t, a.prompt, a.gen, a.reps)),
                         ("llama.cpp", lambda path=path, t=t: run_llama_bench(a.llama_bench, path, t, a.prompt, a.gen,
                                                                              a.reps))]
                if rnd % 2:
                    tools.reverse()
                for tool, fn in tools:
                    try:
                        r = fn()
                    except RuntimeError as e:
                        print(f"{tool} {m} {typ} t={t}: {e}", file=sys.stderr)
                        continue
                    for test, v in r.items():
                        res.setdefault((m, typ, t, test, tool), []).append(v)
                    print(f"round {rnd + 1} {m} {typ} t={t} {tool}: {r}", file=sys.stderr, flush=True)
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical CPUs); {a.rounds} rounds interleaved, {a.reps} reps each; "
          "median tokens/s, ratio llmrun / llama.cpp")
    print("| model | type | threads | test | llmrun | llama.cpp | llmrun / llama.cpp |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for (m, typ, t, test, tool) in sorted(res, key=lambda k: (k[0], k[1], k[3], k[2])):
        if tool != "llmrun" or (m, typ, t, test, "llama.cpp") not in res:
            continue
        lr = statistics.median(res[(m, typ, t, test, "llmrun")])
        lc = statistics.median(res[(m, typ, t, test, "llama.cpp")])
        rows.append(dict(model=m, type=typ, threads=t, test=test, llmrun=res[(m, typ, t, test, "llmrun")],
                         llamacpp=res[(m, typ, t, test, "llama.cpp")], ratio=lr / lc))
        print(f"| {m} | {typ} | {t} | {test} | {lr:.2f} | {lc:.2f} | {lr / lc:.2f} |")
    if a.json:
        a.json.write_text(json.dumps(dict(cpu=cpu_name(), rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
