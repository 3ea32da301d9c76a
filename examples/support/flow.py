"""A grounded support-answer flow over the question/answer documents shipped in `chatterbot-corpus`.

    retrieve sources → pull the nearest solved examples → draft an answer (task spec answer.yaml)
    → guardrail (tier 1 grounding, tier 2 LLM only when unsure) → deliver, or regenerate with the reasons,
    or escalate to the human-review queue; approved or edited answers join the example pool at once.

    llmbus flow run examples/support/flow.py --input '{"question": "My internet stopped working"}'
    llmbus flow run examples/support/flow.py --dataset examples/support/questions.jsonl
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import yaml

from llmbus import (
    DataError,
    Doc,
    ExamplePool,
    FlowContext,
    Guardrail,
    Rule,
    Store,
    build_index,
    flow,
    guarded_answer,
    load_spec,
)

HERE = Path(__file__).resolve().parent
CORPUS_PACKAGE = "chatterbot-corpus"
TOPICS = ("tech_support", "computers", "ai", "science", "health", "history", "money", "coding", "literature",
          "sports", "food", "movies", "politics", "trivia")
POOL = "support"
SEED_EXAMPLES = 4  # solved examples the pool starts with (the first document of a few topics)


def corpus_files() -> list[Path]:
    """The English topic files inside the installed chatterbot-corpus package (read as files, not imported)."""
    try:
        dist = importlib.metadata.distribution(CORPUS_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise DataError(f"the support example needs the package {CORPUS_PACKAGE} "
                        f"(pip install -e '.[examples]')") from None
    files = [Path(str(dist.locate_file(f"chatterbot_corpus/data/english/{topic}.yml"))) for topic in TOPICS]
    return [f for f in files if f.is_file()]


def load_docs() -> list[Doc]:
    """One document per distinct question: the question and its answers, by topic."""
    docs: list[Doc] = []
    seen: set[str] = set()
    for path in corpus_files():
        conversations = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("conversations") or []
        for number, turns in enumerate(conversations):
            texts = [str(t).strip() for t in turns if isinstance(t, str | int | float) and str(t).strip()]
            if len(texts) < 2 or texts[0].lower() in seen:
                continue
            seen.add(texts[0].lower())
            docs.append(Doc(f"{path.stem}#{number}", texts[0] + "\n" + " ".join(texts[1:])))
    return docs


def question_and_answer(doc: Doc) -> tuple[str, str]:
    """A document split back into its question and its answer text."""
    question, _, answer = doc.text.partition("\n")
    return question, answer


def make_guardrail() -> Guardrail:
    """The support answers' guardrail: no links, phone numbers or promises; grounded in the sources."""
    return Guardrail(rules=[Rule(r"https?://|www\.", "contains a link"),
                            Rule(r"\+?\d[\d\s-]{7,}\d", "contains a phone number"),
                            Rule(r"\b(refund|guarantee|compensat\w*)\b", "promises money or guarantees")])


def setup(store: Store) -> dict[str, Any]:
    """Index the corpus (stored once), seed the example pool once, load the answer task."""
    docs = load_docs()
    pool = ExamplePool(store, POOL)
    if pool.size() == 0:  # a few solved tickets to start from; reviewed answers join as they come
        seeds = [d for d in docs if d.id.startswith(("tech_support#", "computers#"))][::5][:SEED_EXAMPLES]
        pool.add_many([question_and_answer(d) for d in seeds], origin="seed")
    return {"index": build_index(store, "chatterbot-english", docs), "pool": pool,
            "spec": load_spec(HERE / "answer.yaml"), "guard": make_guardrail()}


@flow("support", setup=setup)
def support(ctx: FlowContext, value: dict[str, Any]) -> dict[str, Any]:
    """Answer one customer question from the documents, guarded, with a human as the last resort."""
    question = str(value["question"])
    sources = ctx.retrieve("retrieve", ctx.resources["index"], question, k=3)
    examples = ctx.examples("examples", ctx.resources["pool"], question, k=3)

    def draft(attempt: int, reasons: list[str]) -> str:
        fields = {"question": question, "sources": [s.text for s in sources], "feedback": "; ".join(reasons)}
        return str(ctx.task(f"answer{attempt}", ctx.resources["spec"], fields, examples))

    result = guarded_answer(ctx, "guard", draft, ctx.resources["guard"], sources, question, max_regenerations=1,
                            review_extra={"pool": POOL, "pool_text": question})
    return {"answer": result.answer, "status": result.status, "attempts": result.attempts,
            "sources": [s.doc for s in sources]}
