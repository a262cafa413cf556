"""SIGKILL the ingest at random instants; after a restart the database equals a clean run's.

The issue: "A test kills the ingest process with SIGKILL at random instants on
a large corpus (the shared corpus copied many times with fresh uuids) and shows
that after a restart the database holds exactly the records of a clean run."

How:
1. Build a corpus of COPIES copies of the shared transcripts, each with fresh
   uuids (bench/corpus.py), so it is big enough for kills to land mid-ingest.
2. Clean run into database A; remember its wall time to aim the kills.
3. Into database B: start `deja ingest` as a subprocess, SIGKILL it after a
   random delay, repeat: one kill early, several anywhere, one late, and two
   during start-up (opening the database, WAL recovery, discovery), drawn
   from random.Random(seed); the seed is printed and DEJA_CRASH_SEED replays
   it. At least MIN_MID_KILLS kills must land mid-ingest (the killed run had
   committed some records, not all), one of them early and one late; if the
   machine's speed throws the aim off, another round starts from an empty B.
   After every kill, a COPY of B's files (so that deja itself, not the test,
   recovers B's WAL on restart) is checked against A: for every
   file, B holds exactly A's records of the lines before B's cursor, no more,
   no fewer. That is the cursor-in-the-same-transaction property, seen at
   the instant of each crash.
4. Run B to completion and compare A and B exactly: every column of every
   record (source as a path relative to the root, text as a hash), the FTS
   index (internal integrity-check, one index row per record, the same token
   count per record, the same vocabulary), the cursors (offset == size for
   every file), the sessions and agent_runs tables, and no duplicates.

`--no-embed`: this test is about records and cursors; vectors are computed
later by the embedder and would take minutes on this corpus. It takes 15 to
35 s on 2 cores, depending on other load: making the corpus, the clean run,
B's runs (each restart pays the start-up again) and the comparisons.

On PostgreSQL (the test runs once per engine): A and B are databases of the
run's server, the corpus is one copy (PostgreSQL ingests ~6x slower, and one
copy already takes seconds to ingest: 20 to 35 s for the whole PostgreSQL half).
The server, not deja, rolls back what a killed client left open, so B is read
as it is once the server has ended the killed session. The full-text index
compared is PostgreSQL's: each record's tsvector (its words and its context's)
and its passages, and the vocabulary (ts_stat). One more way to die, on
PostgreSQL alone: the server ends the ingest's session (pg_terminate_backend)
mid-ingest, aimed by the records (just after the run's first commit, in its next
batch) rather than by time: deja exits 1 with one line, and the next run goes on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fixtures.cli import deja, deja_argv, deja_env
from fixtures.engines import Target, is_postgres
from fixtures.paths import REPO
from fixtures.postgres import PgServer
from fixtures.targets import another_target, database_name

from ingest.db import make_connector
from ingest.indexing import PASSAGE_FROM

# Copies of the shared corpus per engine: SQLite ~95 MB of .jsonl, ~5 s per clean ingest on
# 2 cores; PostgreSQL one copy (~16 MB), ~5 s.
COPIES = {"sqlite": 6, "postgres": 1}
MIN_RECORDS = {"sqlite": 10_000, "postgres": 3_000}
MIN_MID_KILLS = 4      # kills that leave B with some but not all records
MAX_ROUNDS = 3         # rounds of kills (each from an empty B) before giving up
EARLY_FRAC = 0.30      # a kill is "early" below this fraction of the records...
LATE_FRAC = 0.70       # ...and "late" at or above this one (and below 1)


def _load_corpus_module() -> Any:
    """bench/ is not a package on sys.path: load bench/corpus.py by its path."""
    spec = importlib.util.spec_from_file_location("deja_bench_corpus", REPO / "bench" / "corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def _run_to_end(db: Target, root: Path, home: Path) -> tuple[dict[str, Any], float]:
    """One complete ingest; returns its JSON summary and wall time."""
    started = time.perf_counter()
    proc = deja(home, "--db", str(db), "ingest", "--root", str(root), "--json", "--no-embed",
                timeout=300)
    wall = time.perf_counter() - started
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


@contextmanager
def _open(target: Target) -> Iterator[Any]:
    """A connection (its `execute` returns a cursor on either engine), closed afterwards:
    SQLite with deja's settings (sqlite-vec, deja_fts_text), PostgreSQL in autocommit."""
    if is_postgres(target):
        import psycopg

        conn: Any = psycopg.connect(str(target), autocommit=True)
    else:
        conn = make_connector(Path(target))()
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def _snapshot(target: Target, scratch: Path, server: PgServer | None) -> Iterator[Target | None]:
    """The database as the kill left it (None if not created yet).

    SQLite: a copy of the file and its WAL; reading the copy lets SQLite recover
    the copy's WAL, while B itself is left exactly as the killed process left it,
    for deja's restart to recover. PostgreSQL: B itself, once the server has
    ended the killed client's session (and rolled back what it had open).
    """
    if server is not None:
        _wait_until_no_client(server, str(target))
        with _open(target) as conn:
            yield target if _has_schema(conn) else None
        return
    db = Path(target)
    if not db.exists():
        yield None
        return
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    copy = scratch / db.name
    for suffix in ("", "-wal"):
        src = Path(str(db) + suffix)
        if src.exists():
            shutil.copyfile(src, str(copy) + suffix)
    try:
        yield copy
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _wait_until_no_client(server: PgServer, url: str) -> None:
    """Until no session but ours is connected to the database at `url`: a killed client's
    backend ends (rolling back its transaction, letting go of its lock) once the server
    sees the socket closed."""
    deadline = time.monotonic() + 30
    with server.connect() as conn:
        while conn.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = %s "
                           "AND backend_type = 'client backend'",
                           (database_name(url),)).fetchone()[0]:
            assert time.monotonic() < deadline, f"a session of {url} outlived its client"
            time.sleep(0.02)


