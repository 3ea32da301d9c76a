"""Stop 3: human labeling: projects, annotators, the queue, the web UI, import/export, agreement, active
learning."""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.table import Table

from llmbus.cli.app import DB_OPTION, JSON_OPTION, app, fmt, friendly_errors, out, plain, print_json

label_app = typer.Typer(no_args_is_help=True, help="Human labeling: projects, annotators, the web UI, export.")
app.add_typer(label_app, name="label")


@label_app.command("create")
@friendly_errors
def label_create(
    name: str = typer.Argument(..., help="Project name"),
    run_id: str = typer.Option(..., "--run", help="The run whose calls are labeled"),
    schema: str = typer.Option("labels", "--schema", help="labels | score (1–5) | text (free-text correction)"),
    labels: str | None = typer.Option(None, "--labels", help="Comma-separated labels, e.g. pass,fail"),
    correction: bool = typer.Option(False, "--correction", help="Also ask for an optional free-text correction"),
    instructions: str | None = typer.Option(None, "--instructions", help="Markdown file shown to annotators"),
    queue: int = typer.Option(0, "--queue", min=0, help="Queue the run's first N items now"),
    show_fields: str | None = typer.Option(None, "--show-fields", help="Item fields annotators see besides the "
                                           "answer, e.g. text,label; 'confidence' adds the model's (default: the "
                                           "input field only: no gold answer, no confidence)"),
    db: str | None = DB_OPTION,
) -> None:
    """Create a labeling project over a run's calls."""
    from pathlib import Path

    from llmbus.errors import DataError
    from llmbus.quality import label
    from llmbus.store import Store
    from llmbus.task.spec import read_utf8

    parsed = label.parse_schema(schema, labels, correction)
    text = ""
    if instructions:
        if not Path(instructions).is_file():
            raise DataError(f"{instructions}: instructions file not found")
        text = read_utf8(Path(instructions))
    with Store(db) as store:
        label.create_project(store, name, run_id, parsed, text, label.parse_show_fields(show_fields))
        added = label.enqueue(store, name, [(c["item_id"], 0.0) for c in _first(label.candidates(store, name), queue)],
                              "initial") if queue else 0
        shown = ", ".join(label.get_project(store, name)["show_fields"])
    out.print(f"project {name}: {parsed.kind} {', '.join(parsed.values)}; {added} items queued; annotators see "
              f"{shown} and the answer", highlight=False)


@label_app.command("show-fields")
@friendly_errors
def label_show_fields(
    fields: str | None = typer.Argument(None, help="Comma-separated item fields (and 'confidence') annotators see "
                                        "besides the answer; omit to go back to the default (the input field)"),
    project: str = typer.Option(..., "--project"),
    db: str | None = DB_OPTION,
) -> None:
    """Change what a project's annotators see (the gold answer and confidence only when listed)."""
    from llmbus.quality import label
    from llmbus.store import Store

    with Store(db) as store:
        label.set_show_fields(store, project, label.parse_show_fields(fields))
        shown = ", ".join(label.get_project(store, project)["show_fields"])
    out.print(f"project {project}: annotators see {shown} and the answer", highlight=False)


def _first(rows: Any, n: int) -> list[Any]:
    from itertools import islice

    return list(islice(rows, n))


@label_app.command("annotator")
@friendly_errors
def label_annotator(
    name: str = typer.Argument(..., help="Annotator name"),
    project: str = typer.Option(..., "--project"),
    db: str | None = DB_OPTION,
) -> None:
    """Add an annotator and print their sign-in token."""
    from llmbus.quality.label import add_annotator
    from llmbus.store import Store

    with Store(db) as store:
        token = add_annotator(store, project, name)
    sys.stdout.write(token + "\n")


