"""The public Python API: the README's "Python API" code blocks run as written, typed rows, the scripted
provider, and `llmbus.open()` / `get_model()` as context managers."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

import llmbus
from conftest import ROOT, write_items, write_spec
from llmbus.testing import ScriptedProvider
from openai_stub import StubServer


def readme_python_blocks() -> list[str]:
    """The ```python blocks of the README's "Python API" section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_python_api_section_runs_as_written(monkeypatch: pytest.MonkeyPatch):
    blocks = readme_python_blocks()
    assert len(blocks) == 3
    monkeypatch.chdir(ROOT)
    with StubServer() as backend:
        monkeypatch.setenv("OPENAI_BASE_URL", backend.base_url)
        namespace: dict[str, Any] = {}
        exec(compile(blocks[0], "README.md", "exec"), namespace)
        run = namespace["run"]
        assert isinstance(run, llmbus.Run) and run.status == "done" and run.n_planned == 40
        assert backend.state.bodies[-1]["messages"][0]["role"] == "system"  # the chat spec's system turn
        exec(compile(blocks[1], "README.md", "exec"), namespace)
        assert isinstance(namespace["answer"], llmbus.Completion) and namespace["answer"].text in ("spam", "ham")
        assert backend.state.bodies[-1]["messages"] == [{"role": "user", "content": "Say hello"}]
        exec(compile(blocks[2], "README.md", "exec"), namespace)
        assert namespace["run"].model == "scripted:test" and namespace["run"].n_planned == 20


def test_typed_rows_and_the_scripted_provider(tmp_path: Path):
    write_items(tmp_path / "items.jsonl", 30)
    task = llmbus.load_task(write_spec(tmp_path / "t.yaml", "items.jsonl"))
    fake = ScriptedProvider(["spam", "ham"])
    with llmbus.open(str(tmp_path / "api.db")) as project:
        run = project.run(task, "scripted:test", llmbus.RunOptions(limit=10, concurrency=1), provider=fake)
        calls = list(project.calls(run))
        assert [r.id for r in project.runs()] == [run.id] and project.get_run(run.id[:5]) == run
        report = project.evaluate(run)
    assert run.task == "tiny" and run.model == "scripted:test" and run.spec["name"] == "tiny"
    assert len(calls) == 10 and all(isinstance(c, llmbus.Call) for c in calls)
    assert [c.parsed for c in calls][:3] == ["spam", "ham", "ham"]  # in order, then the last answer again
    assert calls[0].label_probs == {"ham": 0.0, "spam": 1.0} and calls[0].confidence == 1.0
    assert len(fake.requests) == 10 and fake.requests[0].labels == ("ham", "spam")
    assert report.n == 10
    with pytest.raises(ValueError, match="at least one answer"):
        ScriptedProvider([])


def test_public_names_are_curated():
    for name in ("open", "load_task", "get_model", "Project", "Run", "Call", "Request", "Completion",
                 "RunOptions", "LlmbusError"):
        assert name in llmbus.__all__ and getattr(llmbus, name) is not None
    with pytest.raises(AttributeError):
        _ = llmbus.not_a_name  # type: ignore[attr-defined]


# `from llmbus.x import ...` / `import llmbus.x` at the start of a line (in code or in a script held in a string)
INTERNAL_IMPORT = re.compile(r"^\s*(from\s+llmbus\.[\w.]+\s+import\b|import\s+llmbus\.[\w.]+)", re.MULTILINE)


def internal_imports(text: str) -> list[str]:
    """The lines of a Python file that import a module inside llmbus rather than the top-level package."""
    return [m.group(0).strip() for m in INTERNAL_IMPORT.finditer(text)]


def test_the_internal_import_check_catches_both_forms():
    code = "import llmbus\nfrom llmbus import Store\nfrom llmbus.store import Store\n    import llmbus.cli\n"
    assert internal_imports(code) == ["from llmbus.store import", "import llmbus.cli"]


def test_examples_and_benchmarks_import_only_from_llmbus():
    """What examples/ and bench/ use is the public API: every name comes from `llmbus` itself, so a user reading
    them learns names that stay, and a module moving inside the package never breaks them."""
    files = sorted([*(ROOT / "examples").rglob("*.py"), *(ROOT / "bench").glob("*.py")])
    assert len(files) > 10
    found = {str(f.relative_to(ROOT)): hits for f in files if (hits := internal_imports(f.read_text("utf-8")))}
    assert found == {}
    used = {name for f in files for name in public_names_used(f.read_text("utf-8"))}
    assert used and used <= set(llmbus.__all__), f"used but not exported: {sorted(used - set(llmbus.__all__))}"


def public_names_used(code: str) -> set[str]:
    """The names a file takes from `llmbus`: `from llmbus import NAME` and `llmbus.NAME`."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module == "llmbus":
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "llmbus":
            names.add(node.attr)
    return names
