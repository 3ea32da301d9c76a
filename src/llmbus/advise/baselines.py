"""Cheap non-LLM baselines, trained on the pool split and scored with the task's own metric.

- classify: TF-IDF + logistic regression; MiniLM sentence embeddings + logistic regression.
- extract (token-tagged data): per-token logistic regression on word features; on MiniLM token embeddings.
- generate: answer of the nearest pool question (TF-IDF or MiniLM) — retrieval, no generation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from llmbus.embed import StageCallback, embed, load_minilm
from llmbus.errors import DataError
from llmbus.extras import require
from llmbus.task.data import Item, bio_to_entities
from llmbus.task.spec import TaskSpec

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

# scikit-learn comes with the embed extra, like the MiniLM baselines beside these
FEATURE = "llmbus advise's baselines"


def _sklearn(module: str) -> Any:
    return require("embed", f"sklearn.{module}", FEATURE)


class Fitted(Protocol):
    """A trained baseline."""

    def predict(self, items: list[Item]) -> list[Any]: ...


@dataclass(frozen=True)
class Baseline:
    """A named way to train a cheap model for a task (`train(spec, pool, progress)`; MiniLM ones report their
    embedding to `progress`, in training and in bulk predictions)."""

    name: str
    train: Callable[[TaskSpec, list[Item], StageCallback | None], Fitted]


@dataclass
class TextClassifier:
    """Any text featurizer followed by logistic regression."""

    featurize: Callable[[list[str]], Any]
    model: LogisticRegression
    field: str

    def predict(self, items: list[Item]) -> list[Any]:
        """Predicted labels."""
        return list(self.model.predict(self.featurize([i.text(self.field) for i in items])))


def _fit_classifier(featurize: Callable[[list[str]], Any], spec: TaskSpec, pool: list[Item]) -> TextClassifier:
    labels = [str(i.expected) for i in pool]
    if len(set(labels)) < 2:
        raise DataError(f"{spec.source}: the pool split has fewer than two labels; raise fewshot.pool_fraction")
    features = featurize([i.text(spec.data.input) for i in pool])
    model = _sklearn("linear_model").LogisticRegression(max_iter=2000, class_weight="balanced").fit(features, labels)
    return TextClassifier(featurize, model, spec.data.input)


def train_tfidf_classifier(spec: TaskSpec, pool: list[Item], progress: StageCallback | None = None) -> Fitted:
    """TF-IDF word 1–2-grams + logistic regression."""
    vectorizer = _sklearn("feature_extraction.text").TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    vectorizer.fit([i.text(spec.data.input) for i in pool])
    return _fit_classifier(vectorizer.transform, spec, pool)


def train_minilm_classifier(spec: TaskSpec, pool: list[Item], progress: StageCallback | None = None) -> Fitted:
    """Frozen MiniLM sentence embeddings + logistic regression."""
    return _fit_classifier(partial(embed, progress=progress), spec, pool)


# --- token tagging (NER) ------------------------------------------------------------------------------


def _tokens(item: Item) -> list[str]:
    tokens = item.fields.get("tokens")
    if not isinstance(tokens, list):
        raise DataError(f"item {item.id}: token baselines need a 'tokens' field (CoNLL data has one)")
    return [str(t) for t in tokens]


def word_features(tokens: list[str], i: int) -> dict[str, Any]:
    """Classic NER features of token i: the word, its shape, affixes and neighbours."""
    word = tokens[i]
    return {
        "w": word.lower(), "suffix3": word[-3:].lower(), "prefix2": word[:2].lower(),
        "title": word.istitle(), "upper": word.isupper(), "digit": word.isdigit(),
        "at": word.startswith("@"), "hash": word.startswith("#"), "url": word.startswith("http"),
        "prev": tokens[i - 1].lower() if i else "<s>",
        "next": tokens[i + 1].lower() if i + 1 < len(tokens) else "</s>",
        "first": i == 0,
    }


@dataclass
class TokenTagger:
    """Per-token logistic regression over some token featurizer; decodes BIO tags to entities."""

    featurize: Callable[[list[list[str]]], Any]
    model: LogisticRegression

    def predict(self, items: list[Item]) -> list[Any]:
        """Entity lists, one per item."""
        sentences = [_tokens(i) for i in items]
        tags = list(self.model.predict(self.featurize(sentences)))
        out, pos = [], 0
        for tokens in sentences:
            out.append(bio_to_entities(tokens, tags[pos:pos + len(tokens)]))
            pos += len(tokens)
        return out


def _fit_tagger(featurize: Callable[[list[list[str]]], Any], pool: list[Item]) -> TokenTagger:
    sentences = [_tokens(i) for i in pool]
    tags = [str(t) for i in pool for t in i.fields.get("tags", [])]
    model = _sklearn("linear_model").LogisticRegression(max_iter=1000, C=2.0).fit(featurize(sentences), tags)
    return TokenTagger(featurize, model)


def train_feature_tagger(spec: TaskSpec, pool: list[Item], progress: StageCallback | None = None) -> Fitted:
    """Sparse word features + logistic regression per token."""
    vectorizer = _sklearn("feature_extraction").DictVectorizer()
    vectorizer.fit([word_features(s, i) for s in (_tokens(p) for p in pool) for i in range(len(s))])

    def featurize(sentences: list[list[str]]) -> Any:
        return vectorizer.transform([word_features(s, i) for s in sentences for i in range(len(s))])

    return _fit_tagger(featurize, pool)


def minilm_word_vectors(sentences: list[list[str]], progress: StageCallback | None = None) -> np.ndarray:
    """One contextual MiniLM vector per word (mean of its word pieces), all sentences stacked; with
    `progress`, reported per batch when there is more than one."""
    model = load_minilm()
    import torch  # sentence-transformers' own dependency, loaded with it

    tokenizer = model.tokenizer
    encoder: Any = model[0].auto_model  # a transformers model; its stubs type the attribute as a Tensor
    rows: list[np.ndarray] = []
    report = progress if progress and len(sentences) > 32 else None
    stage = f"embedding the words of {len(sentences):,} sentences"
    for start in range(0, len(sentences), 32):
        if report:
            report(stage, start, len(sentences))
        batch = sentences[start:start + 32]
        encoded = tokenizer(batch, is_split_into_words=True, truncation=True, max_length=128, padding=True,
                            return_tensors="pt")
        with torch.no_grad():
            hidden = encoder(**encoded).last_hidden_state
        for b, words in enumerate(batch):
            word_ids = encoded.word_ids(b)
            vectors = np.zeros((len(words), hidden.shape[-1]), dtype=np.float32)
            counts = np.zeros(len(words))
            for position, word in enumerate(word_ids):
                if word is not None:
                    vectors[word] += hidden[b, position].numpy()
                    counts[word] += 1
            rows.append(vectors / np.maximum(counts, 1)[:, None])
    if report:
        report(stage, len(sentences), len(sentences))
    return np.vstack(rows) if rows else np.zeros((0, 384), dtype=np.float32)


def train_minilm_tagger(spec: TaskSpec, pool: list[Item], progress: StageCallback | None = None) -> Fitted:
    """Contextual MiniLM word vectors + logistic regression per token."""
    return _fit_tagger(partial(minilm_word_vectors, progress=progress), pool)


# --- retrieval for generation -------------------------------------------------------------------------


@dataclass
class NearestAnswer:
    """Answers with the expected answer of the most similar pool item."""

    vectorize: Callable[[list[str]], Any]
    pool_vectors: Any
    answers: list[Any]
    field: str

    def predict(self, items: list[Item]) -> list[Any]:
        """The nearest pool item's answer for each item."""
        similarity = self.vectorize([i.text(self.field) for i in items]) @ self.pool_vectors.T
        best = np.asarray(np.argmax(similarity.toarray() if hasattr(similarity, "toarray") else similarity, axis=1))
        return [self.answers[int(b)] for b in best.ravel()]


