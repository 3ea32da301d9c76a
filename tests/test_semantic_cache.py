"""Semantic cache: paraphrases hit, negations never do, and the threshold is chosen on validation pairs."""

from conftest import SMS_TASK
from llmbus.run.cache import SemanticCache, choose_threshold, negate, negation_signature, validation_pairs
from llmbus.task.data import load_items, split_items
from llmbus.task.spec import load_spec


def test_paraphrase_hits_and_negation_misses():
    cache = SemanticCache(threshold=0.9)
    cache.add("faq", "Is the store open on Sunday?", {"text": "yes"})
    hit = cache.lookup("faq", "is the store open on sunday")
    assert hit is not None and hit[0] == {"text": "yes"} and hit[1] > 0.9
    assert cache.lookup("faq", "Is the store not open on Sunday?") is None
    assert cache.lookup("other-task", "Is the store open on Sunday?") is None  # scoped per model/task


def test_negation_helpers():
    assert negate("Is the store open?") == "Is not the store open?"
    assert negation_signature("I can't come, not today") == 2


def test_threshold_chosen_on_sms_validation_pairs_bounds_false_hits():
    spec = load_spec(SMS_TASK)
    pool = split_items(spec, load_items(spec)).pool
    positives, negatives = validation_pairs([i.text("text") for i in pool], [i.expected for i in pool], n=120)
    choice = choose_threshold(positives, negatives, max_false_hit_rate=0.01)
    assert choice.false_hit_rate <= 0.01
    assert choice.hit_rate >= 0.5  # casing/punctuation/filler noise still hits
    assert choice.false_hit_rate_without_guard >= choice.false_hit_rate


def _unit(seed: int, dim: int = 8):
    import numpy as np

    vector = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def test_the_index_is_a_ring_that_keeps_the_newest_entries_without_copying_on_each_add():
    cache = SemanticCache(threshold=0.99, max_entries=300)
    for i in range(700):
        cache.add("s", f"text {i}", {"i": i}, _unit(i))
    ring = cache._rings["s"]
    assert ring.vectors.shape == (300, 8) and len(ring.entries) == 300  # grew 256 → 300, then wrapped
    hit = cache.lookup("s", "text 699", _unit(699))
    assert hit is not None and hit[0] == {"i": 699} and hit[1] > 0.999
    assert cache.lookup("s", "text 399", _unit(399)) is None  # overwritten: only the newest 300 are kept
    assert cache.lookup("s", "text 400", _unit(400))[0] == {"i": 400}


def test_entries_are_saved_in_the_store_and_loaded_by_a_new_cache(store):
    from llmbus.store.gateway_state import SemanticEntries

    first = SemanticCache(threshold=0.99, max_entries=5, saved=SemanticEntries(store.engine))
    for i in range(7):
        first.add("chat:m:16:0.0", f"text {i}", {"text": f"answer {i}"}, _unit(i))
    first.add("other:m:16:0.0", "elsewhere", {"text": "x"}, _unit(99))
    second = SemanticCache(threshold=0.99, max_entries=5, saved=SemanticEntries(store.engine))
    assert second.load(["chat:"]) == 5  # the newest five of the scope; other served models' scopes not read
    assert second.lookup("chat:m:16:0.0", "text 6", _unit(6))[0] == {"text": "answer 6"}
    assert second.lookup("chat:m:16:0.0", "text 1", _unit(1)) is None
    assert second.lookup("other:m:16:0.0", "elsewhere", _unit(99)) is None
