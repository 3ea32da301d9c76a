"""Guardrail catch rate, false-flag rate and cost: tier 1 alone, tier 2 (LLM) alone, and the cascade.

    .venv/bin/python bench/guardrail.py [--docs 60] [--seed 1] [--model local:gemma-3-270m] [--threads 1]

Answers are built from the support example's documents (chatterbot-corpus Q/A pairs). For each sampled
document, its question retrieves 3 sources from the whole corpus (the document's own chunk is put first if
retrieval missed it: this measures the guardrail, not retrieval), and two answers are checked against them:
- faithful: the document's answer (no code blocks), verbatim or after a short preface, or its first sentence;
- unsupported: that answer with one injected fact, rotating four kinds — an appended invented sentence with
  a name or number, a changed number, a sentence (5+ words) from another document, a swapped key word.
Tier 2 alone runs the LLM check on every answer: the cloze test where exactly one new word is the doubt,
the supported/unsupported judge otherwise.
Caught = an unsupported answer flagged; false flag = a faithful answer flagged. Cost per 1k answers: tier 1
is measured CPU time (MiniLM + rules) priced at the local model's $/hour; tier 2 is the local model's
measured cost; the cascade pays tier 1 on every answer and tier 2 only where tier 1 is unsure.
Target: cascade ≥ 90% caught, ≤ 10% false flags, at ≤ 0.3× the cost of the LLM check on every answer.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llmbus
from llmbus import Doc, Guardrail, Source, Store, build_index, embed_texts

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["Dr. Helen Marsh", "Samsung", "the Geneva office", "Professor Ito", "Oracle", "NASA", "Lisbon"]
INVENTED = ["This was confirmed by {name} in {year}.", "It costs about {n} dollars per month.",
            "Support for this ends on March {day}, {year}.", "{name} recommends doing this {n} times a week.",
            "This works only on models sold after {year}."]
PREFACES = ["", "", "Sure. ", "Here is what to do: ", "Good question. "]


@dataclass
class Case:
    """One answer to check, with its sources and whether it is faithful."""

    question: str
    answer: str
    sources: list[Source]
    faithful: bool
    kind: str


def load_example_module() -> Any:
    """examples/support/flow.py as a module (its corpus loader and guardrail settings)."""
    spec = importlib.util.spec_from_file_location("support_example", ROOT / "examples" / "support" / "flow.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def inject(answer: str, kind: str, rng: random.Random, other: str) -> str:
    """The answer with one unsupported fact of the given kind."""
    fill = {"name": rng.choice(NAMES), "year": rng.randint(1950, 2023), "n": rng.randint(2, 90),
            "day": rng.randint(2, 28)}
    if kind == "number" and re.search(r"\d+", answer):
        return re.sub(r"\d+", lambda m: str(int(m.group()) + rng.randint(2, 40)), answer, count=1)
    if kind == "foreign":
        return f"{answer.rstrip('.')}. {other.rstrip('.')}."
    if kind == "swap":
        words = re.findall(r"[A-Za-z]{5,}", answer)
        if words:
            target = rng.choice(words)
            return re.sub(rf"\b{target}\b", rng.choice(["satellite", "antibiotic", "mortgage", "volcano",
                                                        "keyboard", "senator", "protein"]), answer, count=1)
    return f"{answer.rstrip('.')}. {rng.choice(INVENTED).format(**fill)}"


def build_cases(docs: list[Doc], index: Any, n: int, seed: int, qa: Any) -> list[Case]:
    """n faithful and n unsupported answers from n sampled documents."""
    rng = random.Random(seed)
    usable = [d for d in docs if len(qa(d)[1].split()) >= 4 and "```" not in qa(d)[1]]
    sentences = [x for d in usable for x in re.split(r"(?<=[.!?])\s+", qa(d)[1]) if len(x.split()) >= 5]
    chosen = rng.sample(usable, n)
    cases = []
    for i, doc in enumerate(chosen):
        question, answer = qa(doc)
        answer = answer.split("\n")[0]
        sources = index.search(question, k=3)
        if doc.id not in [s.doc for s in sources]:
            own = next(j for j, d in enumerate(index.doc_ids) if d == doc.id)
            sources = [Source(doc.id, index.texts[own], 1.0, own), *sources[:2]]
        first_sentence = re.split(r"(?<=[.!?])\s+", answer)[0]
        faithful = rng.choice(PREFACES) + (first_sentence if i % 3 == 2 else answer)
        kind = ["invented", "number", "foreign", "swap"][i % 4]
        other = rng.choice([x for x in sentences if x not in answer])
        cases.append(Case(question, faithful, sources, True, "faithful"))
        cases.append(Case(question, inject(answer, kind, rng, other), sources, False, kind))
    return cases


def rates(flags: list[bool], cases: list[Case]) -> tuple[float, float]:
    """(catch rate over unsupported answers, false-flag rate over faithful answers)."""
    bad = [f for f, c in zip(flags, cases, strict=True) if not c.faithful]
    good = [f for f, c in zip(flags, cases, strict=True) if c.faithful]
    return sum(bad) / len(bad), sum(good) / len(good)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", default="local:gemma-3-270m")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--db", default=str(ROOT / "out" / "bench_guardrail.db"))
    args = parser.parse_args()
    os.environ.setdefault("LLMBUS_THREADS", str(args.threads))
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    example = load_example_module()
    docs = example.load_docs()
    index = build_index(Store(args.db), "chatterbot-english", docs)
    cases = build_cases(docs, index, args.docs, args.seed, example.question_and_answer)
    guard: Guardrail = example.make_guardrail()
    model = llmbus.get_model(args.model)  # opened, not started: check() below starts it
    assert model.config is not None
    guard.usd_per_hour = model.config.usd_per_hour if args.model.startswith("local:") else 0.05
    import torch

    torch.set_num_threads(args.threads)  # MiniLM on as many threads as the LLM: CPU-time prices compare
    embed_texts(["warm up"])  # the one-time model load is not a per-answer cost
    provider = model.provider
    provider.check()
    tier1, tier2 = [], []
    tick = time.perf_counter()
    try:
        for case in cases:
            tier1.append(guard.tier1(case.answer, case.sources, case.question))
            tier2.append(guard.tier2_check(case.answer, case.sources, provider, tier1[-1].unsupported_terms))
    finally:
        provider.close()
    n = len(cases)
    flags1 = [not v.passed for v in tier1]
    flags2 = [not t.passed for t in tier2]
    unsure = [guard.unsure(v) for v in tier1]
    flags_c = [f2 if u else f1 for f1, f2, u in zip(flags1, flags2, unsure, strict=True)]
    cost1 = sum(v.cost_usd for v in tier1) / n * 1000
    cost2 = sum(t.cost_usd for t in tier2) / n * 1000
    cost_c = cost1 + sum(t.cost_usd for t, u in zip(tier2, unsure, strict=True) if u) / n * 1000
    print(f"{n} answers ({n // 2} faithful, {n // 2} with an injected unsupported fact) from {args.docs} documents, "
          f"seed {args.seed}, tier 2 = {args.model}; {time.perf_counter() - tick:.0f} s")
    print(f"{'':28} {'caught':>8} {'false flags':>12} {'$ / 1k answers':>15} {'× LLM-on-all cost':>18}")
    for name, flags, cost in (("tier 1 alone (unsure=flag)", flags1, cost1), ("tier 2 (LLM) on every answer", flags2,
                                                                              cost2), ("cascade", flags_c, cost_c)):
        caught, false = rates(flags, cases)
        print(f"{name:28} {caught:8.1%} {false:12.1%} {cost:15.5f} {cost / cost2:18.3f}")
    print(f"tier 1 sent {sum(unsure)}/{n} answers ({sum(unsure) / n:.1%}) to tier 2")
    from sklearn.metrics import roc_auc_score

    judged = [(c.faithful, t.prob) for c, t in zip(cases, tier2, strict=True) if t.method == "judge"]
    if len({f for f, _ in judged}) == 2:
        auc = roc_auc_score([f for f, _ in judged], [p for _, p in judged])
        print(f"tier 2 judge (supported/unsupported) on its {len(judged)} answers: ROC AUC {auc:.3f} "
              "(0.5 = no signal)")
    for method in ("cloze", "judge"):
        used = [(c, t) for c, t, u in zip(cases, tier2, unsure, strict=True) if u and t.method == method]
        if used:
            print(f"  cascade tier 2 by {method}: {len(used)} answers, flagged {sum(not t.passed for _, t in used)} "
                  f"({sum(not c.faithful for c, _ in used)} of them unsupported)")
    for kind in ("invented", "number", "foreign", "swap"):
        picked = [(f, c) for f, c in zip(flags_c, cases, strict=True) if c.kind == kind]
        if picked:
            print(f"  cascade catches {kind:9} {sum(f for f, _ in picked)}/{len(picked)}")
    caught, false = rates(flags_c, cases)
    ok = caught >= 0.9 and false <= 0.1 and cost_c <= 0.3 * cost2
    print(f"target (≥90% caught, ≤10% false flags, ≤0.3× cost): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