def _is_pg(conn: Any) -> bool:
    return not hasattr(conn, "create_function")  # sqlite3-like connections have it


def _has_schema(conn: Any) -> bool:
    if _is_pg(conn):  # the tables are created in one transaction: all of them, or none
        return bool(conn.execute("SELECT to_regclass('deja_schema') IS NOT NULL").fetchone()[0])
    return conn.execute(
        "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('records', 'sources')"
    ).fetchone()[0] == 2


_BYTE_OFFSET = 20  # index of byte_offset in the tuples made by _records()

_RECORD_COLUMNS = """
SELECT s.display_path, r.line_key, r.part, r.kind, r.uuid, r.session_id, r.agent_id,
       r.tool_name, r.text, r.parent_uuid, r.role, r.tool_use_id, r.is_error, r.text_len,
       r.truncated, r.ts, r.cwd, r.git_branch, r.model, r.is_sidechain, r.byte_offset,"""

# The last two columns: the record's meta (as text) and what the full-text index holds of it.
_RECORD_SQL = _RECORD_COLUMNS + """ r.meta, d.sz
FROM records r
LEFT JOIN sources s ON s.id = r.source_id
LEFT JOIN records_fts_docsize d ON d.id = r.id
"""

# PostgreSQL: its tsvector (weights and positions: its words and its context's) and its
# passages' (ingest/pg/search_schema.py).
_PG_RECORD_SQL = _RECORD_COLUMNS + """ r.meta::text,
       r.search_tsv::text || ' / ' || r.search_len || ' / ' || COALESCE(
           (SELECT string_agg(p.start || ':' || p.len || ':' || p.tsv::text, ' / '
                              ORDER BY p.start)
            FROM passages p WHERE p.record_id = r.id), '')
FROM records r
LEFT JOIN sources s ON s.id = r.source_id
"""


