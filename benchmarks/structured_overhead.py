"""Structured output's per-step cost inside llmrun's generation loop (issue 15, item 2): constrained vs
unconstrained decode tokens/s on one model, interleaved runs, plus the constraint's own time per step (mask +
apply + consume, timed around llmrun.structured.Constraint's methods).

    python benchmarks/structured_overhead.py /tmp/tl-q4_0.gguf --threads 1 --rounds 6 --tokens 64

The prompt is short; both runs decode `--tokens` tokens (the end-of-generation token is not allowed by the
grammar before the JSON ends, and a random-weight model's JSON strings go on, so constrained runs reach the
limit; an unconstrained run that ends early is reported)."""

from __future__ import annotations

import argparse
import statistics
import time

import llmrun
from llmrun import structured

SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "schema": {
    "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                     "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age", "tags"], "additionalProperties": False}}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--tokens", type=int, default=64)
    args = p.parse_args()

    step_times: list[float] = []
    apply, consume = structured.Constraint.apply, structured.Constraint.consume

    def timed_apply(self, logits, eog):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        out = apply(self, logits, eog)
        step_times.append(time.perf_counter() - t)
        return out

    def timed_consume(self, token):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        consume(self, token)
        step_times[-1] += time.perf_counter() - t

    structured.Constraint.apply, structured.Constraint.consume = timed_apply, timed_consume  # type: ignore

    with llmrun.load(args.model, n_threads=args.threads, n_ctx=512) as m:
        print(f"{m!r}  vocab {m.info.vocab_size}")
        t = time.perf_counter()
        m.generate("x", max_tokens=1, response_format={"type": "json_object"})
        print(f"first constrained request (tokenizer info + compile + 1 token): {time.perf_counter() - t:.3f} s")
        rates: dict[str, list[float]] = {"unconstrained": [], "json_schema": []}
        for r in range(args.rounds):
            for kind in (("unconstrained", "json_schema") if r % 2 == 0 else ("json_schema", "unconstrained")):
                kw = {"response_format": SCHEMA} if kind == "json_schema" else {}
                m.reset()
                g = m.stream("Name:", max_tokens=args.tokens, temperature=0.8, seed=r, **kw)
                g.text()
                if len(g.tokens) < args.tokens:
                    print(f"  {kind} round {r}: ended after {len(g.tokens)} tokens ({g.finish_reason})")
                rates[kind].append(g.stats.decode_tokens_per_second)
        for kind, xs in rates.items():
            print(f"{kind:14s} tg t/s: mean {statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f} "
                  f"(median {statistics.median(xs):.2f}, {len(xs)} runs: {', '.join(f'{x:.1f}' for x in xs)})")
        u, c = statistics.median(rates["unconstrained"]), statistics.median(rates["json_schema"])
        print(f"median step: unconstrained {1e3 / u:.2f} ms, constrained {1e3 / c:.2f} ms: "
              f"{100 * (1e3 / c - 1e3 / u) / (1e3 / u):+.1f}%")
        st = sorted(step_times)
        print(f"constraint per step (mask + apply + consume), {len(st)} steps: median {1e6 * st[len(st) // 2]:.0f} µs, "
              f"p99 {1e6 * st[int(len(st) * 0.99)]:.0f} µs, max {1e6 * st[-1]:.0f} µs = "
              f"{100 * st[len(st) // 2] * u:.2f}% (median) / "
              f"{100 * st[int(len(st) * 0.99)] * u:.2f}% (p99) of the unconstrained median step")


if __name__ == "__main__":
    main()
