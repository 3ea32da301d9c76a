"""A two-tier guardrail on every answer, and the deliver / regenerate / escalate loop around it.

Tier 1 is cheap and runs always: hard rules (non-empty, length, banned patterns, JSON Schema), then grounding
against the retrieved sources: content words and numbers of the answer that no source contains, and the
MiniLM similarity of each answer sentence to its closest source sentence. Clear cases are decided there;
only the unsure middle goes to tier 2, an LLM check by label scoring: a cloze test when a single new word
is the doubt (does the model, copying the source, write that word there?), else the labels supported /
unsupported with calibration against a content-free input.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from llmbus.embed import embed
from llmbus.flows.retrieval import STOPWORDS, Source, tokens
from llmbus.flows.review import Decision
from llmbus.providers import Provider, Request
from llmbus.settings import USD_PER_HOUR
from llmbus.task.output import parse_json

LABELS = ("supported", "unsupported")
SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
NUMBER = re.compile(r"\d+(?:[.,]\d+)?")

TIER2_SHOTS = """Decide whether every claim in the answer is stated in the sources.

Sources: Restart your router and check if the cables are connected properly.
Answer: Restart your router and check the cables.
Verdict: supported

Sources: The Eiffel Tower is in Paris. It was finished in 1889.
Answer: The Eiffel Tower is in Paris and was finished in 1925.
Verdict: unsupported

Sources: Python is a programming language created by Guido van Rossum.
Answer: Python is a programming language created by Guido van Rossum.
Verdict: supported

Sources: Use the password reset option or contact your admin.
Answer: Use the password reset option. Passwords expire every 30 days at Microsoft.
Verdict: unsupported
"""


@dataclass
class Verdict:
    """One guardrail decision with its reasons; `tier` says which tier decided."""

    passed: bool
    tier: int
    support: float  # tier 1: share of the answer's content words found in the sources
    unsupported_terms: list[str] = field(default_factory=list)
    unsure: bool = False  # tier 1 could not decide
    min_similarity: float = 1.0
    llm_prob: float | None = None  # tier 2: P(supported)
    reasons: list[str] = field(default_factory=list)
    tokens_in: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class Tier2:
    """The LLM check's result: its probability, the decision, which check ran, and what it cost."""

    prob: float
    passed: bool
    method: str  # cloze | judge
    tokens_in: int
    cost_usd: float


@dataclass(frozen=True)
class Rule:
    """A banned pattern and the reason given when it matches."""

    pattern: str
    reason: str


