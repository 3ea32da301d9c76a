"""llama.cpp engine knobs on the embedded model: flash attention, KV cache type and the context cache, as ratios
against a baseline measured in the same run.

    .venv/bin/python bench/engine_knobs.py [--threads 1] [--rounds 3] [--shots 40]

Three llama-servers started by llmbus's `local:` provider on one GGUF (local:gemma-3-270m, default 8 slots of
2,048 tokens): flash attention off (f16 KV), on (f16 KV), and on with a q8_0 KV cache (a quantized V needs flash
attention). Rounds interleave them (rotating the order) so a noisy neighbour hits all alike; each round sends
every server the same fresh prompt (a few-shot block of --shots SMS, nothing cached) and decodes 64 tokens.
Reported: the server's RSS after the rounds, prompt and decode tokens/s from llama-server's own `timings`, and the
median over rounds of each ratio to its baseline (flash on vs off; q8_0 vs f16, both with flash on).

Context cache: a task prefix (instructions + the same shots) is saved once (`context_cache:`), then each round
starts two fresh servers and times the first request after the start, streamed: cold (an empty cache folder)
against restored (the saved prefix loaded into every slot before the request; the restore is inside the timing).
Time to first token, its ratio, and the prompt tokens each first request evaluated.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

import llmbus
from llmbus import Request

# A `local:` model's provider (llmbus.get_model(...).provider): its llama-server is `.server`.
LocalProvider = Any

SMS = ["WINNER!! You have won a free prize, call 09061701461 now", "Ok lar... Joking wif u oni...",
       "URGENT! Claim your cash reward, txt CLAIM to 81010", "I'll be home late, don't wait for dinner",
       "Free entry in a weekly competition to win FA Cup final tickets", "Are we still meeting at the station at six?",
       "You have been selected for a cash prize of 2000 pounds, reply YES", "Can you pick up some milk on the way?"]
VARIANTS = {"flash off": {"flash_attn": "off"}, "flash on": {"flash_attn": "on"},
            "flash on, q8_0 KV": {"flash_attn": "on", "cache_type_k": "q8_0", "cache_type_v": "q8_0"}}
BASELINE = {"flash on": "flash off", "flash on, q8_0 KV": "flash on"}
DECODE = 64


def shots_block(n: int, tag: str = "") -> str:
    """Instructions and n labeled SMS: the shared prefix of a few-shot task (`tag` makes it unique)."""
    lines = [f"Decide whether each SMS message is spam or ham.{tag}"]
    for i in range(n):
        text = SMS[i % len(SMS)]
        lines.append(f"SMS: {text} ({i})\nLabel: {'spam' if i % 2 == 0 else 'ham'}")
    return "\n".join(lines) + "\n"


def open_local(threads: int, **fields: object) -> LocalProvider:
    """The embedded model's provider with some of its llmbus.yaml settings replaced (not started yet)."""
    return llmbus.get_model("local:gemma-3-270m", threads=threads, **fields).provider


def speeds(provider: LocalProvider, prompt: str) -> tuple[float, float]:
    """Prompt and decode tokens/s for one uncached request, from llama-server's own timings."""
    data = provider.server.post("/completion", {"prompt": prompt, "n_predict": DECODE, "temperature": 0.0,
                                                "cache_prompt": False, "ignore_eos": True})
    timings = data["timings"]
    return float(timings["prompt_per_second"]), float(timings["predicted_per_second"])


def rss_mb(provider: LocalProvider) -> float:
    assert provider.server.process is not None
    return psutil.Process(provider.server.process.pid).memory_info().rss / 1e6