def _records(conn: Any, root: Path) -> Counter[tuple[Any, ...]]:
    """Every record as a tuple of all its columns but `id`, the source as a relative path,
    the text as a hash, plus its index entry: the FTS docsize (token count) blob, or on
    PostgreSQL its tsvector and passages (as a hash)."""
    out: Counter[tuple[Any, ...]] = Counter()
    for row in conn.execute(_PG_RECORD_SQL if _is_pg(conn) else _RECORD_SQL):
        rel = os.path.relpath(row[0], root) if row[0] is not None else None
        text_sha = hashlib.sha1(row[8].encode("utf-8", "surrogatepass")).hexdigest()
        index = row[22]
        if isinstance(index, str):
            index = hashlib.sha1(index.encode()).hexdigest()
        elif index is not None:
            index = bytes(index)
        out[(rel, *row[1:8], text_sha, *row[9:22], index)] += 1
    return out


_SOURCE_COLUMNS = ("project_dir", "layout", "session_hint", "session_id", "agent_id", "size",
                   "offset", "lines", "head_len", "head_hash", "missing", "resets")


def _sources(conn: Any, root: Path) -> dict[str, dict[str, Any]]:
    """Every file's row, cursor included, keyed by its path relative to the root."""
    columns = ", ".join(f'"{c}"' for c in _SOURCE_COLUMNS)  # "offset": a word of PostgreSQL's
    rows = conn.execute(f"SELECT display_path, {columns} FROM sources").fetchall()
    return {os.path.relpath(r[0], root): dict(zip(_SOURCE_COLUMNS, r[1:])) for r in rows}


def _sessions(conn: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute("SELECT * FROM sessions ORDER BY session_id")]


def _agent_runs(conn: Any, root: Path) -> list[tuple[Any, ...]]:
    rows = conn.execute(
        "SELECT a.session_id, a.agent_id, s.display_path, a.layout, a.agent_type, a.description, "
        "a.tool_use_id, a.is_aside FROM agent_runs a LEFT JOIN sources s ON s.id = a.source_id "
        "ORDER BY a.session_id, a.agent_id"
    ).fetchall()
    return [(r[0], r[1], os.path.relpath(r[2], root) if r[2] else None, *r[3:]) for r in rows]


def _vocabulary(conn: Any) -> list[tuple[Any, ...]]:
    if _is_pg(conn):
        return [tuple(r) for r in conn.execute(
            "SELECT word, ndoc, nentry FROM ts_stat('SELECT search_tsv FROM records') "
            "ORDER BY word")]
    conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.deja_vocab "
                 "USING fts5vocab(main, records_fts, 'row')")
    return [tuple(r) for r in conn.execute("SELECT term, doc, cnt FROM temp.deja_vocab ORDER BY term")]


def _no_duplicates(conn: Any) -> None:
    total, distinct = conn.execute(
        "SELECT COUNT(*), COUNT(DISTINCT source_id || '|' || line_key || '|' || part) FROM records"
    ).fetchone()
    assert total == distinct, f"{total - distinct} duplicated records"


def _final_state(db: Target, root: Path) -> tuple[Any, ...]:
    """Checks every finished database must pass, then what two runs must agree on:
    (records, sources, sessions, agent runs, FTS vocabulary)."""
    with _open(db) as conn:
        _no_duplicates(conn)
        _fts_consistent(conn)
        return (_records(conn, root), _sources(conn, root), _sessions(conn),
                _agent_runs(conn, root), _vocabulary(conn))