@dataclass
class Guardrail:
    """Tier-1 thresholds and rules, and the tier-2 model; `tier2=False` makes tier 1 decide everything."""

    model: str | None = None  # tier-2 model; None: the flow run's model
    rules: list[Rule] = field(default_factory=list)
    schema: dict[str, Any] | None = None
    max_chars: int = 1200
    max_novel: int = 2  # this many content words absent from the sources (or any new number): fail
    min_similarity: float = 0.5  # every claim sentence this close (MiniLM cosine) to some source sentence
    relevance_margin: float = 0.15  # the source an answer draws on may match the question this much worse
    tier2: bool = True
    tier2_threshold: float = 0.5  # (calibrated) P(supported) at or above this passes
    calibrate: bool = True  # judge: divide out the model's prior measured on a content-free input
    cloze_candidates: int = 7  # cloze: source words competing with the answer's new word
    usd_per_hour: float = USD_PER_HOUR  # tier-1 CPU time is priced like local inference
    _null_prob: float | None = field(default=None, repr=False)
    _vectors: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # source sentence embeddings

    def tier1(self, answer: str, sources: list[Source], question: str = "") -> Verdict:
        """Rules, grounding and (given the question) relevance; `unsure` marks the answers left to tier 2."""
        tick = time.process_time()
        hard = self._rule_failures(answer)
        if hard:
            return Verdict(False, 1, 0.0, reasons=hard, cost_usd=self._cpu_cost(tick))
        claims = claim_text(answer)
        novel = unsupported_terms(claims, " ".join(s.text for s in sources))
        numbers = [t for t in novel if NUMBER.fullmatch(t)]
        support = 1 - len(novel) / max(1, len(set(tokens(claims))))
        verdict = Verdict(False, 1, round(support, 4), novel)
        if novel:
            verdict.reasons.append(f"not in the sources: {', '.join(novel[:8])}")
        # A new number, or several new content words, is an invented fact; one new word may be a paraphrase.
        if numbers or len(novel) >= self.max_novel:
            verdict.cost_usd = self._cpu_cost(tick)
            return verdict
        verdict.min_similarity = round(min_sentence_similarity(claims, sources, self._vectors), 4)
        if verdict.min_similarity < self.min_similarity:
            verdict.reasons.append(f"a sentence is far from every source (similarity {verdict.min_similarity:.2f})")
        off_topic = self._off_topic_source(claims, sources, question) if question else None
        if off_topic:
            # Grounded, but in a source about another question ("who invented the lightbulb" for computers).
            verdict.reasons.append(off_topic)
        verdict.passed = not novel and verdict.min_similarity >= self.min_similarity and not off_topic
        verdict.unsure = (not verdict.passed and not off_topic
                          and verdict.min_similarity >= self.min_similarity / 2)
        verdict.cost_usd = self._cpu_cost(tick)
        return verdict

    def _off_topic_source(self, claims: str, sources: list[Source], question: str) -> str | None:
        """A reason when the source the answer draws on matches the question much worse than the best one."""
        if len(sources) < 2:
            return None
        words = set(tokens(claims))
        overlap = [len(words & set(tokens(s.text))) for s in sources]
        texts = [question, *(s.text for s in sources)]
        missing = [t for t in texts if t not in self._vectors]
        if missing:
            self._vectors.update(zip(missing, embed(missing), strict=True))
        sims = [float(self._vectors[question] @ self._vectors[s.text]) for s in sources]
        # Among the sources sharing the most words with the answer, the benefit of the doubt: the best match.
        used = max((i for i, o in enumerate(overlap) if o == max(overlap)), key=lambda i: sims[i])
        if max(sims) - sims[used] <= self.relevance_margin:
            return None
        return (f"the answer draws on a source about another question ({sources[used].doc}, similarity "
                f"{sims[used]:.2f} to the question vs {max(sims):.2f} for the best source)")

    def unsure(self, verdict: Verdict) -> bool:
        """Whether tier 1 leaves this answer to tier 2."""
        return verdict.tier == 1 and verdict.unsure

    def tier2_check(self, answer: str, sources: list[Source], provider: Provider,
                    novel: list[str] | None = None) -> Tier2:
        """The LLM check: a cloze test when one new word is the doubt, else the supported/unsupported judge."""
        if novel and len(novel) == 1:
            cloze = self.cloze_check(claim_text(answer), novel[0], sources, provider)
            if cloze is not None:
                return cloze
        return self.judge_check(answer, sources, provider)

    def judge_check(self, answer: str, sources: list[Source], provider: Provider) -> Tier2:
        """Calibrated P(supported) from the LLM's scores of the labels supported / unsupported."""
        if not self.calibrate:
            self._null_prob = 0.5
        if self._null_prob is None:
            # Calibrate before use: the model's prior for "supported" on a content-free input.
            null = provider.complete(Request(self.prompt("N/A", []), labels=LABELS))
            self._null_prob = float((null.label_probs or {}).get("supported", 0.5))
        result = provider.complete(Request(self.prompt(answer, sources), labels=LABELS))
        raw = float((result.label_probs or {}).get("supported", 0.5))
        p, q = raw / max(self._null_prob, 1e-6), (1 - raw) / max(1 - self._null_prob, 1e-6)
        prob = p / (p + q)
        return Tier2(prob, prob >= self.tier2_threshold, "judge", result.tokens_in, result.cost_usd)

    def cloze_check(self, claims: str, word: str, sources: list[Source], provider: Provider) -> Tier2 | None:
        """Does the model, copying the closest source, write the answer's new word where the answer has it?

        Label scoring over the new word and the source's own words for that slot: small models copy well, so
        a swapped or invented word gets almost no probability, while a word the source implies keeps some.
        None when there is nothing to compare with."""
        found = re.search(rf"\b{re.escape(word)}\b", claims, re.I)
        if found is None or not sources:
            return None
        answer_words = set(tokens(claims))
        source = max(sources, key=lambda s: len(answer_words & set(tokens(s.text))))
        rivals = [w for w in dict.fromkeys(re.findall(r"[A-Za-z][A-Za-z'-]+", source.text))
                  if w.lower() not in answer_words and w.lower() not in STOPWORDS][: self.cloze_candidates]
        actual = claims[found.start():found.end()]
        if not rivals:
            return None
        prompt = f"Source: {source.text[:600]}\nRepeat the source: {claims[: found.start()].rstrip()}"
        result = provider.complete(Request(prompt, labels=tuple(dict.fromkeys([actual, *rivals]))))
        prob = float((result.label_probs or {}).get(actual, 0.0))
        return Tier2(prob, result.text == actual or prob >= self.tier2_threshold, "cloze", result.tokens_in,
                     result.cost_usd)

    def prompt(self, answer: str, sources: list[Source], max_chars: int = 700) -> str:
        """The tier-2 prompt: fixed shots, then the sources and the answer (completion style)."""
        source_text = " ".join(s.text for s in sources)[:max_chars] if sources else "N/A"
        return f"{TIER2_SHOTS}\nSources: {source_text}\nAnswer: {answer.strip()}\nVerdict:"

    def check(self, answer: str, sources: list[Source], question: str = "",
              provider: Callable[[], Provider] | None = None) -> Verdict:
        """The cascade: tier 1, and tier 2 only when tier 1 is unsure (and a provider is given)."""
        verdict = self.tier1(answer, sources, question)
        if not (self.tier2 and provider is not None and self.unsure(verdict)):
            if verdict.tier == 1 and self.unsure(verdict):
                verdict.reasons.append("tier 1 unsure and no tier 2: failed to be safe")
            return verdict
        second = self.tier2_check(answer, sources, provider(), verdict.unsupported_terms)
        verdict.tier, verdict.llm_prob, verdict.passed = 2, round(second.prob, 4), second.passed
        verdict.tokens_in, verdict.cost_usd = second.tokens_in, verdict.cost_usd + second.cost_usd
        what = (f"P({verdict.unsupported_terms[0]!r} | copying the source)" if second.method == "cloze"
                else "P(supported)")
        verdict.reasons.append(f"LLM {second.method} check: {what} = {second.prob:.2f}")
        return verdict

    def _rule_failures(self, answer: str) -> list[str]:
        text = answer.strip()
        if not text:
            return ["rule: the answer is empty"]
        failures = [f"rule: longer than {self.max_chars} characters"] if len(text) > self.max_chars else []
        failures += [f"rule: {rule.reason}" for rule in self.rules if re.search(rule.pattern, text, re.I)]
        if self.schema is not None:
            parsed = parse_json(text, self.schema)
            if parsed.error_kind:
                failures.append(f"rule: {parsed.error_kind}: {parsed.error}")
        return failures

    def _cpu_cost(self, tick: float) -> float:
        return (time.process_time() - tick) * self.usd_per_hour / 3600


