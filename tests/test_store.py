"""The call log on SQLite and on a real PostgreSQL server."""

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from llmbus.errors import LlmbusError
from llmbus.providers.llamacpp import free_port
from llmbus.store import CallRecord, Store, database_url
from llmbus.store.migrations import MIGRATIONS


def _record(run_id: str, item: str, **extra) -> CallRecord:
    stamp = datetime.now(UTC)
    return CallRecord(run_id=run_id, task="t", spec_version="v1", item_id=item, model="m", prompt="p",
                      started_at=stamp, finished_at=stamp, **extra)


def _exercise(store: Store) -> None:
    run_id = store.create_run(task="t", task_path="t.yaml", spec_version="v1", spec_json="{}", model="m",
                              metric="accuracy", n_planned=3, concurrency=1)
    store.record_call(_record(run_id, "a", parsed="spam", expected="spam", label_probs={"spam": 0.9, "ham": 0.1}))
    store.record_call(_record(run_id, "b", error_kind="timeout", error="slow"))
    assert store.answered_items(run_id, frozenset({"timeout"})) == {"a"}
    store.record_call(_record(run_id, "b", parsed="ham", expected="ham"))  # a retry replaces the failed row
    rows = list(store.iter_calls(run_id))
    assert [r["item_id"] for r in rows] == ["a", "b"]
    assert rows[0]["label_probs"] == {"spam": 0.9, "ham": 0.1} and rows[1]["error_kind"] is None
    assert store.get_run(run_id[:5])["id"] == run_id
    store.cache_put("k", "m", {"text": "x"})
    store.cache_put("k", "m", {"text": "y"})
    assert store.cache_get("k") == {"text": "x"} and store.cache_get("missing") is None
    store.migrate()  # idempotent
    with store.engine.connect() as conn:
        names = list(conn.scalars(sa.text("select name from migrations")))
    assert sorted(names) == sorted(name for name, _ in MIGRATIONS)


def test_sqlite_store_uses_wal(tmp_path):
    store = Store(str(tmp_path / "x.db"))
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    _exercise(store)


@pytest.mark.slow
def test_postgres_store(postgres_url: str):
    store = Store(postgres_url)
    _exercise(store)
    store.close()


def test_database_url_forms(tmp_path, monkeypatch):
    assert database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert database_url(str(tmp_path / "a.db")) == f"sqlite:///{tmp_path / 'a.db'}"
    monkeypatch.setenv("LLMBUS_DB", str(tmp_path / "env.db"))
    assert database_url(None).endswith("env.db")


def test_unreachable_database_is_one_clear_error():
    with pytest.raises(LlmbusError, match="cannot connect to database"):
        Store("postgresql://nobody@127.0.0.1:1/none")


@pytest.mark.slow
def test_postgres_password_stays_out_of_messages(postgres_url: str):
    url = postgres_url.replace("://llmbus@", "://llmbus:pw-s3cret-42@")
    store = Store(url)  # trust auth: the password is accepted and ignored
    assert "pw-s3cret-42" not in store.url and store.url.startswith("postgresql+psycopg://llmbus:***@")
    with pytest.raises(LlmbusError) as info:
        store.get_run("deadbeef")
    assert "pw-s3cret-42" not in str(info.value)
    assert str(info.value).startswith("run 'deadbeef' not found in postgresql+psycopg://llmbus:***@127.0.0.1:")
    store.close()
    dead = url.rsplit(":", 1)[0] + f":{free_port()}/postgres"
    with pytest.raises(LlmbusError, match=r"cannot connect to database postgresql\+psycopg://llmbus:\*\*\*@") as info:
        Store(dead)
    assert "pw-s3cret-42" not in str(info.value)


def test_run_tag_column_is_added_to_a_database_made_before_migration_013(tmp_path):
    path = tmp_path / "old.db"
    Store(str(path)).close()
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:  # back to how 012 left it
        conn.execute(sa.text("DROP INDEX ix_runs_tag"))
        conn.execute(sa.text("ALTER TABLE runs DROP COLUMN tag"))
        conn.execute(sa.text("DELETE FROM migrations WHERE name = '013_run_tag'"))
        conn.execute(sa.text("INSERT INTO runs (id, task, spec_version, spec_json, model, metric, n_planned, "
                             "concurrency, status, created_at, wall_s) VALUES ('old', 't', 'v', '{}', 'm', "
                             "'accuracy', 1, 1, 'done', '2026-01-01', 0)"))
    engine.dispose()
    store = Store(str(path))
    tagged = store.create_run(task="t", task_path="", spec_version="v", spec_json="{}", model="m",
                              metric="accuracy", n_planned=1, concurrency=1, tag="optimize:abc")
    assert [r["id"] for r in store.list_runs(tag="optimize:abc")] == [tagged]
    assert store.get_run("old")["tag"] is None and len(store.list_runs("t")) == 2
    store.close()


