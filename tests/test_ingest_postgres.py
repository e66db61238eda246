"""PostgreSQL sources against a real, throwaway server that the test starts (and stops).

The server lives in a fresh folder on a Unix socket only. initdb refuses to run as root, so as
root the server runs as the ``postgres`` system user that Debian's package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.ingest_fixtures import events, quarantine, run

pytestmark = pytest.mark.postgres


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))), None)
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binary (pg_ctl) here; CI installs it from Debian's packages")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="thumbs-pg-"))
    if os.geteuid() == 0:  # initdb will not run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser to start PostgreSQL as another user")
        try:
            shutil.chown(root, "postgres")
        except LookupError:
            pytest.skip("running as root and there is no 'postgres' system user to run the server")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=60)

    pg(str(bin_dir / "initdb"), "-D", str(data), "-U", "thumbs", "--auth=trust", "-E", "UTF8", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses='' -c fsync=off"
    pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    try:
        yield f"postgresql://thumbs:not-a-secret@/postgres?host={root}&port={port}"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def app_tables(postgres_url):
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("CREATE SCHEMA app")
        db.execute(
            "CREATE TABLE app.votes (id serial PRIMARY KEY, prompt text, completion text, thumbs_up boolean, "
            "rated_at timestamptz, payload jsonb)"
        )
        rows = [
            (f"Q{i % 3}", f"answer {i}", i % 2 == 0, f"2024-05-0{1 + i % 5} 10:00:00+00") for i in range(50)
        ]
        db.cursor().executemany(
            "INSERT INTO app.votes (prompt, completion, thumbs_up, rated_at, payload) VALUES (%s, %s, %s, %s, '{\"k\": 1}')",
            rows,
        )
        db.execute("INSERT INTO app.votes (prompt, completion, thumbs_up) VALUES ('Q0', '', true)")
        db.execute("CREATE TABLE generations (id text PRIMARY KEY, prompt text, completion text)")
        db.execute(
            "CREATE TABLE feedback (generation_id text, user_id text, value int, created_at timestamptz)"
        )
        db.execute("INSERT INTO generations VALUES ('g1', 'P', 'C1'), ('g2', 'P', 'C2')")
        db.execute(
            "INSERT INTO feedback VALUES ('g1', 'a', 1, '2024-01-01'), ('g1', 'a', -1, '2024-01-02'), "
            "('g2', 'b', 1, '2024-01-01'), ('g3', 'b', 1, '2024-01-01')"
        )
    return postgres_url


def test_postgres_table_query_and_event_log(app_tables, tmp_path):
    url = app_tables
    out = tmp_path / "out"
    manifest = run([url], out, table="app.votes", map=["label=thumbs_up", "timestamp=rated_at"])
    entry = manifest["sources"][0]
    assert (entry["rows_in"], entry["rows_ok"], entry["rows_quarantined"]) == (51, 50, 1)
    assert [q["reason"] for q in quarantine(out)] == ["empty_completion"]
    first = next(e for e in events(out) if e["completion"] == "answer 0")
    assert first["label"] is True and first["timestamp"].isoformat() == "2024-05-01T10:00:00+00:00"
    assert (
        '"payload": {"k": 1}' in first["meta"].replace('":{', '": {') or '"payload":{"k":1}' in first["meta"]
    )
    for name in ("manifest.json", "events.parquet", "quarantine.jsonl"):
        assert b"not-a-secret" not in (out / name).read_bytes()

    query = "SELECT prompt, completion, CASE WHEN thumbs_up THEN 'up' ELSE 'down' END AS vote FROM app.votes WHERE id <= 10"
    run([url], tmp_path / "q", query=query)
    assert len(events(tmp_path / "q")) == 10

    log = run([url], tmp_path / "log", table="generations", feedback="feedback")
    assert sorted((e["completion"], e["label"]) for e in events(tmp_path / "log")) == [
        ("C1", False),
        ("C2", True),
    ]
    assert log["sources"][0]["reasons"] == {"unknown_generation": 1}
    assert log["sources"][0]["rows_duplicate"] == 1  # a's later vote replaced the earlier one
