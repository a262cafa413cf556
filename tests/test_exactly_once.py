"""Exactly-once ingest, through the CLI: re-runs, half-written lines, truncation, replacement,
files that vanish, and a file that grows across many passes.

Each test runs on both engines (the `engine` fixture: a SQLite file, a PostgreSQL
database of its own): the same transcripts, the same commands, the same answers.
(The SIGKILL crash test lives in test_crash.py.)
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures.cli import deja_argv, deja_env
from fixtures.engines import Target, sql
from fixtures.paths import REPO
from fixtures.targets import another_target, source_row
from fixtures.transcripts import PROJECT, assistant, conversation, tool_result, user, write

SESSION = "5f0c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f"
OTHER = "6a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d"


class Env:
    def __init__(self, root: Path, db: Target, deja_json: Callable[..., Any]) -> None:
        self.root = root
        self.db = db
        self._deja_json = deja_json

    def session_file(self, session: str = SESSION) -> Path:
        return self.root / PROJECT / f"{session}.jsonl"

    def ingest(self, db: Target | None = None) -> dict[str, Any]:
        return self._deja_json("--db", str(db or self.db), "ingest", "--root", str(self.root),
                               "--json", "--no-embed")

    def search(self, query: str) -> list[dict[str, Any]]:
        return self._deja_json("--db", str(self.db), "search", query, "--json", "--mode", "keyword",
                               "--limit", "50")["hits"]

    def records(self, db: Target | None = None) -> list[tuple[Any, ...]]:
        return sql(db or self.db, "SELECT line_key, part, kind, text FROM records ORDER BY line_key, part")

    def assert_unique(self) -> None:
        total, distinct = sql(self.db, "SELECT COUNT(*), COUNT(DISTINCT source_id || ':' || line_key || "
                                       "':' || part) FROM records")[0]
        assert total == distinct
        # And no line appears twice under two keys within a file.
        dup = sql(self.db, "SELECT source_id, uuid, part, COUNT(*) FROM records WHERE uuid IS NOT NULL "
                           "GROUP BY source_id, uuid, part HAVING COUNT(*) > 1")
        assert dup == []


@pytest.fixture
def env(tmp_path: Path, db_target: Target, deja_json: Callable[..., Any]) -> Env:
    root = tmp_path / "projects"
    root.mkdir()
    return Env(root, db_target, deja_json)


def _uuids(db: Target) -> set[str]:
    return {r[0] for r in sql(db, "SELECT DISTINCT uuid FROM records WHERE uuid IS NOT NULL")}


def test_reingest_adds_nothing(env: Env) -> None:
    lines = conversation(SESSION, 40)
    path = write(env.session_file(), lines)
    agent = write(env.root / PROJECT / SESSION / "subagents" / "agent-a0123456789abcdef.jsonl",
                  conversation(SESSION, 6, prefix="sub"))
    first = env.ingest()
    assert first["new_records"] == 46 and first["files_read"] == 2
    again = env.ingest()
    assert (again["new_records"], again["files_read"], again["files_reset"]) == (0, 0, 0)
    # A touched file (new mtime, same bytes) is looked at again and still adds nothing.
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 5_000_000_000))
    os.utime(agent, ns=(agent.stat().st_atime_ns, agent.stat().st_mtime_ns + 5_000_000_000))
    touched = env.ingest()
    assert (touched["new_records"], touched["files_reset"], touched["skipped_lines"]) == (0, 0, 0)
    assert sql(env.db, "SELECT COUNT(*) FROM records") == [(46,)]
    env.assert_unique()


def test_half_written_last_line_waits_for_its_newline(env: Env) -> None:
    lines = conversation(SESSION, 10)
    tail = user(SESSION, "tail-0001", "the last prompt mentions quokkafield and 東京タワー")
    cut = tail.index("東".encode()) + 1  # inside a multi-byte character
    path = write(env.session_file(), [*lines, tail[:cut]])
    complete_size = sum(len(x) for x in lines)

    first = env.ingest()
    assert first["new_records"] == 10
    assert first["skipped_lines"] == 0 and first["invalid_utf8_lines"] == 0
    row = source_row(env.db, path)
    assert (row["offset"], row["lines"]) == (complete_size, 10)
    assert env.search("quokkafield") == []

    # The whole JSON object is there but not its newline: still not consumed.
    with open(path, "ab") as f:
        f.write(tail[cut:-1])
    second = env.ingest()
    assert second["new_records"] == 0 and second["skipped_lines"] == 0
    assert source_row(env.db, path)["offset"] == complete_size

    with open(path, "ab") as f:
        f.write(b"\n")
    third = env.ingest()
    assert third["new_records"] == 1 and third["invalid_utf8_lines"] == 0
    assert env.ingest()["new_records"] == 0
    assert source_row(env.db, path)["offset"] == path.stat().st_size
    texts = sql(env.db, "SELECT text FROM records WHERE uuid = 'tail-0001'")
    assert texts == [("the last prompt mentions quokkafield and 東京タワー",)]
    assert [h["uuid"] for h in env.search("quokkafield")] == ["tail-0001"]
    env.assert_unique()


def test_truncated_file_is_reconciled_without_duplicates(env: Env) -> None:
    lines = conversation(SESSION, 30)
    path = write(env.session_file(), lines)
    assert env.ingest()["new_records"] == 30
    ino = path.stat().st_ino

    with open(path, "r+b") as f:  # in place: same inode, shorter
        f.truncate(sum(len(x) for x in lines[:12]))
    assert path.stat().st_ino == ino
    shrunk = env.ingest()
    assert shrunk["files_reset"] == 1
    assert shrunk["new_records"] == 0 and shrunk["skipped_lines"] == 0
    assert source_row(env.db, path)["offset"] == path.stat().st_size
    # What was read before the truncation is kept.
    assert sql(env.db, "SELECT COUNT(*) FROM records") == [(30,)]

    extra = conversation(SESSION, 5, prefix="new")
    with open(path, "ab") as f:
        f.write(b"".join(extra))
    grown = env.ingest()
    assert grown["new_records"] == 5 and grown["skipped_lines"] == 0
    # The old lines written back after the new ones: known already.
    with open(path, "ab") as f:
        f.write(b"".join(lines[12:]))
    assert env.ingest()["new_records"] == 0
    assert sql(env.db, "SELECT COUNT(*) FROM records") == [(35,)]
    env.assert_unique()
    assert env.ingest()["new_records"] == 0


def test_replaced_file_with_a_new_head_is_reconciled(env: Env) -> None:
    lines = conversation(SESSION, 20)
    path = write(env.session_file(), lines)
    assert env.ingest()["new_records"] == 20

    first = user(SESSION, "head-0000", "a different first line, wombatquery")
    extra = conversation(SESSION, 10, prefix="more")
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"".join([first, *lines[1:], *extra]))
    os.replace(tmp, path)  # atomic replacement: a new inode
    out = env.ingest()
    assert out["files_reset"] == 1
    assert out["new_records"] == 1 + 10 and out["skipped_lines"] == 0
    assert sql(env.db, "SELECT COUNT(*) FROM records") == [(31,)]
    assert [h["uuid"] for h in env.search("wombatquery")] == ["head-0000"]
    env.assert_unique()


def test_replaced_file_with_the_same_head_is_reread_from_the_start(env: Env) -> None:
    """A file replaced by another (new inode) that shares its first 4 KB but not the rest.

    Think of a sync tool or a restore writing a different version of a session:
    the old byte offset means nothing in the new file.
    """
    old = conversation(SESSION, 20)                          # ~390 bytes a line
    new_tail = conversation(SESSION, 20, prefix="alt", words="gizmo " * 7)  # other lengths
    path = write(env.session_file(), old)
    assert env.ingest()["new_records"] == 20
    assert sum(len(x) for x in old[:15]) > 4096

    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"".join(old[:15] + new_tail))
    assert tmp.stat().st_size > path.stat().st_size
    os.replace(tmp, path)
    out = env.ingest()
    assert out["skipped_lines"] == 0, out["skipped"]
    expected = ({f"m-{i:04d}-{SESSION[:8]}" for i in range(20)}
                | {f"alt-{i:04d}-{SESSION[:8]}" for i in range(20)})
    missing = expected - _uuids(env.db)
    assert not missing, f"{len(missing)} lines of the new file were not ingested: {sorted(missing)[:3]}"
    env.assert_unique()


def test_vanished_file_keeps_its_records(env: Env) -> None:
    keep = write(env.session_file(), conversation(SESSION, 6))
    gone = write(env.session_file(OTHER), conversation(OTHER, 8, prefix="old", words="platypus"))
    assert env.ingest()["new_records"] == 14
    gone_bytes = gone.read_bytes()
    gone.unlink()

    out = env.ingest()
    assert out["missing_files"] == 1 and out["new_records"] == 0
    assert out["file_errors"] == []
    assert source_row(env.db, gone)["missing"] == 1
    assert source_row(env.db, keep)["missing"] == 0
    assert sql(env.db, "SELECT COUNT(*) FROM records WHERE session_id = ?", (OTHER,)) == [(8,)]
    hits = env.search("platypus")
    assert hits and {h["session_id"] for h in hits} == {OTHER}
    stats = env._deja_json("--db", str(env.db), "stats", "--json")
    assert stats["missing_files"] == 1 and stats["records"] == 14

    gone.write_bytes(gone_bytes)  # it comes back: no longer missing, nothing doubled
    back = env.ingest()
    assert back["new_records"] == 0 and back["missing_files"] == 0
    assert source_row(env.db, gone)["missing"] == 0
    assert sql(env.db, "SELECT COUNT(*) FROM records") == [(14,)]
    env.assert_unique()


def _busy_session(n: int) -> list[bytes]:
    """A session with prompts, thinking, tool calls and results, titles and noise lines."""
    rng = random.Random(7)
    out: list[bytes] = []
    for i in range(n):
        u = f"busy-{i:04d}"
        r = rng.random()
        if r < 0.25:
            out.append(user(SESSION, u, f"prompt {i} " + "lorem ipsum " * rng.randint(1, 60)))
        elif r < 0.5:
            out.append(assistant(SESSION, u, [
                {"type": "thinking", "thinking": f"thinking {i} " + "hmm " * rng.randint(1, 40)},
                {"type": "tool_use", "id": f"toolu_{i:04d}", "name": "Bash",
                 "input": {"command": f"ls -la /tmp/{i}", "description": "list"}}]))
        elif r < 0.75:
            out.append(tool_result(SESSION, u, f"toolu_{i - 1:04d}",
                                   f"result {i}\n" + "drwxr-xr-x file\n" * rng.randint(1, 300)))
        elif r < 0.85:
            out.append(b'{"type":"file-history-snapshot","messageId":"' + u.encode() +
                       b'","snapshot":{"messageId":"x","trackedFileBackups":{},"timestamp":"2025-03-01T10:00:00Z"},'
                       b'"isSnapshotUpdate":false}\n')
        elif r < 0.9:
            out.append(b'{"type":"ai-title","aiTitle":"Busy title ' + str(i).encode() +
                       b'","sessionId":"' + SESSION.encode() + b'"}\n')
        else:
            out.append(b'{"type":"summary","summary":"Summary ' + str(i).encode() +
                       b'","leafUuid":"leaf-' + u.encode() + b'"}\n')
    return out


def test_a_file_growing_over_many_passes_equals_one_pass(env: Env, tmp_path: Path,
                                                         request: pytest.FixtureRequest) -> None:
    data = b"".join(_busy_session(160))
    path = env.session_file()
    path.parent.mkdir(parents=True)
    rng = random.Random(11)
    cuts = [*sorted(rng.sample(range(1, len(data)), 6)), len(data)]
    written = 0
    total_new = 0
    with open(path, "wb") as f:
        for cut in cuts:  # arbitrary byte boundaries, often in the middle of a line
            f.write(data[written:cut])
            f.flush()
            written = cut
            out = env.ingest()
            assert out["skipped_lines"] == 0 and out["invalid_utf8_lines"] == 0, out["skipped"]
            total_new += out["new_records"]
    one_pass_db = another_target(request, env.db, tmp_path / "one" / "deja.db")
    one = env.ingest(one_pass_db)
    assert total_new == one["new_records"] > 150
    assert env.records() == env.records(one_pass_db)
    assert sql(env.db, "SELECT title FROM sessions") == sql(one_pass_db, "SELECT title FROM sessions")
    env.assert_unique()


def test_two_ingests_at_once_add_each_record_once(home: Path, db_target: Target,
                                                  shared_projects: Path) -> None:
    """Several deja processes start together (one server per Claude Code session): one ingests.

    On PostgreSQL the three are one machine: its advisory lock makes two wait.
    """
    db = db_target
    cmd = deja_argv("--db", str(db), "ingest", "--root", str(shared_projects), "--json",
                    "--no-embed")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=deja_env(home), cwd=str(REPO)) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    summaries = [json.loads(out) for out, _ in outs]
    total = sql(db, "SELECT COUNT(*) FROM records")[0][0]
    assert sum(s["new_records"] for s in summaries) == total
    assert max(s["new_records"] for s in summaries) == total  # one of them did it all
    total2, distinct = sql(db, "SELECT COUNT(*), COUNT(DISTINCT source_id || ':' || line_key || ':' || part) "
                               "FROM records")[0]
    assert total2 == distinct > 3000


def test_a_line_appended_while_the_watcher_starts_is_ingested_within_seconds(
        tmp_path: Path, db_target: Target) -> None:
    """The watcher starts after the first pass: a line written in between raises no event.

    The first pass's callback appends the rest of the file, i.e. exactly in that gap; it must
    be ingested at the watcher's first wake, long before the 30 s safety rescan.
    """
    import time

    import anyio

    from ingest.config import PostgresUrl, database_from
    from ingest.pg.store import PgStore
    from ingest.runner import IngestSummary, watch
    from ingest.store import Store

    root = tmp_path / "projects"
    session = "5f1c2d3e-0000-4000-8000-00000000beef"
    lines = conversation(session, 6)
    path = write(root / PROJECT / f"{session}.jsonl", lines[:3])

    async def go() -> float:
        target = database_from(str(db_target), {})
        store: Store | PgStore = await (
            PgStore.open(target, "m1", {}) if isinstance(target, PostgresUrl)
            else Store.open(target))
        appended = anyio.Event()
        done = anyio.Event()
        started = time.monotonic()

        async def on_pass(summary: IngestSummary) -> None:
            if not appended.is_set():
                with path.open("ab") as f:
                    f.write(b"".join(lines[3:]))
                appended.set()
            elif summary.new_records >= 6:
                done.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: watch(store, [root], rescan_seconds=30.0, on_pass=on_pass))
                with anyio.fail_after(15):
                    await done.wait()
                tg.cancel_scope.cancel()
            return time.monotonic() - started
        finally:
            await store.close()

    assert anyio.run(go) < 15
