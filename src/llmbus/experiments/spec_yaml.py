"""Write a changed task spec as plain YAML next to the input, keeping the input's text where nothing changed.

Only the top-level blocks that differ (prompt, output, fewshot; data when relative paths must be rewritten for
another folder) are replaced, so comments elsewhere survive and the unified diff shows just the changes.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import yaml

from llmbus.errors import SpecError
from llmbus.task.spec import TaskSpec, load_spec

SECTIONS = ("prompt", "messages", "output", "fewshot", "data")


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks (`|-`) and short lists inline, the way specs are written by hand."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.SequenceNode:
    flow = all(isinstance(v, str | int | float | bool) and "\n" not in str(v) for v in value)  # [ham, spam]
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


_BlockDumper.add_representer(str, _str)
_BlockDumper.add_representer(list, _list)


def changed_sections(original: TaskSpec, changed: TaskSpec, raw: dict[str, Any],
                     target_dir: Path) -> dict[str, Any]:
    """{top-level key: new value} for the blocks that differ, each starting from the input's own mapping."""
    out: dict[str, Any] = {}
    if changed.prompt != original.prompt:
        out["prompt"] = changed.prompt
    if changed.messages != original.messages:
        out["messages"] = [turn.model_dump(mode="json") for turn in changed.messages or []]
    for key in ("output", "fewshot"):
        new = getattr(changed, key).model_dump(mode="json", by_alias=True)
        old = getattr(original, key).model_dump(mode="json", by_alias=True)
        section = dict(raw.get(key) or {})
        for field, value in new.items():
            if value != old[field] and value is None:
                section.pop(field, None)  # a setting switched off
            elif value != old[field]:
                section[field] = value
        if new != old:
            out[key] = section
    for key, paths in _moved_paths(original, raw, target_dir).items():
        out[key] = {**out.get(key, raw.get(key) or {}), **paths}
    return out


def _moved_paths(spec: TaskSpec, raw: dict[str, Any], target_dir: Path) -> dict[str, dict[str, Any]]:
    """{block: {field: path}} for relative file paths rewritten to work from `target_dir` (another folder)."""
    if spec.source is None or target_dir.resolve() == spec.source.parent:
        return {}

    def moved(value: str) -> str:
        if value.startswith("package:") or Path(value).is_absolute():
            return value
        return os.path.relpath(spec.resolve(value), target_dir.resolve())

    out: dict[str, dict[str, Any]] = {}
    paths = (raw.get("data") or {}).get("path")
    new_paths = [moved(str(p)) for p in paths] if isinstance(paths, list) else moved(str(paths))
    if new_paths != paths:
        out["data"] = {"path": new_paths}
    pool = (raw.get("fewshot") or {}).get("pool")
    if isinstance(pool, str) and moved(pool) != pool:
        out["fewshot"] = {"pool": moved(pool)}
    return out


def rewrite(text: str, sections: dict[str, Any]) -> str:
    """The YAML text with each named top-level block replaced (or appended when the input lacks it)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    spans: dict[str, tuple[int, int]] = {}
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            spans[key.value] = (key.start_mark.index, value.end_mark.index)
    pieces = []
    cursor = 0
    appended = []
    for key, value in sorted(sections.items(), key=lambda kv: spans.get(kv[0], (len(text), 0))[0]):
        block = yaml.dump({key: value}, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=120)
        if key not in spans:
            appended.append(block)
            continue
        start, end = spans[key]
        end = _keep_trailing_comments(text, start, end)
        pieces += [text[cursor:start], block]
        cursor = end
    pieces.append(text[cursor:])
    out = "".join(pieces)
    if appended:
        out = out.rstrip("\n") + "\n" + "".join(appended)
    return out


def _keep_trailing_comments(text: str, start: int, end: int) -> int:
    """Where a replaced block really ends: before the blank and comment lines that belong to the next key."""
    lines = text[start:end].splitlines(keepends=True)
    while len(lines) > 1 and (not lines[-1].strip() or lines[-1].lstrip().startswith("#")):
        lines.pop()
    return start + sum(len(line) for line in lines)


def write_spec(original: TaskSpec, changed: TaskSpec, path: Path, header: str) -> tuple[str, str]:
    """Write `changed` as YAML at `path` (the input's text with the changed blocks replaced) and check that it
    loads back as the same spec; returns (the YAML, a unified diff against the input)."""
    assert original.source is not None
    text = original.source.read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    body = rewrite(text, changed_sections(original, changed, raw, path.parent))
    out = "".join(f"# {line}\n" for line in header.splitlines()) + body
    path.write_text(out, encoding="utf-8")
    loaded = load_spec(path)
    if loaded.version != changed.version or loaded.data.model_dump() != _data_as_written(changed, loaded):
        raise SpecError(f"{path}: the optimized spec did not read back as written (version {loaded.version}, "
                        f"expected {changed.version})")
    diff = "".join(difflib.unified_diff(text.splitlines(keepends=True), out.splitlines(keepends=True),
                                        fromfile=str(original.source), tofile=str(path)))
    return out, diff


def _data_as_written(changed: TaskSpec, loaded: TaskSpec) -> dict[str, Any]:
    """The data block we meant: the changed spec's, with the paths as the written file holds them."""
    return {**changed.data.model_dump(), "path": loaded.data.path}
