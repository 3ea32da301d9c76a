"""Active learning on real packaged data: labels needed to reach 95% of the full-data macro-F1, uncertainty
sampling vs random sampling (the baseline, measured in the same run), averaged over 5 seeds.

SMS spam (UCI, 4.8k messages): a logistic head on MiniLM embeddings, the same head llmbus uses for
`label select --strategy uncertainty`. Twitter NER (WNUT-16 style): sentences are selected for labeling and a
token tagger (logistic regression over word-shape features) is trained on them; the metric is macro-F1 over the
entity tags. Prints the label counts and the ratio, and plots learning curves to bench/out/active_learning.png.

    .venv/bin/python bench/active_learning.py [--seeds 5] [--batch 10]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from llmbus import head_probs, load_items, load_task, uncertainty_order

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"

# A learner: (labeled indices) → (score on the test set, class probabilities for every pool item).
Learner = Callable[[list[int]], tuple[float, np.ndarray]]


def simulate(learner: Learner, pool_size: int, target: float, strategy: str, seed: int, start: int, batch: int,
             budget: int, first: Callable[[np.random.Generator], list[int]]) -> tuple[int, list[tuple[int, float]]]:
    """Label batches until the learner reaches `target`; returns labels used and the learning curve."""
    rng = np.random.default_rng(seed)
    labeled = first(rng)[:start]
    curve = []
    while True:
        score, probs = learner(labeled)
        curve.append((len(labeled), score))
        if score >= target or len(labeled) >= budget:
            return len(labeled), curve
        taken = set(labeled)
        if strategy == "uncertainty":
            order = [int(i) for i in uncertainty_order(probs) if int(i) not in taken]
        else:
            order = [int(i) for i in rng.permutation(pool_size) if int(i) not in taken]
        labeled = labeled + order[:batch]


def sms_task(seed_split: int = 0) -> tuple[Learner, int, float, Callable[[np.random.Generator], list[int]]]:
    """SMS spam: MiniLM embeddings + logistic head; returns (learner, pool size, full-data F1, first picks)."""
    from sklearn.metrics import f1_score

    from llmbus import embed_texts

    spec = load_task(ROOT / "examples" / "sms_spam" / "task.yaml")
    items = load_items(spec)
    cache = OUT / "sms_minilm.npy"
    if cache.is_file() and len(np.load(cache)) == len(items):
        vectors = np.load(cache)
    else:
        vectors = embed_texts([i.text("text") for i in items])
        np.save(cache, vectors)
    labels = np.array([str(i.expected) for i in items])
    order = np.random.default_rng(seed_split).permutation(len(items))
    test, pool = order[: len(items) * 3 // 10], order[len(items) * 3 // 10:]

    def learner(idx: list[int]) -> tuple[float, np.ndarray]:
        x = vectors[pool[idx]]
        y = list(labels[pool[idx]])
        probs, classes = head_probs(x, y, np.vstack([vectors[test], vectors[pool]]))
        predicted = np.array(classes)[probs[: len(test)].argmax(axis=1)]
        return float(f1_score(labels[test], predicted, average="macro")), probs[len(test):]

    def first(rng: np.random.Generator) -> list[int]:
        # A seed set with both classes (a classifier needs two): one of each, then random.
        spam, ham = np.flatnonzero(labels[pool] == "spam"), np.flatnonzero(labels[pool] == "ham")
        rest = [int(i) for i in rng.permutation(len(pool))]
        return [int(rng.choice(spam)), int(rng.choice(ham)), *rest]

    full, _ = learner(list(range(len(pool))))
    return learner, len(pool), full, first


def ner_task(seed_split: int = 0) -> tuple[Learner, int, float, Callable[[np.random.Generator], list[int]]]:
    """Twitter NER: sentence selection, a token tagger on word features; macro-F1 over entity tags."""
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import f1_score

    spec = load_task(ROOT / "examples" / "twitter_ner" / "task.yaml")
    items = load_items(spec)
    sentences = [(list(i.fields["tokens"]), list(i.fields["tags"])) for i in items]
    vectorizer = DictVectorizer()
    feats = vectorizer.fit_transform([_token_features(tokens, k) for tokens, _ in sentences
                                      for k in range(len(tokens))])
    offsets = np.cumsum([0] + [len(t) for t, _ in sentences])
    tags = np.array([tag for _, seq in sentences for tag in seq])
    entity_tags = sorted({t for t in tags if t != "O"})
    order = np.random.default_rng(seed_split).permutation(len(sentences))
    test, pool = order[: len(sentences) * 3 // 10], order[len(sentences) * 3 // 10:]
    rows = lambda ids: np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in ids])  # noqa: E731
    test_rows, pool_rows = rows(test), rows(pool)
    pool_starts = np.cumsum([0] + [offsets[s + 1] - offsets[s] for s in pool])

    def learner(idx: list[int]) -> tuple[float, np.ndarray]:
        train_rows = rows(pool[idx])
        # A linear log-loss tagger by SGD: seconds per refit where lbfgs logistic regression took ten.
        model = SGDClassifier(loss="log_loss", alpha=1e-5, max_iter=20, tol=None, random_state=0)
        model.fit(feats[train_rows], tags[train_rows])
        score = float(f1_score(tags[test_rows], model.predict(feats[test_rows]), labels=entity_tags,
                               average="macro", zero_division=0))
        top = np.sort(model.predict_proba(feats[pool_rows]), axis=1)
        token_margin = top[:, -1] - top[:, -2] if top.shape[1] > 1 else np.ones(len(top))
        # A sentence is as uncertain as its least certain token: min margin → one row per pool sentence.
        sentence_margin = np.minimum.reduceat(token_margin, pool_starts[:-1])
        return score, np.column_stack([(1 + sentence_margin) / 2, (1 - sentence_margin) / 2])

    def first(rng: np.random.Generator) -> list[int]:
        return [int(i) for i in rng.permutation(len(pool))]

    full, _ = learner(list(range(len(pool))))
    return learner, len(pool), full, first


def _token_features(tokens: list[str], k: int) -> dict[str, object]:
    word = tokens[k]
    out: dict[str, object] = {"w": word.lower(), "suf3": word[-3:].lower(), "pre3": word[:3].lower(),
                              "title": word.istitle(), "upper": word.isupper(), "digit": word.isdigit(),
                              "at": word.startswith("@"), "hash": word.startswith("#"), "first": k == 0}
    out["prev"] = tokens[k - 1].lower() if k else "<s>"
    out["next"] = tokens[k + 1].lower() if k + 1 < len(tokens) else "</s>"
    out["prev_title"] = tokens[k - 1].istitle() if k else False
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--tasks", default="sms,ner")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # (title, task, seed labels, labels per batch, budget)
    tasks = {"sms": ("SMS spam", sms_task, 20, args.batch, 2000), "ner": ("Twitter NER", ner_task, 50, 25, 1676)}
    chosen = [t for t in args.tasks.split(",") if t in tasks]
    fig, axes = plt.subplots(1, len(chosen), figsize=(6 * len(chosen), 4), squeeze=False)
    for ax, key in zip(axes[0], chosen, strict=True):
        title, make, start, batch, budget = tasks[key]
        tick = time.perf_counter()
        learner, pool_size, full, first = make()
        target = 0.95 * full
        print(f"{title}: pool {pool_size}, full-data macro-F1 {full:.4f}, target (95%) {target:.4f}")
        needed: dict[str, list[int]] = {"uncertainty": [], "random": []}
        for strategy, color in (("random", "tab:gray"), ("uncertainty", "tab:blue")):
            for seed in range(args.seeds):
                n, curve = simulate(learner, pool_size, target, strategy, seed, start, batch, budget, first)
                needed[strategy].append(n)
                xs, ys = zip(*curve, strict=True)
                ax.plot(xs, ys, color=color, alpha=0.5, label=strategy if seed == 0 else None)
            print(f"  {strategy:12s} labels to target: mean {np.mean(needed[strategy]):7.1f}  "
                  f"per seed {needed[strategy]}")
        ratio = np.mean(needed["uncertainty"]) / np.mean(needed["random"])
        print(f"  ratio uncertainty / random = {ratio:.3f}  (target ≤ 0.5)   [{time.perf_counter() - tick:.0f} s]")
        ax.axhline(target, color="tab:red", linestyle="--", label="95% of full-data F1")
        ax.set(title=f"{title}: uncertainty/random = {ratio:.2f}", xlabel="labels", ylabel="macro-F1 (test)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "active_learning.png", dpi=120)
    print(f"plot: {OUT / 'active_learning.png'}")


if __name__ == "__main__":
    main()
