"""Few-shot selection: the per-item label-balanced draw, TF-IDF and BM25 neighbours, shot order, and that an item
never gets itself as an example."""

import math
from collections import Counter
from pathlib import Path

import pytest

from conftest import write_spec
from llmbus.task.data import Item
from llmbus.task.fewshot import Bm25Index, ExampleSelector
from llmbus.task.spec import load_spec

TEXTS = ["free prize call now", "win cash prize now", "lunch at noon today", "see you at lunch",
         "meeting moved to noon", "claim your free cash", "dinner tonight with mum", "urgent prize claim call",
         "running late for lunch", "call me when free"]


def _pool() -> list[Item]:
    return [Item(f"p{i}", {"text": text, "label": "spam" if any(w in text for w in ("prize", "cash")) else "ham"},
                 "spam" if any(w in text for w in ("prize", "cash")) else "ham") for i, text in enumerate(TEXTS)]


def _selector(tmp_path: Path, **fewshot: object) -> ExampleSelector:
    spec = load_spec(write_spec(tmp_path / "t.yaml", "items.jsonl", fewshot=fewshot))
    return ExampleSelector(spec, _pool())


def test_balanced_draws_a_label_balanced_set_per_item(tmp_path: Path):
    selector = _selector(tmp_path, k=4, strategy="balanced")
    items = [Item(f"q{i}", {"text": f"query {i}"}, "ham") for i in range(6)]
    chosen = selector.select_many(items)
    for examples in chosen:
        assert Counter(e.expected for e in examples) == {"spam": 2, "ham": 2}
    assert len({tuple(e.id for e in examples) for examples in chosen}) > 1  # not one shared set, unlike fixed
    assert selector.select(items[0]) == chosen[0]  # seeded by the item: the same prompt every run (cacheable)


def test_tfidf_and_bm25_pick_the_pool_texts_sharing_the_items_words(tmp_path: Path):
    query = Item("q", {"text": "is lunch at noon ok"}, "ham")
    for strategy in ("tfidf", "bm25"):
        examples = _selector(tmp_path, k=2, strategy=strategy).select(query)
        assert examples[-1].text("text") == "lunch at noon today", strategy  # the nearest goes last
        assert {e.text("text") for e in examples} <= {"lunch at noon today", "see you at lunch",
                                                     "meeting moved to noon", "running late for lunch"}


def test_bm25_scores_match_the_okapi_formula():
    docs = [t.split() for t in TEXTS]
    index = Bm25Index(TEXTS)
    query = ["free", "cash", "call", "now"]
    avg = sum(len(d) for d in docs) / len(docs)
    expected = []
    for doc in docs:
        score = 0.0
        for word in set(query):
            df = sum(word in d for d in docs)
            tf = doc.count(word)
            idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
            score += idf * tf * 2.5 / (tf + 1.5 * (1 - 0.75 + 0.75 * len(doc) / avg))
        expected.append(score)
    assert index.scores([" ".join(query)])[0] == pytest.approx(expected)


def test_reverse_order_puts_the_nearest_example_first(tmp_path: Path):
    query = Item("q", {"text": "is lunch at noon ok"}, "ham")
    default = _selector(tmp_path, k=3, strategy="tfidf").select(query)
    reverse = _selector(tmp_path, k=3, strategy="tfidf", order="reverse").select(query)
    assert reverse == list(reversed(default)) and reverse[0].text("text") == "lunch at noon today"


@pytest.mark.parametrize("strategy", ["fixed", "balanced", "random", "tfidf", "bm25", "nearest"])
def test_a_pool_item_never_gets_itself_as_an_example(tmp_path: Path, strategy: str):
    selector = _selector(tmp_path, k=9, strategy=strategy)
    for item, examples in zip(selector.pool, selector.select_many(selector.pool), strict=True):
        assert item.id not in {e.id for e in examples}
        assert len(examples) == 9


def test_tfidf_and_bm25_indexes_equal_scikit_learns_vectorizers():
    """The core's own TF-IDF / BM25 (no scikit-learn at run time) equal scikit-learn's on real-looking text:
    its tokens (lowercased words of 2+ word characters, accents and punctuation as sklearn treats them)."""
    import numpy as np
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

    from llmbus.task.fewshot import BM25_B, BM25_K1, TfidfIndex

    pool = [*TEXTS, "Ünïcode café — naïve FREE!!! prize2win", "a I x", "", "free free free prize"]
    queries = ["FREE prize now?", "café lunch", "nothing matches zzz", "", "free-prize_call"]
    vectorizer = TfidfVectorizer(sublinear_tf=True).fit(pool)
    expected = (vectorizer.transform(queries) @ vectorizer.transform(pool).T).toarray()
    assert np.allclose(TfidfIndex(pool).scores(queries), expected, atol=1e-12)

    counts = CountVectorizer().fit(pool).transform(pool).toarray().astype(float)
    lengths, df = counts.sum(axis=1), (counts > 0).sum(axis=0)
    idf = np.log1p((len(pool) - df + 0.5) / (df + 0.5))
    weights = counts * (BM25_K1 + 1) / (counts + BM25_K1 * (1 - BM25_B + BM25_B * lengths / lengths.mean())[:, None])
    present = (CountVectorizer().fit(pool).transform(queries).toarray() > 0).astype(float)
    assert np.allclose(Bm25Index(pool).scores(queries), (present * idf) @ weights.T, atol=1e-12)
