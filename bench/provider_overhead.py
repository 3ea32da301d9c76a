"""llmbus `local:` provider vs raw llama.cpp, and 8-concurrent vs sequential throughput — ratios from one run.

    .venv/bin/python bench/provider_overhead.py [--threads 2] [--tokens 128] [--requests 16]

1. Decode speed: llama-bench `tg` (raw llama.cpp, no server) vs llmbus's `local:` provider on the same GGUF
   and thread count; also vs the same llama-server called directly over HTTP (what llmbus adds on top).
   Target: ratio ≥ 0.95. Greedy requests use a one-step sampler chain (see providers/local.py).
2. Throughput: the same N generation requests sequentially vs 8 in flight (llama-server slots, continuous
   batching). Target: ≥ 2× on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

import llmbus
from llmbus import Request, find_binary

# A `local:` model's provider (llmbus.get_model(...).provider): it answers `complete`, its llama-server is `.server`.
LocalProvider = Any

PROMPTS = [f"Write a long story about a {thing}. Once upon a time," for thing in
           ("dragon", "robot", "sailor", "baker", "wizard", "cat", "king", "river", "pilot", "gardener",
            "clock", "mountain", "violin", "lighthouse", "fox", "comet")]


def llama_bench_tg(gguf: str, threads: int, tokens: int) -> float:
    """Raw llama.cpp decode tokens/s from llama-bench (median of its repetitions)."""
    out = subprocess.run([str(find_binary("llama-bench")), "-m", gguf, "-t", str(threads), "-p", "0",
                          "-n", str(tokens), "-r", "3", "-o", "json"], capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout)[0]["avg_ts"])


def llmbus_tokens_per_s(provider: LocalProvider, tokens: int, repeats: int) -> float:
    """Median decode tokens/s of single requests through the llmbus provider."""
    rates = []
    for i in range(repeats):
        tick = time.perf_counter()
        completion = provider.complete(Request(PROMPTS[i % len(PROMPTS)], max_tokens=tokens, temperature=0.0))
        rates.append(completion.tokens_out / (time.perf_counter() - tick))
    return statistics.median(rates)


def direct_server_tokens_per_s(base_url: str, tokens: int, repeats: int) -> float:
    """Median tokens/s of the same requests (same greedy sampler) sent straight to llama-server's /completion."""
    rates = []
    with httpx.Client(base_url=base_url, timeout=600) as client:
        for i in range(repeats):
            tick = time.perf_counter()
            data = client.post("/completion", json={"prompt": PROMPTS[i % len(PROMPTS)], "n_predict": tokens,
                                                    "temperature": 0.0, "cache_prompt": True,
                                                    "top_k": 1, "samplers": ["top_k"]}).json()
            rates.append(data["tokens_predicted"] / (time.perf_counter() - tick))
    return statistics.median(rates)


def throughput(provider: LocalProvider, tokens: int, requests: int, concurrency: int) -> float:
    """Generated tokens per second over `requests` requests with `concurrency` in flight."""
    prompts = [PROMPTS[i % len(PROMPTS)] + f" ({i})" for i in range(requests)]
    tick = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(lambda p: provider.complete(Request(p, max_tokens=tokens, temperature=0.0)), prompts))
    return sum(c.tokens_out for c in done) / (time.perf_counter() - tick)


def concurrency_ratio(provider: LocalProvider, tokens: int, requests: int, rounds: int) -> float:
    """Median over interleaved rounds of 8-concurrent / sequential throughput (noise hits both sides alike)."""
    return statistics.median(throughput(provider, tokens, requests, 8) / throughput(provider, tokens, requests, 1)
                             for _ in range(rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="requests per decode measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    args = parser.parse_args()

    model = llmbus.get_model("local:gemma-3-270m", threads=args.threads, parallel=8)
    provider = model.provider
    provider.check()
    gguf = str(provider.server.gguf)
    raw, ours, direct, sequential, concurrent = [], [], [], [], []
    try:
        provider.complete(Request(PROMPTS[0], max_tokens=8))  # warm up
        # Rounds interleave baseline and llmbus so a noisy neighbour hits both sides alike.
        for _ in range(args.rounds):
            raw.append(llama_bench_tg(gguf, args.threads, args.tokens))
            ours.append(llmbus_tokens_per_s(provider, args.tokens, args.repeats))
            direct.append(direct_server_tokens_per_s(provider.server.base_url, args.tokens, args.repeats))
            sequential.append(throughput(provider, args.tokens, args.requests, 1))
            concurrent.append(throughput(provider, args.tokens, args.requests, 8))
    finally:
        model.close()

    def ratio(a: list[float], b: list[float]) -> float:
        return statistics.median(x / y for x, y in zip(a, b, strict=True))

    med = statistics.median
    print(f"model {gguf} · {args.threads} threads · {args.tokens} tokens per request · {args.rounds} rounds")
    print(f"raw llama.cpp (llama-bench tg{args.tokens}):      {med(raw):7.1f} tok/s")
    print(f"llama-server called directly:            {med(direct):7.1f} tok/s")
    print(f"llmbus local: provider:                  {med(ours):7.1f} tok/s")
    print(f"ratio llmbus / raw llama.cpp:            {ratio(ours, raw):7.3f}   (target ≥ 0.95)")
    print(f"ratio llmbus / llama-server direct:      {ratio(ours, direct):7.3f}")
    print(f"sequential throughput ({args.requests} requests):    {med(sequential):7.1f} tok/s")
    print(f"8-concurrent throughput:                 {med(concurrent):7.1f} tok/s")
    print(f"ratio 8-concurrent / sequential:         {ratio(concurrent, sequential):7.3f}   (target ≥ 2.0)")


if __name__ == "__main__":
    main()