def _stem(token: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(token) > len(suffix) + 3 and token.endswith(suffix):
            return token[: -len(suffix)]
    return token


def unsupported_terms(answer: str, source_text: str) -> list[str]:
    """Content words and numbers of the answer that appear in no source (crudely stemmed), in order."""
    known = {_stem(t) for t in tokens(source_text)}
    seen: list[str] = []
    for token in tokens(answer):
        if _stem(token) not in known and token not in seen:
            seen.append(token)
    return seen


def claim_text(answer: str) -> str:
    """The answer without short filler sentences ("Sure.", "Good question!"): two words or fewer, no digits."""
    sentences = [x for x in SENTENCE.split(answer.strip()) if x.strip()]
    kept = [x for x in sentences if len(x.split()) > 2 or re.search(r"\d", x)]
    return " ".join(kept) if kept else answer.strip()


def min_sentence_similarity(answer: str, sources: list[Source], cache: dict[str, np.ndarray] | None = None) -> float:
    """For each answer sentence its best cosine to any source sentence; the worst of those (1.0 if empty).

    `cache` keeps source sentence vectors between checks: regenerations and reviews reuse the same sources."""
    sentences = [s for s in SENTENCE.split(answer.strip()) if len(s.split()) >= 3]
    source_sentences = list(dict.fromkeys(s.strip() for src in sources for s in SENTENCE.split(src.text)
                                          if s.strip()))
    if not sentences or not source_sentences:
        return 1.0 if not sentences else 0.0
    cache = {} if cache is None else cache
    missing = [s for s in source_sentences if s not in cache]
    vectors = embed(sentences + missing)
    if len(cache) > 20000:  # bounded: a long-lived process checks many different sources
        cache.clear()
    cache.update(zip(missing, vectors[len(sentences):], strict=True))
    sims = vectors[: len(sentences)] @ np.stack([cache[s] for s in source_sentences]).T
    return float(sims.max(axis=1).min())


@dataclass
class Guarded:
    """The outcome of the guarded loop: delivered, reviewed (approved/edited) or rejected."""

    answer: str | None
    status: str  # delivered | approved | edited | rejected
    attempts: int
    verdicts: list[Verdict]


class GuardSteps(Protocol):
    """The two durable steps `guarded_answer` takes (a `flows.engine.FlowContext` has them)."""

    def guardrail(self, key: str, guard: Guardrail, answer: str, sources: list[Source],
                  question: str = "") -> Verdict:
        """A logged guardrail check."""
        ...

    def review(self, key: str, payload: dict[str, Any], schema: dict[str, Any] | None = None) -> Decision:
        """A human review (pauses the run until decided)."""
        ...


def guarded_answer(ctx: GuardSteps, key: str, draft: Callable[[int, list[str]], str], guard: Guardrail,
                   sources: list[Source], question: str, max_regenerations: int = 2,
                   review_extra: dict[str, Any] | None = None) -> Guarded:
    """pass → deliver; fail → regenerate with the reasons (up to N times) → escalate to human review."""
    reasons: list[str] = []
    verdicts: list[Verdict] = []
    answer = ""
    for attempt in range(max_regenerations + 1):
        answer = draft(attempt, reasons)
        verdict = ctx.guardrail(f"{key}/check{attempt}", guard, answer, sources, question)
        verdicts.append(verdict)
        if verdict.passed:
            return Guarded(answer, "delivered", attempt + 1, verdicts)
        reasons = verdict.reasons
    payload = {"question": question, "draft": answer, "reasons": reasons,
               "sources": [{"doc": s.doc, "text": s.text} for s in sources], **(review_extra or {})}
    decision = ctx.review(f"{key}/review", payload, guard.schema)
    return Guarded(decision.answer if decision.accepted else None, decision.action, len(verdicts), verdicts)