def _fts_consistent(conn: Any) -> None:
    """The FTS index is sound and holds exactly one document per record.

    'integrity-check' verifies the index's internal structure; the table is
    contentless (migration m005), so FTS5 has no content to compare it with.
    Instead: every record has a docsize row and no docsize row lacks its
    record; the per-record token counts (both columns) and the vocabulary are
    then compared between A and B.

    PostgreSQL: every record has its tsvector and every long one its passages
    (the triggers write them in the record's transaction); A's and B's are compared.
    """
    if _is_pg(conn):
        unindexed = conn.execute(
            "SELECT COUNT(*) FROM records r WHERE r.search_tsv IS NULL OR (length(r.text) > "
            f"{PASSAGE_FROM} AND NOT EXISTS (SELECT 1 FROM passages p WHERE p.record_id = r.id))"
        ).fetchone()[0]
        assert unindexed == 0, f"{unindexed} records not indexed"
        return
    conn.execute("INSERT INTO records_fts(records_fts) VALUES('integrity-check')")
    missing = conn.execute(
        "SELECT COUNT(*) FROM records r LEFT JOIN records_fts_docsize d ON d.id = r.id "
        "WHERE d.id IS NULL").fetchone()[0]
    orphans = conn.execute(
        "SELECT COUNT(*) FROM records_fts_docsize d LEFT JOIN records r ON r.id = d.id "
        "WHERE r.id IS NULL").fetchone()[0]
    assert (missing, orphans) == (0, 0), f"{missing} records not indexed, {orphans} orphan entries"


_FIELDS = ("source", "line_key", "part", "kind", "uuid", "session_id", "agent_id", "tool_name",
           "text_sha1", "parent_uuid", "role", "tool_use_id", "is_error", "text_len", "truncated",
           "ts", "cwd", "git_branch", "model", "is_sidechain", "byte_offset", "meta", "fts_index")


def _diff(a: Counter[tuple[Any, ...]], b: Counter[tuple[Any, ...]], limit: int = 5) -> str:
    """A readable difference: records present on one side, and columns that differ."""
    only_a, only_b = a - b, b - a
    lines = [f"{sum(only_a.values())} only in the clean run, {sum(only_b.values())} only after kills"]
    keyed_b = {k[:3]: k for k in only_b}
    for k in list(only_a)[:limit]:
        other = keyed_b.get(k[:3])
        if other is None:
            lines.append(f"  clean only: {k[:8]}")
        else:
            cols = {f: (x, y) for f, x, y in zip(_FIELDS, k, other) if x != y}
            lines.append(f"  {k[:3]} differs (clean, killed): {cols}")
    keyed_a = {k[:3] for k in only_a}
    lines += [f"  killed only: {k[:8]}" for k in list(only_b)[:limit] if k[:3] not in keyed_a]
    return "\n".join(lines)


@dataclass
class Kill:
    """One attempt: when it was aimed, and what the database held before and after it."""

    plan: str
    delay_s: float
    killed: bool       # False: the run ended before the kill
    before: int        # records B held when this run started
    records: int       # ... and after the kill
    frac: float        # records / records of the clean run
    total: int         # records of the clean run

    @property
    def mid_ingest(self) -> bool:
        """Killed while writing: this run committed some records and not all of them."""
        return self.killed and self.before < self.records < self.total


def _plan(rng: random.Random, server_end: bool = False) -> list[tuple[str, float | None]]:
    """Kill instants of one round, as fractions of the clean run's work (None: in start-up).

    One early, several anywhere, one late, in increasing order; plus two kills
    during start-up (opening the database, WAL recovery, discovery), placed
    at random among them. With `server_end` (PostgreSQL), one more instant in
    the middle where the server ends the session instead.
    """
    targets = sorted([rng.uniform(0.03, EARLY_FRAC - 0.08)]
                     + [rng.uniform(0.05, 0.9) for _ in range(MIN_MID_KILLS)]
                     + [rng.uniform(LATE_FRAC + 0.08, 0.97)])
    plan: list[tuple[str, float | None]] = [
        ("early" if t < EARLY_FRAC else "late" if t >= LATE_FRAC else "mid", t) for t in targets
    ]
    if server_end:
        plan.append(("server-end", rng.uniform(0.3, 0.7)))
        plan.sort(key=lambda step: step[1] or 0.0)
    for _ in range(2):
        plan.insert(rng.randrange(len(plan) + 1), ("start-up", None))
    return plan


