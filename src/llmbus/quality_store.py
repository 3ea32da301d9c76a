"""Stop 3's tables in the one store: judge runs and verdicts linked to the calls they judge, and labeling
projects with their queue, annotators and human labels (also linked to calls).

Created by the migration "002_quality" in `store.MIGRATIONS`. A judge run is an ordinary row of `runs` (its
calls are the judge's own model calls, logged like any run's); `judge_runs` says what it judged.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from llmbus.store import metadata

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


def create_quality_tables(conn: Connection) -> None:
    """Migration 002_quality: create the tables above."""
    for table in (judge_runs, verdicts, label_projects, label_items, annotators, labels):
        table.create(conn, checkfirst=True)
