"""Every table of the one store: the call log (runs, calls, cache, key spend), stop 3's judge runs, verdicts
and labeling projects, and stop 4's flow runs, steps, review items, example pool and document chunks.

Tables change only through `migrations.MIGRATIONS`; a column added by a later migration says so here.
A judge run is an ordinary row of `runs` (its calls are the judge's own model calls); `judge_runs` says
what it judged. A flow step row is written before the next step runs, keyed by (flow run, step key).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("task", sa.String(200), nullable=False, index=True),
    sa.Column("task_path", sa.Text),
    sa.Column("spec_version", sa.String(32), nullable=False),
    sa.Column("spec_json", sa.Text, nullable=False),
    sa.Column("model", sa.String(400), nullable=False),
    sa.Column("metric", sa.String(40), nullable=False),
    sa.Column("n_planned", sa.Integer, nullable=False),
    sa.Column("concurrency", sa.Integer, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # running | done | interrupted
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("wall_s", sa.Float, nullable=False, default=0.0),  # summed over resumed sessions
    sa.Column("item_offset", sa.Integer, default=0),  # added by 005: eval items skipped (--offset)
    # added by 006: how eval items were ordered before offset/limit (representative | balanced | file)
    sa.Column("sampling", sa.String(20)),
    sa.Column("tag", sa.String(100)),  # added by 013: what made the run (optimize:ID), else NULL
    # added by 015: the model's price when the run started (providers/prices.py Price as JSON; NULL before 015)
    sa.Column("price_json", sa.Text),
)

calls = sa.Table(
    "calls", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("task", sa.String(200), nullable=False),
    sa.Column("spec_version", sa.String(32), nullable=False),
    sa.Column("item_id", sa.String(200), nullable=False),
    sa.Column("model", sa.String(400), nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("raw_output", sa.Text),
    sa.Column("parsed_json", sa.Text),
    sa.Column("confidence", sa.Float),
    sa.Column("label_probs_json", sa.Text),
    sa.Column("expected_json", sa.Text),
    sa.Column("score", sa.Float),  # this item's metric contribution (1/0 for accuracy), None on error
    sa.Column("tokens_in", sa.Integer, nullable=False, default=0),
    sa.Column("tokens_out", sa.Integer, nullable=False, default=0),
    sa.Column("latency_s", sa.Float, nullable=False, default=0.0),
    sa.Column("cost_usd", sa.Float, nullable=False, default=0.0),
    sa.Column("cpu_s", sa.Float),
    sa.Column("cache_hit", sa.Boolean, nullable=False, default=False),
    sa.Column("error_kind", sa.String(40)),
    sa.Column("error", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("meta_json", sa.Text),  # added by 004: routing decisions (cascade, cache kind, fallback)
    # added by 014: the conversation as sent (chat turns; NULL for a plain one-text prompt), the answer's tool
    # calls and a reasoning model's reasoning text
    sa.Column("messages_json", sa.Text),
    sa.Column("tool_calls_json", sa.Text),
    sa.Column("reasoning", sa.Text),
    # added by 015: of tokens_in, those read from the backend's prompt cache; of tokens_out, reasoning tokens
    sa.Column("tokens_cached", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("tokens_reasoning", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.UniqueConstraint("run_id", "item_id", name="uq_calls_run_item"),
)

cache = sa.Table(
    "cache", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(400), nullable=False),
    sa.Column("completion_json", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

key_spend = sa.Table(
    "key_spend", metadata,  # added by 008: the gateway's spend per API key, kept with each logged call
    sa.Column("key_name", sa.String(200), primary_key=True),
    sa.Column("cost_usd", sa.Float, nullable=False, default=0.0),
    sa.Column("calls", sa.Integer, nullable=False, default=0),
)

embeddings = sa.Table(
    "embeddings", metadata,  # added by 009: sentence vectors keyed by (embedding model, sha256 of the text)
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("text_sha256", sa.String(64), primary_key=True),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),  # float32, native little-endian bytes
)

migrations_table = sa.Table(
    "migrations", metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)


# Defined once: an Index built inside the migration attached itself to `calls` again on every new database,
# so the third fresh store in one process issued CREATE INDEX twice.
ix_calls_task_item = sa.Index("ix_calls_task_item", calls.c.task, calls.c.item_id)
ix_runs_tag = sa.Index("ix_runs_tag", runs.c.tag)  # added by 013


# Stop 3: judges and labeling (created by 002_quality).
judge_runs = sa.Table(
    "judge_runs", metadata,
    sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), primary_key=True),  # the judge's own run
    sa.Column("mode", sa.String(20), nullable=False),  # pointwise | pairwise
    sa.Column("target_run_id", sa.String(32), sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("other_run_id", sa.String(32), sa.ForeignKey("runs.id")),  # pairwise: run B
    sa.Column("labels_json", sa.Text, nullable=False),
    sa.Column("positive", sa.String(100)),  # the verdict that means "pass" (calibration's positive class)
)

verdicts = sa.Table(
    "verdicts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("judge_run_id", sa.String(32), sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("item_id", sa.String(200), nullable=False),
    sa.Column("call_id", sa.Integer, sa.ForeignKey("calls.id")),  # the judged call (run A's for pairwise)
    sa.Column("other_call_id", sa.Integer, sa.ForeignKey("calls.id")),  # pairwise: run B's call
    sa.Column("judge_call_ids", sa.Text),  # JSON list of the judge's own calls (two for pairwise: both orders)
    sa.Column("verdict", sa.String(100)),  # a label, or for pairwise A | B | tie; None when the judge broke
    sa.Column("score", sa.Float),  # pass 1 / fail 0, expected 1–5 score, or pairwise +1 B, -1 A, 0 tie
    sa.Column("confidence", sa.Float),
    sa.Column("probs_json", sa.Text),
    sa.Column("consistent", sa.Boolean),  # pairwise: both orders named the same winner
    sa.Column("error_kind", sa.String(40)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("judge_run_id", "item_id", name="uq_verdicts_run_item"),
)

label_projects = sa.Table(
    "label_projects", metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), nullable=False),  # candidates: its calls
    sa.Column("instructions", sa.Text, nullable=False),  # markdown
    sa.Column("schema_json", sa.Text, nullable=False),  # {"kind": labels|score|text, "labels": [...]}
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # added by 007: JSON list of the item fields (and "confidence") annotators see; NULL: the input field only
    sa.Column("show_fields_json", sa.Text),
)

label_items = sa.Table(
    "label_items", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project", sa.String(200), sa.ForeignKey("label_projects.name"), nullable=False),
    sa.Column("item_id", sa.String(200), nullable=False),
    sa.Column("call_id", sa.Integer, sa.ForeignKey("calls.id")),
    sa.Column("fields_json", sa.Text, nullable=False),  # item fields + answer + expected; shown per show_fields
    sa.Column("priority", sa.Float, nullable=False, default=0.0),  # higher first
    sa.Column("strategy", sa.String(40), nullable=False),  # how it entered the queue
    sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("project", "item_id", name="uq_label_items_project_item"),
)

annotators = sa.Table(
    "annotators", metadata,
    sa.Column("token", sa.String(64), primary_key=True),
    sa.Column("project", sa.String(200), sa.ForeignKey("label_projects.name"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("project", "name", name="uq_annotators_project_name"),
)

labels = sa.Table(
    "labels", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project", sa.String(200), sa.ForeignKey("label_projects.name"), nullable=False),
    sa.Column("item_id", sa.String(200), nullable=False),
    sa.Column("call_id", sa.Integer, sa.ForeignKey("calls.id")),
    sa.Column("annotator", sa.String(200), nullable=False),
    sa.Column("value", sa.String(200)),  # a label or "1".."5"; None when skipped
    sa.Column("correction", sa.Text),  # free-text correction of the answer
    sa.Column("skipped", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("project", "item_id", "annotator", name="uq_labels_project_item_annotator"),
)


# Stop 4: flows (created by 003_flows).
flow_runs = sa.Table(
    "flow_runs", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("flow", sa.String(200), nullable=False, index=True),
    sa.Column("flow_path", sa.Text, nullable=False),
    sa.Column("input_json", sa.Text, nullable=False),
    sa.Column("settings_json", sa.Text, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # running | waiting_review | done | failed | interrupted
    sa.Column("output_json", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("lease_owner", sa.String(200)),  # host:pid of the process executing it
    sa.Column("lease_until", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

flow_steps = sa.Table(
    "flow_steps", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("flow_run_id", sa.String(32), sa.ForeignKey("flow_runs.id"), nullable=False),
    sa.Column("key", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),  # llm | retrieval | tool | guardrail | review | agent
    sa.Column("status", sa.String(20), nullable=False),  # done | failed | waiting
    sa.Column("input_json", sa.Text),
    sa.Column("output_json", sa.Text),
    sa.Column("detail_json", sa.Text),  # prompt, model, sources, verdict reasons, tool calls…
    sa.Column("error_kind", sa.String(40)),
    sa.Column("error", sa.Text),
    sa.Column("model", sa.String(400)),
    sa.Column("tokens_in", sa.Integer, nullable=False, default=0),
    sa.Column("tokens_out", sa.Integer, nullable=False, default=0),
    sa.Column("cost_usd", sa.Float, nullable=False, default=0.0),
    sa.Column("latency_s", sa.Float, nullable=False, default=0.0),
    sa.Column("attempts", sa.Integer, nullable=False, default=1),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    # added by 010: the step's row in `calls` (llm and task steps). No foreign key: a retried call replaces
    # its row, and the step then points at the new one.
    sa.Column("call_id", sa.Integer),
    sa.UniqueConstraint("flow_run_id", "key", name="uq_flow_steps_run_key"),
)

review_items = sa.Table(
    "review_items", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("flow_run_id", sa.String(32), sa.ForeignKey("flow_runs.id"), nullable=False),
    sa.Column("step_key", sa.String(200), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # pending | approved | edited | rejected
    sa.Column("payload_json", sa.Text, nullable=False),  # input, sources, draft, reasons, answer schema
    sa.Column("claimed_by", sa.String(100)),
    sa.Column("claim_until", sa.DateTime(timezone=True)),
    sa.Column("answer", sa.Text),
    sa.Column("comment", sa.Text),
    sa.Column("decided_by", sa.String(100)),
    sa.Column("decided_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("flow_run_id", "step_key", name="uq_review_items_run_step"),
)

example_pool = sa.Table(
    "example_pool", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("pool", sa.String(200), nullable=False, index=True),
    sa.Column("input_text", sa.Text, nullable=False),
    sa.Column("answer", sa.Text, nullable=False),
    sa.Column("label", sa.String(100)),
    sa.Column("origin", sa.String(100), nullable=False),  # seed | review:<item id> | …
    sa.Column("vector", sa.LargeBinary, nullable=False),  # float32 unit-norm MiniLM embedding of input_text
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

doc_chunks = sa.Table(
    "doc_chunks", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("corpus", sa.String(200), nullable=False, index=True),  # name + content hash
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("doc", sa.String(400), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),
)

FLOW_TABLES = (flow_runs, flow_steps, review_items, example_pool, doc_chunks)

QUALITY_TABLES = (judge_runs, verdicts, label_projects, label_items, annotators, labels)


# Stop 3 on served traffic (created by 011_monitor): what `llmbus monitor` set up per served model, and every
# gateway call it considered, with the probability it was judged with (inverse-probability weights) and the
# probability it was sent to a human.
monitors = sa.Table(
    "monitors", metadata,
    sa.Column("served", sa.String(200), primary_key=True),  # the served model name (runs gateway:<served>)
    sa.Column("judge_path", sa.Text, nullable=False),
    sa.Column("judge_model", sa.String(400), nullable=False),
    sa.Column("positive", sa.String(100), nullable=False),  # the judge's pass verdict
    sa.Column("project", sa.String(200), sa.ForeignKey("label_projects.name"), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

monitor_calls = sa.Table(
    "monitor_calls", metadata,
    sa.Column("call_id", sa.Integer, sa.ForeignKey("calls.id"), primary_key=True),
    sa.Column("served", sa.String(200), nullable=False, index=True),
    sa.Column("uncertainty", sa.Float, nullable=False),  # 1 − the answer's confidence (1 without one)
    sa.Column("probability", sa.Float, nullable=False),  # P(judged)
    sa.Column("sampled", sa.Boolean, nullable=False),
    sa.Column("judge_run_id", sa.String(32), sa.ForeignKey("runs.id")),  # set once judged
    sa.Column("label_probability", sa.Float),  # P(sent to a human | judged); None until judged
    sa.Column("queued", sa.Boolean, nullable=False, default=False),
    sa.Column("considered_at", sa.DateTime(timezone=True), nullable=False),
)

MONITOR_TABLES = (monitors, monitor_calls)


# Canary releases in the gateway (created by 012_canary): every decision the guard took for a served model's
# candidate, with the window's figures per arm and the reason; the last one is the canary's state at startup.
canary_decisions = sa.Table(
    "canary_decisions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("served", sa.String(200), nullable=False, index=True),
    sa.Column("candidate", sa.String(400), nullable=False),
    sa.Column("incumbent", sa.String(400), nullable=False),
    sa.Column("decision", sa.String(20), nullable=False),  # promote | hold | rollback
    sa.Column("share_before", sa.Float, nullable=False),
    sa.Column("share", sa.Float, nullable=False),  # the candidate's share from now on (0 after a rollback)
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("figures_json", sa.Text, nullable=False),  # per arm: calls, errors, error rate, p95, judge pass rate
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
)


# The gateway's state shared by its processes (created by 016_gateway_state): each admitted request's budget
# hold until its cost is counted (it lapses at expires_at if its process dies first), each key's recent
# requests for its per-minute limit, and the semantic cache's entries (vector and answer), loaded at start.
# Times are Unix seconds (float): compared arithmetically, the same in SQLite and PostgreSQL.
key_holds = sa.Table(
    "key_holds", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("key_name", sa.String(200), nullable=False, index=True),
    sa.Column("amount_usd", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

key_requests = sa.Table(
    "key_requests", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key_name", sa.String(200), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Index("ix_key_requests_key_at", "key_name", "at"),
)

semantic_entries = sa.Table(
    "semantic_entries", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("scope", sa.String(400), nullable=False, index=True),  # served model:model:max_tokens:temperature
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),  # float32 little-endian, unit length
    sa.Column("answer_json", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

GATEWAY_STATE_TABLES = (key_holds, key_requests, semantic_entries)