def _check_prefix(snapshot: Target, root: Path, clean: dict[str, Counter[tuple[Any, ...]]],
                  total_records: int) -> int:
    """B, as the kill left it: per file, exactly the clean run's records before the cursor.

    Returns the number of records B holds.
    """
    with _open(snapshot) as conn:
        if not _has_schema(conn):
            return 0  # killed during creation or migration: nothing committed yet
        _no_duplicates(conn)
        _fts_consistent(conn)
        got = _records(conn, root)
        cursors = {rel: row["offset"] for rel, row in _sources(conn, root).items()}
    by_file: dict[str, Counter[tuple[Any, ...]]] = {}
    for key, n in got.items():
        by_file.setdefault(key[0], Counter())[key] += n
    assert set(by_file) <= set(cursors), "records of a file the database has no cursor for"
    for rel, offset in cursors.items():
        expected = Counter({k: n for k, n in clean.get(rel, Counter()).items() if k[_BYTE_OFFSET] < offset})
        have = by_file.get(rel, Counter())
        assert have == expected, f"{rel} (cursor {offset}): {_diff(expected, have)}"
    n = sum(got.values())
    assert n <= total_records
    return n


def _end_its_session(server: PgServer, url: str, proc: subprocess.Popen[bytes]) -> bool:
    """The server ends the PostgreSQL session of deja process `proc`; False if it had none."""
    with server.connect() as conn:
        ended = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
            "AND application_name = %s", (database_name(url), f"deja {proc.pid}")).fetchall()
    return bool(ended)


def _until_it_commits(target: Target, before: int, proc: subprocess.Popen[bytes],
                      rng: random.Random) -> float:
    """Wait until the database holds more than `before` records (or `proc` ended), then a
    random moment more; returns the seconds waited, for the report."""
    started = time.monotonic()
    while proc.poll() is None and time.monotonic() - started < 60:
        with _open(target) as conn:
            if _has_schema(conn) and conn.execute("SELECT COUNT(*) FROM records"
                                                  ).fetchone()[0] > before:
                break
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.2))
    return 0.001 + time.monotonic() - started


