"""The history reads give the same answers on both engines (issue 11: one store interface).

The shared real transcripts are ingested by the CLI into a SQLite file and a
PostgreSQL database, once for the module. Then every read the tools, the hooks
and the CLI make of the history (list_sessions, get_context, load_checkpoint,
the checkpoint facts, orientation, the session overview and its records, the
project resolution) runs through the SQLite connection and through
`ingest.pg.sqlconn.PgConn`, and the answers must be equal, record handles
aside (each engine numbers its own records). The same SQL text runs on both:
a query that uses something only SQLite has fails here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from fixtures.cli import deja_json
from fixtures.engine_corpus import Corpora
from fixtures.postgres import PgServer

from ingest import checkpoints
from ingest.config import PostgresUrl
from ingest.db import connect
from ingest.pg.connect import connect as pg_connect
from ingest.pg.sqlconn import PgConn, translate
from mcp_server import checkpoint, history, orientation, projects, transcript

Read = Callable[[Any], Awaitable[Any]]


@pytest.fixture(scope="module")
def engines(corpora: Corpora, postgres_server: PgServer) -> tuple[Path, str]:
    """The run's ingest of the shared corpus on each engine (fixtures/engine_corpus.py)."""
    return (Path(corpora.get("sqlite").target),
            str(corpora.get("postgres", postgres_server).target))


def _reads(sessions: list[str], uuids: list[str], dirs: list[str]) -> list[tuple[str, Read]]:
    reads: list[tuple[str, Read]] = [
        ("list_sessions", lambda c: history.list_sessions(c, project=None, since=None, limit=50)),
        ("status", _status),
    ]
    # A project that matches no folder: an empty list of folders on both engines.
    reads += [
        ("sessions of nowhere", lambda c: history.list_sessions(c, project="/nowhere/at/all")),
        ("checkpoint of nowhere", lambda c: checkpoint.load_checkpoint(c, project_dirs=[])),
    ]
    for d in dirs:
        reads += [
            (f"resolve {d}", lambda c, d=d: projects.resolve_project(c, d)),
            (f"sessions of {d}", lambda c, d=d: history.list_sessions(c, project=d, limit=50)),
            (f"orientation {d}", lambda c, d=d: orientation.orientation(
                c, d, session_id=None, limit=2000)),
            (f"checkpoint of {d}", lambda c, d=d: checkpoint.load_checkpoint(
                c, project_dirs=[d], max_tokens=3000)),
        ]
    for s in sessions:
        reads += [
            (f"checkpoint {s}", lambda c, s=s: checkpoint.load_checkpoint(c, session_id=s)),
            (f"overview {s}", lambda c, s=s: transcript.session_overview(c, s)),
            (f"records {s}", lambda c, s=s: transcript.session_records(c, s, limit=200)),
            (f"facts {s}", lambda c, s=s: checkpoints.session_facts(c, s)),
            (f"build {s}", lambda c, s=s: checkpoints.build_checkpoint(c, s)),
            (f"after compaction {s}", lambda c, s=s: orientation.after_compaction(
                c, s, limit=2000)),
        ]
    for u in uuids:
        reads += [
            (f"context {u}", lambda c, u=u: history.get_context(c, u, before=4, after=4)),
        ]
    return reads


async def _status(conn: Any) -> dict[str, Any]:
    """history.status without the ingest's time (the two ingests ran seconds apart)."""
    out = await history.status(conn, Path("x"))
    assert out.pop("last_ingest")
    return out


def _unmachined(value: Any) -> Any:
    """`value` without its `machine` keys: only PostgreSQL's answers say the machine."""
    if isinstance(value, dict):
        return {k: _unmachined(v) for k, v in value.items() if k != "machine"}
    if isinstance(value, (list, tuple)):
        return [_unmachined(v) for v in value]
    return value


def _same(value: Any) -> str:
    """The answer as JSON, each engine's own record ids and PostgreSQL's machines left out."""
    text = json.dumps(_unmachined(value), default=repr, sort_keys=True, ensure_ascii=False)
    return re.sub(r"rec:\d+|'record_id': \d+|\"record_id\": \d+", "rec", text)


