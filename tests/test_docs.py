"""The docs run as written and link to what exists.

Every ```` ```bash run ```` and ```` ```python run ```` block of README.md and docs/*.md is executed, page by page
in a fresh folder (after the README's first runnable block, which writes the five-minute path's sms.yaml and
sms.jsonl), against the OpenAI-compatible stub on 127.0.0.1 as `OPENAI_BASE_URL` (docs/README.md states the
rules). Each page then gets a check of what its blocks must have done, so a block that runs but does nothing
still fails (these start gateways and embed with MiniLM: marked slow, about a minute in all).

Fast checks of every page, runnable blocks or not: each relative link points at a file, and at a heading, that
exists; each `llmbus COMMAND [SUBCOMMAND] --option` written in a code block or inline code names a command that
`llmbus --help` lists, a subcommand of it and options it takes; each python block parses, each yaml block loads
and each bash block passes `bash -n`; the README's quick start is `make demo` and `make test`, and .ci/run runs
the latter.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT
from openai_stub import StubServer

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
BLOCK_TIMEOUT_S = 120  # a block's limit; the whole file takes well under a minute


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page: its language, whether it is marked `run`, its code."""

    page: Path
    line: int
    language: str
    runs: bool
    code: str

    @property
    def where(self) -> str:
        """PAGE:LINE of the opening fence."""
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The page's fenced blocks in order."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        words = match.group(1).split()
        found.append(Block(page, text.count("\n", 0, match.start()) + 1, words[0] if words else "",
                           "run" in words[1:], match.group(2)))
    return found


def runnable(page: Path) -> list[Block]:
    """The blocks of a page that the test executes."""
    return [block for block in blocks(page) if block.runs]


def name(page: Path) -> str:
    """A page's path in the repository (README.md and docs/README.md both exist)."""
    return str(page.relative_to(ROOT))


# --- running blocks -----------------------------------------------------------------------------------------------


@dataclass
class Backends:
    """The stub every block's OPENAI_BASE_URL points at, and two replicas (REPLICA_1, REPLICA_2)."""

    main: StubServer
    replica_1: StubServer
    replica_2: StubServer


@pytest.fixture
def backends() -> Iterator[Backends]:
    with StubServer() as main, StubServer() as replica_1, StubServer() as replica_2:
        yield Backends(main, replica_1, replica_2)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def environment(folder: Path, backends: Backends) -> dict[str, str]:
    """What docs/README.md promises a block: the stub as the endpoint, MODEL, PORT, the replicas; `llmbus` and
    `python3` on PATH are this interpreter (so this checkout's code runs), and the folder's own store and config."""
    shims = folder / ".bin"
    shims.mkdir()
    for command, target in (("llmbus", f'"{sys.executable}" -m llmbus.cli'), ("python3", f'"{sys.executable}"')):
        shim = shims / command
        shim.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        shim.chmod(0o755)
    env = {key: value for key, value in os.environ.items()
           if key not in ("LLMBUS_DB", "LLMBUS_CONFIG", "LLMBUS_OTEL") and not key.startswith("OTEL_")}
    env.update(OPENAI_BASE_URL=backends.main.base_url, OPENAI_API_KEY="sk-stub", MODEL="openai:gpt-4o-mini",
               PORT=str(free_port()), REPLICA_1=backends.replica_1.base_url, REPLICA_2=backends.replica_2.base_url,
               PATH=f"{shims}{os.pathsep}{env.get('PATH', '')}", LLMBUS_THREADS="1", NO_COLOR="1")
    return env