def test_sigkill_at_random_instants_then_restart_equals_clean_run(
    shared_projects: Path, tmp_path: Path, engine: str, db_target: Target,
    request: pytest.FixtureRequest,
) -> None:
    seed = int(os.environ.get("DEJA_CRASH_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"\ncrash test seed: {seed} (replay with DEJA_CRASH_SEED={seed})")
    rng = random.Random(seed)
    server: PgServer | None = request.getfixturevalue("postgres_server") \
        if is_postgres(db_target) else None
    home = tmp_path / "home"
    home.mkdir()
    root = tmp_path / "projects"
    corpus = _load_corpus_module().make_corpus(shared_projects, root, copies=COPIES[engine])
    print(f"corpus: {corpus.jsonl_files} files, {corpus.jsonl_bytes / 1e6:.1f} MB, "
          f"{corpus.elapsed_s:.1f} s to make")

    # -- A: the clean run ---------------------------------------------------
    db_a = db_target
    summary_a, wall_a = _run_to_end(db_a, root, home)
    assert summary_a["skipped_lines"] == 0 and summary_a["file_errors"] == []
    startup = max(wall_a - summary_a["elapsed_s"], 0.05)
    ingest_s = summary_a["elapsed_s"]
    print(f"clean run: {summary_a['new_records']} records in {wall_a:.2f} s "
          f"({ingest_s:.2f} s ingesting after {startup:.2f} s of start-up)")
    records_a, sources_a, sessions_a, agents_a, vocab_a = _final_state(db_a, root)
    total = sum(records_a.values())
    assert total == summary_a["new_records"] > MIN_RECORDS[engine]
    clean_by_file: dict[str, Counter[tuple[Any, ...]]] = {}
    for key, n in records_a.items():
        clean_by_file.setdefault(key[0], Counter())[key] += n

    # -- B: killed at random instants ----------------------------------------
    db_b: Target = tmp_path / "b" / "deja.db"
    kills: list[Kill] = []

    def satisfied() -> bool:
        mid = [k for k in kills if k.mid_ingest]
        return (len(mid) >= MIN_MID_KILLS
                and any(k.frac < EARLY_FRAC for k in mid)
                and any(k.frac >= LATE_FRAC for k in mid)
                and (server is None or any(k.plan == "server-end" for k in mid)))

    rounds = 0
    while not satisfied() and rounds < MAX_ROUNDS:
        # A round starts from an empty B; a second round only if the first
        # missed the plan (the machine was much slower or faster than run A).
        rounds += 1
        if server is not None:
            db_b = another_target(request, db_a, Path())
        else:
            for suffix in ("", "-wal", "-shm", ".ingest.lock", ".ingest.lock.sqlite"):
                Path(str(db_b) + suffix).unlink(missing_ok=True)
        before = 0
        for kind, target in _plan(rng, server_end=server is not None):
            frac = before / total
            # Aim at a fraction of the work; every restart pays the start-up again.
            if target is None:
                delay = rng.uniform(0.0, startup)
            else:
                delay = startup + max(target - frac, 0.02) * ingest_s
            proc = subprocess.Popen(
                deja_argv("--db", str(db_b), "ingest", "--root", str(root), "--json",
                          "--no-embed"),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=deja_env(home),
                cwd=str(REPO))
            ended_by_server = False
            wait_s = delay
            if kind == "server-end":
                # Aimed by what it wrote, not by time: once this run has committed a batch,
                # the server ends its session in the middle of the next one.
                delay, wait_s = _until_it_commits(db_b, before, proc, rng), 0.001
            try:
                proc.wait(timeout=wait_s)
                killed = False
            except subprocess.TimeoutExpired:
                killed = True
                if kind == "server-end" and server is not None:
                    ended_by_server = _end_its_session(server, str(db_b), proc)
                if not ended_by_server:
                    proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=60)
            if ended_by_server:
                # One line, exit 1 (psycopg words a connection lost in a pipeline in
                # more than one way); or the run had just ended on its own.
                text = err.decode(errors="replace")
                assert proc.returncode == 0 or (
                    proc.returncode == 1 and text.count("\n") == 1 and text.startswith((
                        "deja: lost the connection to PostgreSQL at ",
                        "deja: PostgreSQL at ")) and "Traceback" not in text), text
                killed = proc.returncode == 1
            elif killed:
                assert proc.returncode == -signal.SIGKILL
            else:
                assert proc.returncode == 0, f"deja exited {proc.returncode}:\n{err[-3000:]!r}"
            with _snapshot(db_b, tmp_path / "snapshot", server) as snap:
                n = 0 if snap is None else _check_prefix(snap, root, clean_by_file, total)
            kill = Kill(kind, round(delay, 3), killed, before, n, round(n / total, 3), total)
            kills.append(kill)
            print(f"  round {rounds} {kind:10s} after {delay:5.2f} s: "
                  f"{'killed' if killed else 'finished'}, B holds {n}/{total} records "
                  f"({n / total:.0%}){' <- mid-ingest' if kill.mid_ingest else ''}")
            before = n
            if n == total:
                break
    assert satisfied(), f"kills did not land as planned (seed {seed}): {kills}"

    # -- restart to completion and compare -----------------------------------
    summary_b, _ = _run_to_end(db_b, root, home)
    assert summary_b["skipped_lines"] == 0 and summary_b["file_errors"] == []
    assert summary_b["files_reset"] == 0, "a restart re-read a file from its start"
    records_b, sources_b, sessions_b, agents_b, vocab_b = _final_state(db_b, root)
    assert records_b == records_a, _diff(records_a, records_b)
    for rel, row in sources_b.items():
        assert row["offset"] == row["size"] > 0, f"{rel}: cursor at {row['offset']} of {row['size']}"
    assert sources_b == sources_a
    assert len(sources_b) == corpus.jsonl_files
    assert sessions_b == sessions_a
    assert agents_b == agents_a
    assert vocab_b == vocab_a
    print(f"after {sum(k.killed for k in kills)} kills: {total} records, "
          f"{len(sessions_b)} sessions, {len(agents_b)} subagent runs, identical to the clean run")