def train_tfidf_retrieval(spec: TaskSpec, pool: list[Item], progress: StageCallback | None = None) -> Fitted:
    """TF-IDF nearest neighbour's answer."""
    vectorizer = _sklearn("feature_extraction.text").TfidfVectorizer(sublinear_tf=True)
    vectorizer.fit([i.text(spec.data.input) for i in pool])
    vectors = vectorizer.transform([i.text(spec.data.input) for i in pool])
    return NearestAnswer(vectorizer.transform, vectors, [i.expected for i in pool], spec.data.input)


def train_minilm_retrieval(spec: TaskSpec, pool: list[Item], progress: StageCallback | None = None) -> Fitted:
    """MiniLM nearest neighbour's answer."""
    vectorize = partial(embed, progress=progress)
    return NearestAnswer(vectorize, vectorize([i.text(spec.data.input) for i in pool]), [i.expected for i in pool],
                         spec.data.input)


# The baselines of each shape of answer a task kind gives (`TaskKind.answers` in task/kinds.py).
BASELINES_BY_ANSWER: Mapping[str, list[Baseline]] = {
    "label": [Baseline("tfidf+logreg", train_tfidf_classifier),
              Baseline("minilm+logreg", train_minilm_classifier)],
    "entities": [Baseline("word-features+logreg", train_feature_tagger),
                 Baseline("minilm-tokens+logreg", train_minilm_tagger)],
    "text": [Baseline("tfidf-nearest-answer", train_tfidf_retrieval),
             Baseline("minilm-nearest-answer", train_minilm_retrieval)],
}