def test_cache_writers_racing_for_the_same_keys_keep_the_first_answer(tmp_path):
    import threading

    store = Store(str(tmp_path / "race.db"))
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def writer(n: int) -> None:
        start.wait()
        for round_ in range(40):
            try:
                store.cache_put_many([(f"k{round_}-{i}", "m", {"text": f"w{n}"}) for i in range(3)])
            except BaseException as exc:  # the race must never surface
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert all(store.cache_get(f"k{r}-{i}") is not None for r in range(40) for i in range(3))
    store.close()


def fresh_postgres_database(server_url: str, name: str) -> str:
    """A new, empty database on the test server (no migrations applied yet); returns its URL."""
    engine = sa.create_engine(database_url(server_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.mark.slow
@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_ten_processes_opening_a_fresh_store_at_once_migrate_it_once(postgres_url: str, tmp_path, dialect: str):
    import subprocess
    import sys

    url = fresh_postgres_database(postgres_url, "fresh_ten") if dialect == "postgresql" else str(tmp_path / "f.db")
    command = [sys.executable, "-m", "llmbus.cli", "runs", "--db", url, "--json"]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(10)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in processes]
    assert [code for code, _, _ in results] == [0] * 10, [err for _, _, err in results]
    assert all(out.strip() == "[]" and "Traceback" not in err for _, out, err in results)
    engine = sa.create_engine(database_url(url))
    with engine.connect() as conn:
        names = list(conn.scalars(sa.text("select name from migrations")))
    engine.dispose()
    assert sorted(names) == sorted(name for name, _ in MIGRATIONS)  # each applied once, by one of the ten


def test_ten_connections_switching_a_fresh_sqlite_file_to_wal_at_once_all_open(tmp_path):
    """The WAL switch of a new file races: SQLite answers the loser "database is locked" without waiting (about 1
    round in 12 of ten processes failed in CI); each open must wait its turn instead. 40 rounds of ten openers."""
    import threading

    from llmbus.store.engine import open_engine

    errors: list[str] = []
    for round_no in range(40):
        url = database_url(str(tmp_path / f"r{round_no}.db"))
        start = threading.Barrier(10)

        def open_it(url: str = url, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                open_engine(url).dispose()
            except LlmbusError as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=open_it) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_row_reads_back_as_written(backend: str, tmp_path, request):
    """Call rows go to the driver in one executemany (store.db.BulkInsert): every column reads back as written."""
    store = Store(str(tmp_path / "rows.db") if backend == "sqlite" else request.getfixturevalue("postgres_url"))
    run_id = store.create_run(task="t", task_path="t.yaml", spec_version="v1", spec_json="{}", model="m",
                              metric="accuracy", n_planned=2, concurrency=1)
    started, finished = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), datetime.now(UTC)
    written = CallRecord(run_id=run_id, task="t", spec_version="v1", item_id="é'1", model="m", prompt="p\n'\"",
                         started_at=started, finished_at=finished, raw_output="spam", parsed={"a": [1, "ü"]},
                         confidence=0.25, label_probs={"spam": 0.75}, expected="spam", score=1.0, tokens_in=3,
                         tokens_out=1, latency_s=0.5, cost_usd=1e-6, cpu_s=None, cache_hit=True, meta={"k": None})
    store.record_calls([written, _record(run_id, "2")])
    [row, _] = list(store.iter_calls(run_id))
    assert {key: row[key] for key in ("item_id", "prompt", "raw_output", "parsed", "confidence", "label_probs",
                                      "expected", "score", "tokens_in", "tokens_out", "latency_s", "cost_usd",
                                      "cpu_s", "cache_hit", "error_kind", "meta")} == {
        "item_id": "é'1", "prompt": "p\n'\"", "raw_output": "spam", "parsed": {"a": [1, "ü"]}, "confidence": 0.25,
        "label_probs": {"spam": 0.75}, "expected": "spam", "score": 1.0, "tokens_in": 3, "tokens_out": 1,
        "latency_s": 0.5, "cost_usd": 1e-6, "cpu_s": None, "cache_hit": True, "error_kind": None, "meta": {"k": None}}
    assert [row["started_at"].replace(tzinfo=UTC), row["finished_at"].replace(tzinfo=UTC)] == [started, finished] \
        or [row["started_at"], row["finished_at"]] == [started, finished]
    store.close()