@label_app.command("serve")
@friendly_errors
def label_serve(
    project: str = typer.Option(..., "--project"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    db: str | None = DB_OPTION,
) -> None:
    """Serve the labeling web UI."""
    from llmbus.store import Store
    from llmbus.web.label_web import serve

    out.print(f"labeling {project} on http://{host}:{port}/ (Ctrl-C to stop)", highlight=False)
    with Store(db) as store:
        serve(store, project, host, port)


@label_app.command("items")
@friendly_errors
def label_items_command(
    project: str = typer.Option(..., "--project"),
    unlabeled: bool = typer.Option(False, "--unlabeled", help="Only items nobody labeled yet"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """List a project's queued items: id, priority, how queued, labels so far, the answer and the fields
    annotators see (--json: every field, e.g. to write a `label import` file)."""
    from llmbus.quality.label import get_project, queued_items
    from llmbus.store import Store

    with Store(db) as store:
        items = queued_items(store, project, unlabeled=unlabeled)
        shown = [f for f in get_project(store, project)["show_fields"] if f != "confidence"]
    if as_json:
        print_json(items)
        return
    table = Table(title=f"project {plain(project)}: {len(items)} queued items" + (" nobody labeled" if unlabeled
                                                                                   else ""), title_justify="left")
    for column in ("item", "priority", "queued by", "labels", "answer", *shown):
        table.add_column(plain(column), justify="right" if column == "priority" else "left")
    for item in items:
        labels = ", ".join(f"{who}: {value}" for who, value in item["labels"].items())
        table.add_row(plain(item["item_id"]), fmt(item["priority"], ".3g"), item["strategy"], plain(labels or "–"),
                      _cell(item["answer"]), *(_cell(item["fields"].get(f, "")) for f in shown))
    out.print(table)


def _cell(value: Any, width: int = 60) -> str:
    text = " ".join(str(value).split())
    return plain(text if len(text) <= width else text[: width - 1] + "…")


@label_app.command("import")
@friendly_errors
def label_import(
    path: str = typer.Argument(..., help='JSONL: {"item_id": …, "label": …, "correction": …} per line'),
    project: str = typer.Option(..., "--project"),
    annotator: str = typer.Option(..., "--annotator", help="Whose labels these are"),
    db: str | None = DB_OPTION,
) -> None:
    """Import labels (all lines are checked before any is written)."""
    from llmbus.project import Project

    with Project(db) as call_log:
        n = call_log.import_labels(project, path, annotator)
    out.print(f"imported {n} labels into {project} as {annotator}", highlight=False)


@label_app.command("export")
@friendly_errors
def label_export(
    project: str = typer.Option(..., "--project"),
    output: str | None = typer.Option(None, "--out", "-o", help="File to write (default stdout)"),
    db: str | None = DB_OPTION,
) -> None:
    """Export a project's labels as JSONL."""
    from llmbus.quality.label import export_jsonl
    from llmbus.store import Store

    with Store(db) as store:
        lines = export_jsonl(store, project)  # read as written: keep the store open until the last line
        if output:
            with open(output, "w", encoding="utf-8") as handle:
                handle.writelines(lines)
        else:
            sys.stdout.writelines(lines)


@label_app.command("agreement")
@friendly_errors
def label_agreement(
    project: str = typer.Option(..., "--project"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Inter-annotator agreement: Cohen's kappa per pair, Fleiss' kappa overall."""
    from llmbus.quality.label import agreement
    from llmbus.store import Store

    with Store(db) as store:
        stats = agreement(store, project)
    if as_json:
        print_json(stats.as_dict())
        return
    for pair, kappa in stats.cohen.items():
        out.print(f"Cohen's kappa {pair.replace('|', ' · ')}: {fmt(kappa)}", highlight=False)
    out.print(f"Fleiss' kappa over {stats.items_multi} items with 2+ labels: {fmt(stats.fleiss)}", highlight=False)


@label_app.command("select")
@friendly_errors
def label_select(
    project: str = typer.Option(..., "--project"),
    strategy: str = typer.Option("uncertainty", "--strategy", help="uncertainty | disagreement | diversity | random"),
    n: int = typer.Option(50, "--n", min=1, help="How many items to queue"),
    judge_run: str | None = typer.Option(None, "--judge-run", help="disagreement: an LLM judge run on the same run"),
    seed: int = typer.Option(0, "--seed"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Active learning: choose the next items to label and put them into the project's queue."""
    from llmbus.quality.active import select
    from llmbus.store import Store

    with Store(db) as store:
        chosen = select(store, project, strategy, n, judge_run=judge_run, seed=seed)
    if as_json:
        print_json([{"item_id": i, "priority": p} for i, p in chosen])
        return
    out.print(f"queued {len(chosen)} items by {strategy}: " + ", ".join(i for i, _ in chosen[:20])
              + (" …" if len(chosen) > 20 else ""), highlight=False)
