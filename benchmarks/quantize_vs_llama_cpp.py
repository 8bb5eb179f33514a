"""`llmrun quantize` against llama.cpp's `llama-quantize`: the same input, every preset, every tensor's bytes.

    python benchmarks/quantize_vs_llama_cpp.py MODEL-F32-OR-F16.gguf [--types Q4_K_M Q6_K ...]
        [--out DIR] [--keep Q4_K_M ...] [--threads N] [--golden tests/data/FILE.json]

For each preset both tools quantize MODEL (each timed, as a separate process), then every tensor of
llama-quantize's file is compared with the tensor of the same name in llmrun's: the ggml type, the shape and
the data bytes. A markdown table of the results goes to stdout: per preset the tensors compared, how many
are byte-identical, the first differing tensors, and both tools' wall times.

--keep names presets whose llama-quantize file stays in --out (as MODEL-STEM-PRESET.gguf); every other output
is deleted once compared. --golden records, for the tests, the type and sha256 (first 10 hex digits) of every
tensor of llama-quantize's files in a JSON file, under the input's file name (other inputs' entries are kept):
"tensors" the names, sorted, and per preset one "TYPE:digest" per name. tests/test_quantize_golden.py checks
llmrun's output against it where llama.cpp is not installed.
Needs llama.cpp's llama-quantize (--llama-quantize, default /tmp/llamacpp/build/bin/llama-quantize).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmrun.presets import PRESETS  # noqa: E402  (after the path setup, so this checkout's llmrun is used)

LLAMA_QUANTIZE = Path("/tmp/llamacpp/build/bin/llama-quantize")


def tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """name -> (ggml type name, shape, data bytes) of every tensor of a GGUF file."""
    return {t.name: (t.tensor_type.name, tuple(int(n) for n in t.shape), np.asarray(t.data).tobytes())
            for t in gguf.GGUFReader(path).tensors}


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return time.perf_counter() - start


def compare(theirs: dict, ours: dict) -> list[str]:
    """What differs, one line per tensor (empty: every tensor identical, none missing or extra)."""
    problems = [f"{name}: missing in llmrun's file" for name in theirs if name not in ours]
    problems += [f"{name}: not in llama-quantize's file" for name in ours if name not in theirs]
    for name in theirs.keys() & ours.keys():
        (t_type, t_shape, t_data), (o_type, o_shape, o_data) = theirs[name], ours[name]
        if (t_type, t_shape) != (o_type, o_shape):
            problems.append(f"{name}: {o_type} {list(o_shape)}, llama.cpp {t_type} {list(t_shape)}")
        elif t_data != o_data:
            a, b = np.frombuffer(t_data, np.uint8), np.frombuffer(o_data, np.uint8)
            problems.append(f"{name} ({t_type}): {int(np.count_nonzero(a != b))} of {a.size} bytes differ")
    return sorted(problems)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="an F32 or F16 GGUF file")
    p.add_argument("--types", nargs="+", default=[n for n in PRESETS if n != "F32"], help="presets to compare")
    p.add_argument("--out", type=Path, default=Path("/tmp/llmrun-quantize-check"), help="folder for the outputs")
    p.add_argument("--keep", nargs="*", default=[], help="presets whose llama-quantize file is kept in --out")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="llama-quantize's threads")
    p.add_argument("--llama-quantize", type=Path, default=LLAMA_QUANTIZE)
    p.add_argument("--golden", type=Path, help="write llama-quantize's tensor sha256s here (JSON)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    stem = args.model.name.removesuffix(".gguf")
    golden: dict[str, list[str]] = {}
    names: list[str] = []
    print(f"input: {args.model}\n")
    print("| preset | tensors | identical | llama-quantize s | llmrun quantize s | differences |")
    print("|---|---|---|---|---|---|")
    failed = False
    for preset in args.types:
        theirs_path, ours_path = args.out / f"{stem}-{preset}.gguf", args.out / f"{stem}-{preset}-llmrun.gguf"
        t_llama = timed([str(args.llama_quantize), str(args.model), str(theirs_path), preset, str(args.threads)])
        t_ours = timed([sys.executable, "-m", "llmrun.cli", "quantize", str(args.model), str(ours_path),
                        "--type", preset], env)
        theirs, ours = tensors(theirs_path), tensors(ours_path)
        problems = compare(theirs, ours)
        failed |= bool(problems)
        same = len(theirs) - sum(1 for line in problems if "not in llama-quantize" not in line)
        shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        print(f"| {preset} | {len(theirs)} | {same} | {t_llama:.1f} | {t_ours:.1f} | {shown or 'none'} |", flush=True)
        names = sorted(theirs)
        golden[preset] = [f"{theirs[n][0]}:{hashlib.sha256(theirs[n][2]).hexdigest()[:10]}" for n in names]
        ours_path.unlink()
        if preset not in args.keep:
            theirs_path.unlink()
    if args.golden:
        recorded = json.loads(args.golden.read_text()) if args.golden.exists() else {}
        recorded[args.model.name] = {"tensors": names, "presets": golden}
        # one line per preset: small diffs when a preset is added
        text = json.dumps(recorded, sort_keys=True).replace('], "', '],\n"').replace('{"', '{\n"')
        args.golden.write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
