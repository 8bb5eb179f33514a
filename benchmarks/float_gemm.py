"""GFLOP/s of the float products (llm_matmul, one thread) per weight type, instruction-set level, matrix shape and
batch size n, for one or more builds of llmrun side by side (old vs new: two source trees, each built in place).
The block types too: the 32-value ones (q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl) quantized, then repacked as load
repacks them, so that the products measured are the ones a model runs; the K-quants (q4_K, q5_K, q6_K ...) as
quantized. Their figure counts integer operations alike.

    python benchmarks/float_gemm.py --trees /tmp/old,. --types f32,f16,bf16 --isas avx512vnni,avx2 \\
        --shapes 768x768,2048x768,768x2048,5632x2048,2048x5632 --n 1,8,128,512 --rounds 3
    python benchmarks/float_gemm.py --trees /tmp/old,. --types q4_0,q8_0 --isas avx512bf16 --n 128,512

Each (tree, round) is a fresh subprocess that imports llmrun from that tree and times every configuration
(one untimed call, then the best of --reps calls, timed in the process's CPU time: the machine may be shared,
and time spent preempted is not the kernel's); the trees alternate within a round (reversed on odd
rounds) so that machine noise hits them alike. Printed: the median over rounds of each tree's GFLOP/s
(2 * rows * cols * n flops per call) and, with two trees, the ratio of the last to the first. Shapes are
rows x cols of the weight matrix (the output size x the input size). The weights are random and the
inputs too; the speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
import numpy as np
from llmrun.engine import ISA_NAMES, ffi, lib
cfg = json.loads(sys.argv[1])
floats = {"f32": lib.LLM_F32, "f16": lib.LLM_F16, "bf16": lib.LLM_BF16}
rng = np.random.default_rng(0)
res = {}


def weights(type, w32):  # (llmrun type code, weights) of w32 in `type`: a block type quantized, then repacked
    if type in floats:
        return floats[type], {"f32": w32, "f16": w32.astype(np.float16),
                              "bf16": (w32.view(np.uint32) >> 16).astype(np.uint16)}[type]
    code, (rows, cols) = getattr(lib, "LLM_" + type.upper()), w32.shape
    elems, nbytes = ffi.new("int64_t *"), ffi.new("int64_t *")
    assert lib.llm_type_layout(code, elems, nbytes) == 0
    q = np.empty(rows * cols // elems[0] * nbytes[0], np.uint8)
    assert lib.llm_quantize(code, ffi.from_buffer("float[]", w32), rows, cols, ffi.from_buffer(q)) == 0
    repacked, r8 = np.empty_like(q), ffi.new("int32_t *")
    if lib.llm_repack(code, ffi.from_buffer(q), rows, cols, ffi.from_buffer(repacked), r8) != 0:
        return code, q  # the 256-value blocks: no repacked form, read as the file has them
    return r8[0], repacked


for shape in cfg["shapes"]:
    rows, cols = map(int, shape.split("x"))
    w32 = (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)
    for type in cfg["types"]:
        code, w = weights(type, w32)
        for n in cfg["n"]:
            x = rng.standard_normal((n, cols)).astype(np.float32)
            out = np.empty((n, rows), dtype=np.float32)
            for isa in cfg["isas"]:
                args = (code, ISA_NAMES[isa], ffi.from_buffer(w), rows, cols, ffi.from_buffer("float[]", x), n,
                        ffi.from_buffer("float[]", out))
                assert lib.llm_matmul(*args) == 0
                best = float("inf")
                for _ in range(cfg["reps"]):
                    t = time.process_time()
                    lib.llm_matmul(*args)
                    best = min(best, time.process_time() - t)
                res[f"{type} {isa} {shape} n={n}"] = 2.0 * rows * cols * n / best / 1e9
print(json.dumps(res))
"""


def run_tree(tree: str, cfg: dict) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()), OMP_NUM_THREADS="1")
    # cwd: python -c puts the current directory first on the path, before PYTHONPATH
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], env=env, cwd=tree, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", default=".", help="comma-separated source trees (each built in place)")
    ap.add_argument("--types", default="f32,f16,bf16",
                    help="also q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, q4_K, q5_K, q6_K ...")
    ap.add_argument("--isas", default="avx512vnni,avx2")
    ap.add_argument("--shapes", default="768x768,2048x768,768x2048,5632x2048,2048x5632")
    ap.add_argument("--n", default="1,8,128,512")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    trees = a.trees.split(",")
    cfg = {"types": a.types.split(","), "isas": a.isas.split(","), "shapes": a.shapes.split(","),
           "n": [int(v) for v in a.n.split(",")], "reps": a.reps}
    runs: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
    for r in range(a.rounds):
        for tree in trees if r % 2 == 0 else trees[::-1]:
            runs[tree].append(run_tree(tree, cfg))
    keys = list(runs[trees[0]][0])
    head = f"{'type isa shape n':40s}" + "".join(f"{Path(t).resolve().name[:14]:>16s}" for t in trees)
    print(head + ("   ratio" if len(trees) == 2 else ""))
    for k in keys:
        med = [statistics.median(run[k] for run in runs[t]) for t in trees]
        line = f"{k:40s}" + "".join(f"{m:16.1f}" for m in med)
        if len(trees) == 2:
            line += f"   {med[1] / med[0]:5.2f}"
        print(line)


if __name__ == "__main__":
    main()