def first_token(provider: LocalProvider, prompt: str) -> tuple[float, int]:
    """Seconds to the first streamed piece of a fresh server's first request (restore included), and the
    prompt tokens it evaluated."""
    provider.check()  # started: the start itself costs the same either way
    tick = time.perf_counter()
    stream = provider.stream(Request(prompt, max_tokens=8))
    next(stream)
    ttft = time.perf_counter() - tick
    while True:
        try:
            next(stream)
        except StopIteration as end:
            return ttft, int(end.value.extra["prompt_evaluated"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shots", type=int, default=40, help="few-shot SMS in the prompt (~16 tokens each)")
    args = parser.parse_args()
    med = statistics.median

    providers = {name: open_local(args.threads, **fields) for name, fields in VARIANTS.items()}
    names = list(providers)
    prompt_rates: dict[str, list[float]] = {name: [] for name in names}
    decode_rates: dict[str, list[float]] = {name: [] for name in names}
    rss: dict[str, float] = {}
    try:
        for provider in providers.values():
            provider.check()
            speeds(provider, "Warm up:")
        for round_no in range(args.rounds):
            prompt = shots_block(args.shots, tag=f" (round {round_no})") + "SMS: see you soon\nLabel:"
            for name in names[round_no % len(names):] + names[:round_no % len(names)]:
                prompt_rate, decode_rate = speeds(providers[name], prompt)
                prompt_rates[name].append(prompt_rate)
                decode_rates[name].append(decode_rate)
        rss = {name: rss_mb(provider) for name, provider in providers.items()}
        tokens = len(providers["flash off"].tokenize(prompt, special=True))
    finally:
        for provider in providers.values():
            provider.close()

    with llmbus.get_model("local:gemma-3-270m", threads=args.threads) as unstarted:  # its config: slots, ctx
        slots = unstarted.config
    assert slots is not None
    print(f"local:gemma-3-270m · {args.threads} thread(s) · {slots.parallel} slots × {slots.ctx_per_slot} ctx · "
          f"{args.rounds} interleaved rounds · {tokens}-token prompt, {DECODE} decoded")
    print(f"{'server':18} {'RSS MB':>7} {'prompt tok/s':>12} {'decode tok/s':>12}   vs {'':18} "
          f"{'RSS ×':>6} {'prompt ×':>8} {'decode ×':>8}")
    for name in names:
        line = f"{name:18} {rss[name]:7.0f} {med(prompt_rates[name]):12.1f} {med(decode_rates[name]):12.1f}"
        base = BASELINE.get(name)
        if base:
            line += (f"   vs {base:18} {rss[name] / rss[base]:6.3f} "
                     f"{med(a / b for a, b in zip(prompt_rates[name], prompt_rates[base], strict=True)):8.3f} "
                     f"{med(a / b for a, b in zip(decode_rates[name], decode_rates[base], strict=True)):8.3f}")
        print(line)

    with tempfile.TemporaryDirectory(prefix="llmbus-bench-ctx-") as scratch:
        saved = Path(scratch) / "saved"
        prefix = shots_block(args.shots)
        teacher = open_local(args.threads, context_cache=str(saved))
        try:  # two items with the same prefix: the prefix is saved
            for text in ("see you soon", "free tickets, call now"):
                teacher.complete(Request(prefix + f"SMS: {text}\nLabel:", max_tokens=1))
        finally:
            teacher.close()
        ttft: dict[str, list[float]] = {"cold": [], "restored": []}
        evaluated: dict[str, int] = {}
        for round_no in range(args.rounds):
            prompt = prefix + f"SMS: are we still on for round {round_no}?\nLabel:"
            for kind in (("cold", "restored") if round_no % 2 == 0 else ("restored", "cold")):
                folder = saved if kind == "restored" else Path(scratch) / f"empty-{round_no}"
                provider = open_local(args.threads, context_cache=str(folder))
                try:
                    seconds, evaluated[kind] = first_token(provider, prompt)
                finally:
                    provider.close()
                ttft[kind].append(seconds)
    ratio = med(r / c for r, c in zip(ttft["restored"], ttft["cold"], strict=True))
    print(f"context cache, first request after a restart ({args.shots}-shot prefix, {slots.parallel} slots restored):"
          f" cold {med(ttft['cold']) * 1000:.0f} ms TTFT, {evaluated['cold']} prompt tokens evaluated; restored "
          f"{med(ttft['restored']) * 1000:.0f} ms, {evaluated['restored']} evaluated; restored/cold TTFT {ratio:.3f}")


if __name__ == "__main__":
    main()