def execute(block: Block, folder: Path, env: dict[str, str]) -> str:
    """Run one block in `folder`; its output (stdout and stderr), or the test fails naming the block."""
    if block.language == "bash":
        command = ["bash", "-euo", "pipefail", "-c", block.code]
    else:
        script = folder / f".block_{block.line}.py"
        script.write_text(block.code)
        command = [sys.executable, str(script)]
    log = folder / f".block_{block.line}.log"
    with log.open("w") as out:
        # its own process group: a server the block started in the background is stopped with it
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            process.wait(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    output = log.read_text(errors="replace")
    assert process.returncode == 0, f"{block.where} exited {process.returncode}:\n{output[-4000:]}"
    assert "Traceback (most recent call last)" not in output, f"{block.where}:\n{output[-4000:]}"
    return output


# --- what each page's blocks must have done -------------------------------------------------------------------------


def gateway_calls(folder: Path) -> dict[str, int]:
    """Rows the gateway wrote to the folder's call log, by served model (`gateway:NAME` runs)."""
    with contextlib.closing(sqlite3.connect(folder / "llmbus.db")) as db:
        rows = db.execute("select task, count(*) from calls where task like 'gateway:%' group by task")
        return dict(rows.fetchall())


def readme(folder: Path, output: str, backends: Backends) -> None:
    systems = {body["messages"][0]["content"] for body in backends.main.state.bodies}
    assert systems == {"Is this SMS spam or ham? Answer with one word.",
                       "Is this SMS spam or ham? Answer with one word: spam (ads, prizes, scams) or ham (a personal "
                       "message)."}
    assert "[system]" in output and "95% CI" in output  # the dry run's turns; eval's intervals
    assert "paired bootstrap" in output and "McNemar" in output and "W/T/L" in output


def stop1(folder: Path, output: str, backends: Backends) -> None:
    assert "tfidf+logreg" in output and "minilm+logreg" in output and "openai:gpt-4o-mini (run" in output
    assert "break-even at 1M items a month" in output


def stop2(folder: Path, output: str, backends: Backends) -> None:
    assert "[system]" in output and "items every run answered" in output
    assert len(backends.main.state.bodies) == 10  # the sample of 4, then the other 6: the 4 were cached


def stop3(folder: Path, output: str, backends: Backends) -> None:
    suite = ET.parse(folder / "checks.xml").getroot().find("testsuite")
    assert suite is not None and int(suite.get("tests", "0")) > 0 and suite.get("failures") == "0"
    assert "gate assert:no_phone_number>=0.99" in output and "checks:cost_weighted" in output
    assert "queued 4 items by uncertainty" in output


def stop4(folder: Path, output: str, backends: Backends) -> None:
    assert "waiting_review" in output  # the stub says ham to the prize messages: a human decides them
    assert "edited done" in output  # the decision resumed the run to its end


def stop5(folder: Path, output: str, backends: Backends) -> None:
    answered = len(backends.main.state.bodies)
    assert answered == 10, answered  # the second run came from the cache
    assert "$/month" in output


def serving(folder: Path, output: str, backends: Backends) -> None:
    assert '"route":"backend"' in output and 'llmbus_gateway_requests_total{model="sms"' in output
    assert gateway_calls(folder) == {"gateway:sms": 1, "gateway:chat": 1}  # written before the gateway exited
    assert "sk-team-a-0001" not in output  # a key's secret is never printed


def production_loop(folder: Path, output: str, backends: Backends) -> None:
    assert gateway_calls(folder) == {"gateway:sms": 6}
    assert "accepted: the lower 95% bound" in output and "on 6 distinct logged inputs" in output


def scale(folder: Path, output: str, backends: Backends) -> None:
    assert backends.replica_1.requests > 0 and backends.replica_2.requests > 0 and backends.main.requests == 0


def providers(folder: Path, output: str, backends: Backends) -> None:
    assert "llmbus.yaml:" in output  # where openai:mine's price came from
    assert "keywords:v1: accuracy" in output


def telemetry(folder: Path, output: str, backends: Backends) -> None:
    assert "llmbus run sms" in output and "chat gpt-4o-mini" in output


CHECKS: dict[str, Callable[[Path, str, Backends], None]] = {
    "README.md": readme, "docs/stop1-advise.md": stop1, "docs/stop2-prompts.md": stop2,
    "docs/stop3-quality.md": stop3, "docs/stop4-architecture.md": stop4, "docs/stop5-saving.md": stop5,
    "docs/serving.md": serving, "docs/production-loop.md": production_loop, "docs/scale.md": scale,
    "docs/providers.md": providers, "docs/telemetry.md": telemetry,
}


def test_every_stop_and_topic_page_has_runnable_blocks_and_a_check():
    with_blocks = {name(page) for page in PAGES if runnable(page)}
    assert with_blocks == set(CHECKS)
    for page in PAGES:
        for block in runnable(page):
            assert block.language in ("bash", "python"), f"{block.where}: only bash and python blocks run"
    prelude = runnable(README)[0].code
    assert "cat > sms.yaml" in prelude and "cat > sms.jsonl" in prelude  # what every page starts from


@pytest.mark.slow
@pytest.mark.parametrize("page", [page for page in PAGES if runnable(page)], ids=name)
def test_runnable_blocks_run_as_written(page: Path, tmp_path: Path, backends: Backends):
    env = environment(tmp_path, backends)
    prelude = [] if page == README else runnable(README)[:1]
    output = "\n".join(execute(block, tmp_path, env) for block in [*prelude, *runnable(page)])
    CHECKS[name(page)](tmp_path, output, backends)


# --- links --------------------------------------------------------------------------------------------------------


def prose(text: str) -> str:
    """The text without fenced blocks and inline code (links there are examples, not links)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(match) for match in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_every_relative_link_points_at_a_file_and_heading_that_exist():
    broken = []
    for page in PAGES:
        for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
            if re.match(r"[a-z]+:", target):  # http(s):, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{name(page)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{name(page)}: {target} (no such heading)")
    assert broken == [], "\n".join(broken)


def test_docs_pages_are_all_linked_from_the_docs_index_and_the_readme():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    pages = {page.name for page in PAGES if page.parent.name == "docs" and page.name != "README.md"}
    assert pages == {target for target in LINK.findall(index) if "/" not in target and target.endswith(".md")}
    from_readme = {target.split("#")[0].removeprefix("docs/") for target in LINK.findall(prose(README.read_text()))}
    assert pages | {"README.md"} <= from_readme, pages - from_readme


# --- commands, options and syntax ---------------------------------------------------------------------------------

SHELL_LANGUAGES = ("", "bash", "sh", "console", "shell")
# where a shell command starts: a line's start, after a pipe, `;`, `&&`, `$(` or a `VAR=value ` prefix
COMMAND_START = re.compile(r"(?:^|[|;&(]\s*|^(?:[A-Z_]+=\S+\s+)+)llmbus\s+(.*)$")
COMMAND_END = re.compile(r"\s(?:\||;|&&|\|\||&|>|2>|<)\s|\)|\s#|$")
# inline code that names a span, not a command (docs/telemetry.md's span tables)
SPAN_NAMES = {"llmbus judge JUDGE", "llmbus flow NAME", "llmbus step KEY", "llmbus gateway MODEL"}


@dataclass(frozen=True)
class Mention:
    """`llmbus WORDS…` as a page writes it (a code line or an inline code span)."""

    where: str
    words: tuple[str, ...]


def mentions(page: Path) -> list[Mention]:
    """Every llmbus command line of a page: in its shell blocks and its inline code."""
    text = page.read_text(encoding="utf-8")
    lines: list[tuple[int, str]] = []
    for block in blocks(page):
        if block.language in SHELL_LANGUAGES:
            code = block.code.replace("\\\n", " ")  # a command continued on the next line
            lines += [(block.line + 1 + i, line) for i, line in enumerate(code.splitlines())]
    outside = FENCE.sub(lambda match: "\n" * match.group(0).count("\n"), text)  # the same line numbers
    for match in re.finditer(r"`([^`\n]+)`", outside):
        if match.group(1) not in SPAN_NAMES:
            lines.append((outside.count("\n", 0, match.start()) + 1, match.group(1)))
    found = []
    for number, line in lines:
        for part in re.split(r"\$\(|\|\s|;\s|&&", line):
            start = COMMAND_START.search(part.strip())
            if start:
                rest = COMMAND_END.split(start.group(1), maxsplit=1)[0]
                words = tuple(word.strip("[]'\",") for word in rest.split())
                found.append(Mention(f"{name(page)}:{number}", tuple(word for word in words if word)))
    return found


def help_commands() -> set[str]:
    """The command names `llmbus --help` lists (its panel rows, not their continuation lines)."""
    shown = subprocess.run([sys.executable, "-m", "llmbus.cli", "--help"], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    assert shown.returncode == 0, shown.stderr
    return {line.split()[1] for line in shown.stdout.splitlines() if line.startswith("│ ") and line[2] not in " -"}


def options(command: object) -> set[str]:
    """Every option string a click command takes (`--limit`, `-m`, `--no-cache`…), and --help."""
    names = {"--help"}
    for param in getattr(command, "params", []):
        names.update(param.opts)
        names.update(param.secondary_opts)
    return names


def test_every_llmbus_command_and_option_the_docs_name_exists():
    import typer.main

    from llmbus.cli import app

    listed = help_commands()
    root = typer.main.get_command(app)
    wrong = []
    every = [mention for page in PAGES for mention in mentions(page)]
    for mention in every:
        if not mention.words or mention.words[0].startswith("-"):  # `llmbus --help`, `llmbus --version`
            continue
        first, *rest = mention.words
        if first not in listed:
            wrong.append(f"{mention.where}: llmbus {first} (not in `llmbus --help`)")
            continue
        command = root.commands[first]  # type: ignore[attr-defined]
        subcommands = getattr(command, "commands", None)
        if subcommands is not None and rest and not rest[0].startswith("-"):
            if rest[0] not in subcommands:
                wrong.append(f"{mention.where}: llmbus {first} {rest[0]} (no such subcommand)")
                continue
            command, rest = subcommands[rest[0]], rest[1:]
        takes = options(command)
        for word in rest:
            option = word.split("=", 1)[0]
            if re.fullmatch(r"--?[a-z][\w-]*", option) and option not in takes:
                wrong.append(f"{mention.where}: llmbus {' '.join(mention.words[:2])} {option} (no such option)")
    assert len(every) > 100  # the pages are read: most commands appear many times
    assert wrong == [], "\n".join(wrong)


def test_every_python_yaml_and_bash_block_is_well_formed():
    import ast

    import yaml

    wrong = []
    for page in PAGES:
        for block in blocks(page):
            try:
                if block.language == "python":
                    ast.parse(block.code, filename=block.where)
                elif block.language == "yaml":
                    yaml.safe_load(block.code)
            except (SyntaxError, yaml.YAMLError) as error:
                wrong.append(f"{block.where}: {error}")
            if block.language == "bash":
                checked = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True, timeout=30)
                if checked.returncode != 0:
                    wrong.append(f"{block.where}: {checked.stderr.strip()}")
    assert wrong == [], "\n".join(wrong)


def test_quick_start_is_two_make_targets_and_ci_runs_the_test_one():
    text = README.read_text(encoding="utf-8")
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = next(block for block in blocks(README) if block.code in quick)
    commands = [line.split("#", 1)[0].strip() for line in block.code.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
    assert {"demo", "test"} <= set(targets)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-1] == commands[1]  # CI runs exactly the README's test command
