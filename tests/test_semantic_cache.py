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
