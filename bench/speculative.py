"""Speculative decoding on the embedded model: decode speed and acceptance rate, ratios from one run.

    .venv/bin/python bench/speculative.py [--threads 1] [--rounds 3] [--ngram-size N] [--no-draft-model]

One GGUF (local:gemma-3-270m), the same greedy requests to three llama-servers started by llmbus's `local:`
provider: plain, draft-free n-gram lookup (`speculative: ngram-simple`), and a draft model
(`speculative: draft-simple`) whose draft is the same GGUF. Rounds interleave the servers (rotating the order)
so a noisy neighbour hits all alike. Two prompt sets: copying a text (the output repeats the input: where
n-gram lookup can help) and free continuation (nothing to look up: the control).

Reported per variant and prompt set: decode tokens/s from each server's own counters (/metrics, so prompt
processing is excluded), the median over rounds of its ratio to the plain server, end-to-end request time
ratio, and the acceptance rate (accepted / drafted tokens) summed from the calls' recorded draft counts.
A same-size draft model cannot speed anything up (each drafted token costs a full forward pass of the same
model); it is here to show the draft-model path works and what its acceptance looks like.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import httpx

import llmbus
from llmbus import Completion, Request, draft_stats

# A `local:` model's provider (llmbus.get_model(...).provider): its llama-server is `.server`.
LocalProvider = Any

TEXTS = [
    "The committee will meet on Tuesday at nine to review the budget for the new library building, and every "
    "department head is asked to bring the figures for the last two years. Coffee will be served in the hall "
    "from half past eight, and the meeting should end before lunch.",
    "Heavy rain is expected across the northern valleys tonight, with strong winds along the coast; the ferry "
    "service will stop at six and the mountain road may close before midnight. Drivers should avoid the bridge "
    "near the old mill until the water has gone down.",
    "Our team shipped the new search feature last week. The first reviews from customers are good, but the "
    "mobile version still loads slowly on older phones and needs more work. We will look at the image sizes "
    "first, because they make up most of the page.",
    "Please send the signed contract to the office before Friday so that the payment can be processed, and "
    "keep a copy of the invoice for your own records until the end of the year. If anything in the contract is "
    "unclear, call the front desk and ask for the legal team.",
]
COPY = ("Copy the text exactly.\nText: The bus was late again this morning, so I walked.\n"
        "Copy: The bus was late again this morning, so I walked.\nText: {text}\nCopy:")
FREE = ["Once upon a time, in a village by the sea, there lived an old", "The history of the bicycle begins"]


def variants(threads: int, ngram_size: int | None, draft_model: bool) -> dict[str, LocalProvider]:
    """The servers compared, all on the embedded GGUF with one slot."""
    settings: dict[str, dict[str, object]] = {"plain": {},
                                              "ngram": {"speculative": "ngram-simple", "ngram_size": ngram_size}}
    if draft_model:  # the embedded GGUF drafts for itself
        gguf = llmbus.get_model("local:gemma-3-270m").config.gguf  # type: ignore[union-attr]
        settings["draft"] = {"speculative": "draft-simple", "draft_gguf": gguf, "draft_max": 8}
    return {name: llmbus.get_model("local:gemma-3-270m", threads=threads, parallel=1, **extra).provider
            for name, extra in settings.items()}


def counters(provider: LocalProvider) -> dict[str, float]:
    """The server's Prometheus counters (llama-server runs with --metrics), e.g. `tokens_predicted_total`."""
    values = {}
    for line in httpx.get(provider.server.base_url + "/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("llamacpp:") and "{" not in name:
            values[name.removeprefix("llamacpp:")] = float(value)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ngram-size", type=int, default=None, help="n-gram lookup length (llama.cpp default: 12)")
    parser.add_argument("--no-draft-model", action="store_true")
    args = parser.parse_args()

    sets = {"copy": [Request(COPY.format(text=t), max_tokens=120, stop=("\n",)) for t in TEXTS],
            "free": [Request(p, max_tokens=48) for p in FREE]}
    providers = variants(args.threads, args.ngram_size, not args.no_draft_model)
    names = list(providers)
    # per (set, variant): per-round decode tok/s and wall seconds; all completions for acceptance and equality
    rates: dict[tuple[str, str], list[float]] = {}
    walls: dict[tuple[str, str], list[float]] = {}
    done: dict[tuple[str, str], list[Completion]] = {}
    server_drafts: dict[str, tuple[float, float]] = {}  # (drafted, accepted) by the server's own counters
    try:
        for provider in providers.values():
            provider.check()
            provider.complete(Request("Warm up:", max_tokens=4))
        start = {name: counters(provider) for name, provider in providers.items()}
        for round_no in range(args.rounds):
            order = names[round_no % len(names):] + names[:round_no % len(names)]
            for set_name, requests in sets.items():
                for name in order:
                    provider = providers[name]
                    before = counters(provider)
                    tick = time.perf_counter()
                    done.setdefault((set_name, name), []).extend(provider.complete(r) for r in requests)
                    walls.setdefault((set_name, name), []).append(time.perf_counter() - tick)
                    after = counters(provider)
                    rates.setdefault((set_name, name), []).append(
                        (after["tokens_predicted_total"] - before["tokens_predicted_total"])
                        / (after["tokens_predicted_seconds_total"] - before["tokens_predicted_seconds_total"]))
        for name, provider in providers.items():
            end = counters(provider)
            drafted, accepted = (end.get(c, 0.0) - start[name].get(c, 0.0) for c in (
                "spec_decode_num_draft_tokens_total", "spec_decode_num_accepted_tokens_total"))
            server_drafts[name] = (drafted, accepted)
    finally:
        for provider in providers.values():
            provider.close()

    med = statistics.median
    print(f"local:gemma-3-270m · {args.threads} thread(s) · 1 slot · {args.rounds} interleaved rounds · "
          f"n-gram lookup size {args.ngram_size or 'llama.cpp default (12)'}")
    print(f"{'prompts':6} {'server':6} {'decode tok/s':>12} {'× plain':>8} {'wall × plain':>12} "
          f"{'drafted':>8} {'accepted':>8} {'acceptance':>10} {'same text':>9}")
    for set_name in sets:
        plain_texts = [c.text for c in done[(set_name, "plain")]]
        for name in names:
            key = (set_name, name)
            speed = med(r / p for r, p in zip(rates[key], rates[(set_name, "plain")], strict=True))
            wall = med(w / p for w, p in zip(walls[key], walls[(set_name, "plain")], strict=True))
            stats = draft_stats(c.extra for c in done[key])
            same = sum(a.text == b for a, b in zip(done[key], plain_texts, strict=True))
            rate = f"{stats.acceptance_rate:.3f}" if stats.acceptance_rate is not None else "-"
            print(f"{set_name:6} {name:6} {med(rates[key]):12.1f} {speed:8.3f} {wall:12.3f} "
                  f"{stats.drafted:8d} {stats.accepted:8d} {rate:>10} {same:>4}/{len(plain_texts)}")
    for name in names:
        logged = draft_stats(c.extra for (_, n), calls in done.items() if n == name for c in calls)
        drafted, accepted = server_drafts[name]
        print(f"{name}: drafted/accepted in the call log {logged.drafted}/{logged.accepted}, "
              f"by llama-server's /metrics {drafted:.0f}/{accepted:.0f}")


if __name__ == "__main__":
    main()
