"""Retrieval: chunking, BM25, hybrid MiniLM + BM25 search, the index stored once, sources on the step row."""

from __future__ import annotations

import numpy as np

from llmbus.flows.engine import FlowContext, flow, start
from llmbus.flows.log import FlowLog
from llmbus.flows.retrieval import BM25, Doc, build_index, chunk
from llmbus.store import Store

DOCS = [
    Doc("net", "My internet is not working.\nRestart your router and check if the cables are connected properly."),
    Doc("pwd", "I forgot my password.\nUse the password reset option or contact your admin."),
    Doc("heat", "My system is overheating.\nEnsure air vents aren't blocked and clean any dust."),
    Doc("err", "Error E1234 on boot.\nReseat the memory modules and reset the BIOS to defaults."),
]


def test_chunks_keep_whole_sentences_with_overlap():
    doc = Doc("long", " ".join(f"Sentence number {i} says something useful." for i in range(40)))
    chunks = chunk(doc, max_words=30, overlap=8)
    assert len(chunks) > 5
    assert all(len(c.split()) <= 30 for c in chunks)
    assert all(c.endswith(".") for c in chunks)
    assert chunks[0].split(".")[-2].strip() in chunks[1]  # the last sentence carries over


def test_bm25_prefers_exact_terms():
    bm25 = BM25([d.text for d in DOCS])
    scores = bm25.scores("what does E1234 mean")
    assert int(np.argmax(scores)) == 3 and scores[0] == 0


def test_hybrid_search_finds_paraphrases_and_codes(store: Store):
    index = build_index(store, "faq", DOCS)
    assert index.search("the wifi connection is down", k=1)[0].doc == "net"  # paraphrase: dense side
    assert index.search("E1234", k=1)[0].doc == "err"  # rare code: BM25 side
    assert index.search("my laptop gets too hot", k=1, mode="dense")[0].doc == "heat"


def test_index_is_stored_once_and_reloaded(store: Store, monkeypatch):
    first = build_index(store, "faq", DOCS)
    import llmbus.flows.retrieval as retrieval

    def no_embedding(texts):  # a second build must load the stored vectors, embedding only the query
        assert len(texts) == 1
        return first.vectors[:1]

    monkeypatch.setattr(retrieval, "embed", no_embedding)
    again = build_index(store, "faq", DOCS)
    assert again.corpus == first.corpus and np.array_equal(again.vectors, first.vectors)
    changed = [*DOCS[:3], Doc("err", "changed text")]
    monkeypatch.undo()
    assert build_index(store, "faq", changed).corpus != first.corpus


def test_retrieved_sources_are_kept_on_the_step_record(store: Store):
    index = build_index(store, "faq", DOCS)

    @flow("lookup")
    def lookup(ctx: FlowContext, value: dict) -> list[str]:
        return [s.doc for s in ctx.retrieve("find", index, value["q"], k=2)]

    outcome = start(store, lookup, {"q": "reset my password"})
    assert outcome.output[0] == "pwd"
    step = FlowLog(store).get_step(outcome.run_id, "find")
    assert step["kind"] == "retrieval" and step["input"] == {"query": "reset my password", "k": 2}
    assert step["output"][0]["doc"] == "pwd" and "password reset" in step["output"][0]["text"]