def test_every_history_read_answers_the_same_on_both_engines(
        engines: tuple[Path, str]) -> None:
    db, url = engines

    async def go() -> list[str]:
        lite = await connect(db, readonly=True)
        pg = PgConn(await pg_connect(PostgresUrl(url), {}))
        try:
            sessions = [r[0] for r in await lite.execute_fetchall(
                "SELECT session_id FROM sessions ORDER BY last_ts DESC")][:30]
            uuids = [r[0] for r in await lite.execute_fetchall(
                "SELECT uuid FROM records WHERE uuid IS NOT NULL ORDER BY id")][::60]
            dirs = [r[0] for r in await lite.execute_fetchall(
                "SELECT DISTINCT project_dir FROM sessions ORDER BY 1")][:8]
            reads = _reads(sessions, uuids, dirs)
            assert len(reads) > 100
            differ = []
            for name, read in reads:
                answers = []
                for conn in (lite, pg):
                    try:
                        answers.append(_same(await read(conn)))
                    except Exception as exc:  # noqa: BLE001 - the engine's error is the finding
                        answers.append(f"{type(exc).__name__}: {exc}")
                if answers[0] != answers[1]:
                    differ.append(f"{name}:\n  sqlite: {answers[0][:300]}\n"
                                  f"  postgresql: {answers[1][:300]}")
            return differ
        finally:
            await lite.close()
            await pg.raw.close()

    differ = anyio.run(go)
    assert not differ, "\n".join(differ[:5])


def test_placeholders_become_psycopg_ones_and_percent_signs_stay_literal() -> None:
    assert translate("SELECT ? WHERE a LIKE '5%' AND b = ?") == \
        "SELECT %s WHERE a LIKE '5%%' AND b = %s"


def test_rows_read_by_name_none_binds_as_null_and_json_stays_text(
        engines: tuple[Path, str]) -> None:
    _, url = engines

    async def go() -> tuple[Any, ...]:
        pg = PgConn(await pg_connect(PostgresUrl(url), {}))
        try:
            row = (await pg.execute_fetchall(
                "SELECT session_id AS sid, meta, ? IS NULL AS unset, "
                "json_extract(meta, '$.memory_kind') AS mk, SUM(text_len) AS total "
                "FROM records WHERE meta IS NOT NULL GROUP BY session_id, meta LIMIT 1",
                (None,)))[0]
            async with pg.execute("SELECT COUNT(*) FROM sessions WHERE session_id != ?",
                                  ("none",)) as cur:
                counted = [r async for r in cur]
            return row["sid"], row[1], row["unset"], row.keys(), row["total"], counted
        finally:
            await pg.raw.close()

    sid, meta, unset, keys, total, counted = anyio.run(go)
    assert isinstance(sid, str) and isinstance(meta, str) and json.loads(meta)
    assert unset is True and keys == ["sid", "meta", "unset", "mk", "total"]
    assert type(total) is int and counted[0][0] >= 10


@pytest.mark.parametrize("command", [
    ["sessions", "--json", "--limit", "50"],
    ["sessions", "--json", "--project", "all", "--since", "2020-01-01"],
    ["show", "SESSION", "--json"],
    ["show", "SESSION", "--json", "--limit", "20", "--offset", "5"],
    ["show", "UUID", "--json", "--before", "3", "--after", "3"],
])
def test_show_and_sessions_print_the_same_on_both_engines(engines: tuple[Path, str],
                                                          tmp_path: Path,
                                                          command: list[str]) -> None:
    db, url = engines
    from fixtures.db import sql

    sid = sql(db, "SELECT session_id FROM sessions ORDER BY last_ts DESC LIMIT 1")[0][0]
    uuid = sql(db, "SELECT uuid FROM records WHERE kind = 'assistant' ORDER BY id LIMIT 1 "
                   "OFFSET 40")[0][0]
    args = [{"SESSION": sid, "UUID": uuid}.get(a, a) for a in command]
    outs = [_same(deja_json(tmp_path, "--db", target, *args)) for target in (str(db), url)]
    assert outs[0] == outs[1]
