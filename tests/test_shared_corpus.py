"""The real transcripts in ../shared/transcripts/projects, ingested once through the CLI.

Every expectation here is read from the transcripts themselves (independently
of deja's parser) or was checked by hand against them: agent ids, tool_use ids,
leaf uuids, titles. The database is inspected read-only (sqlean, or psycopg).

On both engines: the `corpus` fixture is the corpus ingested once per module into
a SQLite file and once into a PostgreSQL database, and each test of it runs on
both; `test_both_engines_hold_the_same_tables` compares the two row for row. The
full-text query syntax and the file's own layout are SQLite's (`sqlite_corpus`);
the PostgreSQL rankers' queries are tests/test_postgres_search.py's.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlean
from fixtures.cli import deja, deja_env, deja_json
from fixtures.engines import ENGINES, Target, sql
from fixtures.paths import REPO
from fixtures.postgres import PgServer
from fixtures.shared import ingest_shared
from fixtures.targets import server_files, source_row, wal_position
from fixtures.transcripts import assistant, conversation, line, tool_result, user, write

from ingest.migrations import SCHEMA_VERSION

TEXT_CAP = 64 * 1024
HIT_KEYS = {"uuid", "session_id", "project", "kind", "timestamp", "snippet"}
# These databases are ingested with --no-embed, so hybrid search would answer from
# BM25 alone; but `deja search` in its default mode loads (and on first use exports)
# the embedding model even then (~45 s with a fresh HOME here). Keyword mode keeps
# these tests fast and independent of the model.
KEYWORD = ("--mode", "keyword")

# Checked by hand in the transcripts (see the test docstrings for where).
LIVECD = "-home-ubuntu-Documents-livecd-gen"
S_LIVECD_1 = "155c3456-9cd0-4d8f-8db3-d0560ca1851c"
S_LIVECD_2 = "e1ffaf02-1289-4b61-ae2e-694bf373993b"
S_DEEP = "a7da6a22-facc-4fcd-8bab-f83c87862004"
S_TELECOM = "c0dddd8d-6c0f-4a12-8927-28271848cfc7"
S_TEAMS = "44ef5cbf-9cc3-4f7b-ac40-337a4d39713b"
S_WINBOAT = "8fd119a6-9ab8-407b-810f-329cfb6153e0"
S_AVD = "3e89eb15-32e7-43f8-8734-8d47310263ea"
S_EPISODIC = "9a9eadc8-c1f1-493e-a0f1-884aa996b05b"


# -- running the CLI once for the module ------------------------------------------


def _deja(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """deja ARGS... whatever its exit code (the caller checks it)."""
    return deja(home, *args, expect=None)


class Corpus:
    """The corpus in one database: a SQLite file, or a PostgreSQL database (then `server`)."""

    def __init__(self, root: Path, db: Target, home: Path, summary: dict[str, Any],
                 server: PgServer | None = None, since: str | None = None) -> None:
        self.root = root
        self.db = db
        self.home = home
        self.summary = summary
        self.server = server
        self.since = since  # the server's WAL position before the ingest

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return sql(self.db, query, params)

    def source_id(self, path: Path) -> int:
        return int(source_row(self.db, path)["id"])

    def deja_json(self, *args: str) -> Any:
        return deja_json(self.home, "--db", str(self.db), *args)

    def stored_bytes(self) -> bytes:
        """Every byte the engine wrote: the database folder's files, or what the server's
        write-ahead log holds of the ingest (all it wrote to any file)."""
        if self.server is not None:
            return b"".join(server_files(self.server, str(self.db), self.since,
                                         data_files=False).values())
        return b"".join(p.read_bytes() for p in Path(self.db).parent.iterdir() if p.is_file())


@pytest.fixture(scope="module")
def sqlite_corpus(tmp_path_factory: pytest.TempPathFactory, shared_projects: Path) -> Corpus:
    home, db, summary = ingest_shared(tmp_path_factory.mktemp("corpus"), shared_projects)
    return Corpus(shared_projects, db, home, summary)


@pytest.fixture(scope="module")
def pg_corpus(tmp_path_factory: pytest.TempPathFactory, shared_projects: Path,
              postgres_server: PgServer) -> Corpus:
    home = tmp_path_factory.mktemp("pg_corpus")
    url = postgres_server.uri(postgres_server.new_database())
    since = wal_position(postgres_server)
    summary = deja_json(home, "--db", url, "ingest", "--root", str(shared_projects), "--json",
                        "--no-embed")
    return Corpus(shared_projects, url, home, summary, postgres_server, since)


@pytest.fixture(scope="module", params=ENGINES)
def corpus(request: pytest.FixtureRequest) -> Corpus:
    """The corpus on each engine in turn (each ingested once per module)."""
    return request.getfixturevalue("pg_corpus" if request.param == "postgres" else "sqlite_corpus")


# -- reading the transcripts independently -----------------------------------------


def _jsonl_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.jsonl") if "tool-results" not in p.parts)


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(byte offset, object) of every line."""
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                yield offset, json.loads(raw)
            offset += len(raw)


def _block_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b["text"] for b in content if isinstance(b, dict)
                         and b.get("type") == "text" and isinstance(b.get("text"), str))
    return ""


def _same_or_redacted(stored: str, expected: str) -> bool:
    """The stored text is the original, or the original with secrets replaced by markers.

    NUL characters (binary output in a tool result) are stored as U+FFFD.
    """
    expected = expected.replace("\x00", "\ufffd")
    if stored == expected:
        return True
    if "[REDACTED:" not in stored:
        return False
    return expected.startswith(stored.split("[REDACTED:")[0])


# -- 1. everything ingests ------------------------------------------------------------


def test_every_file_ingests_with_nothing_skipped(corpus: Corpus) -> None:
    s = corpus.summary
    files = _jsonl_files(corpus.root)
    assert len(files) == 35
    assert s["files"] == len(files) and s["files_read"] == len(files)
    assert s["skipped_lines"] == 0, s["skipped"]
    assert s["skipped"] == []
    assert s["file_errors"] == []
    assert s["invalid_utf8_lines"] == 0
    assert s["unknown_line_types"] == {}
    # Every file was read to its end: cursor at its size, every line counted.
    rows = {bytes(r[0]): (r[1], r[2], r[3]) for r in corpus.sql(
        'SELECT path, "offset", lines, missing FROM sources')}
    assert len(rows) == len(files)
    for path in files:
        data = path.read_bytes()
        assert rows[os.fsencode(str(path))] == (len(data), data.count(b"\n"), 0), path
    stats = corpus.deja_json("stats", "--json")
    assert stats["records"] == s["new_records"] == corpus.sql("SELECT COUNT(*) FROM records")[0][0]


def test_records_are_unique_per_file_line_and_part(corpus: Corpus) -> None:
    total, distinct = corpus.sql(
        "SELECT COUNT(*), COUNT(DISTINCT source_id || ':' || line_key || ':' || part) FROM records")[0]
    assert total == distinct > 3000


def test_both_engines_hold_the_same_tables(sqlite_corpus: Corpus, pg_corpus: Corpus) -> None:
    """The same summary, and the sessions, subagent runs and response usage row for row."""
    lite, pg = sqlite_corpus, pg_corpus
    for key in ("files", "files_read", "new_records", "records_by_kind", "sessions",
                "subagent_runs", "redactions", "redactions_by_kind", "skipped_lines",
                "ignored_lines", "lines_read", "bytes_read", "compactions"):
        assert pg.summary[key] == lite.summary[key], key
    assert pg.summary["embedded"] == 0 and pg.summary["pending_embeddings"] > 0
    for table, cols in (
            ("sessions", "session_id, project_dir, cwd, git_branch, title, title_kind, "
                         "agent_name, first_ts, last_ts, version"),
            ("agent_runs", "session_id, agent_id, layout, agent_type, description, "
                           "tool_use_id, is_aside"),
            ("responses", "key, session_id, model, ts, input, output, cache_creation, "
                          "cache_read")):
        query = f"SELECT {cols} FROM {table}"
        assert sorted(lite.sql(query)) == sorted(pg.sql(query)), table
    kinds = "SELECT kind || '/' || COALESCE(tool_name, ''), COUNT(*) FROM records GROUP BY 1"
    assert dict(lite.sql(kinds)) == dict(pg.sql(kinds))
    # PostgreSQL's own: every record of this one machine, and in the keyword index.
    stats = pg.deja_json("stats", "--json")
    assert stats["engine"] == "postgresql" and stats["records_by_machine"] == {
        pg.summary["machine"]: pg.summary["new_records"]}
    assert stats["by_kind"] == pg.summary["records_by_kind"]
    assert (stats["sessions"], stats["files"], stats["missing_files"]) == (
        pg.sql("SELECT COUNT(*) FROM sessions")[0][0], pg.summary["files"], 0)
    assert pg.sql("SELECT COUNT(*) FROM pg_extension WHERE extname = 'vector'") == [(1,)]
    assert pg.sql("SELECT COUNT(*) FROM records WHERE search_tsv IS NULL") == [(0,)]
    assert pg.sql("SELECT indexdef FROM pg_indexes WHERE indexname = 'records_search'"
                  )[0][0].endswith("USING gin (search_tsv)")


# -- 1. subagents, all three layouts ----------------------------------------------------


def _spawn_links_from_transcripts(root: Path) -> dict[tuple[str, str], str]:
    """(session, agentId) -> tool_use_id, from toolUseResult.agentId on tool results."""
    links: dict[tuple[str, str], str] = {}
    for path in _jsonl_files(root):
        for _, obj in _lines(path):
            tur = obj.get("toolUseResult")
            if obj.get("type") != "user" or not isinstance(tur, dict) or not tur.get("agentId"):
                continue
            content = obj["message"]["content"]
            ids = [b["tool_use_id"] for b in content
                   if isinstance(b, dict) and b.get("type") == "tool_result"]
            assert len(ids) == 1
            links[(obj["sessionId"], tur["agentId"])] = ids[0]
    return links


def test_subagent_files_are_linked_to_their_parent_session(corpus: Corpus) -> None:
    runs = {(r[0], r[1]): r[2:] for r in corpus.sql(
        "SELECT session_id, agent_id, layout, tool_use_id, source_id, is_aside FROM agent_runs")}
    agent_files = [p for p in _jsonl_files(corpus.root) if p.name.startswith("agent-")]
    assert len(agent_files) == 24
    for path in agent_files:
        agent_id = path.name[len("agent-"):-len(".jsonl")]
        rel = path.relative_to(corpus.root).parts
        if len(rel) == 2:  # 2.0.x: <project>/agent-<hex>.jsonl, the session only inside
            sessions = {o["sessionId"] for _, o in _lines(path) if o.get("sessionId")}
            assert len(sessions) == 1
            session, layout = sessions.pop(), "legacy_agent"
        else:  # 2.1.x: <project>/<session>/subagents/[workflows/<wf>/]agent-<id>.jsonl
            session = rel[1]
            layout = "workflow_agent" if "workflows" in rel else "subagent"
        assert (session, agent_id) in runs, f"{path}: no agent_runs row for {(session, agent_id)}"
        got_layout, _, source_id, _ = runs[(session, agent_id)]
        assert got_layout == layout, path
        assert source_id == corpus.source_id(path), path
    # Hand-checked examples of each layout.
    assert runs[(S_DEEP, "c8d9b115")][:1] == ("legacy_agent",)
    assert runs[(S_TELECOM, "a499355576927c350")][:1] == ("subagent",)
    assert runs[(S_AVD, "a2013704b26e00c11")][:1] == ("workflow_agent",)


def test_spawning_tool_call_from_tool_results_and_meta_json(corpus: Corpus) -> None:
    runs = {(r[0], r[1]): r[2] for r in corpus.sql(
        "SELECT session_id, agent_id, tool_use_id FROM agent_runs")}
    # toolUseResult.agentId on the parent's tool_result (2.0.x and 2.1.x).
    links = _spawn_links_from_transcripts(corpus.root)
    assert len(links) == 18
    for key, tool_use_id in links.items():
        assert runs.get(key) == tool_use_id, key
    # meta.json toolUseId (2.1.x).
    metas = sorted(corpus.root.rglob("agent-*.meta.json"))
    with_id = 0
    for meta_path in metas:
        meta = json.loads(meta_path.read_text())
        if "toolUseId" not in meta:
            continue
        with_id += 1
        session = meta_path.relative_to(corpus.root).parts[1]
        agent_id = meta_path.name[len("agent-"):-len(".meta.json")]
        assert runs[(session, agent_id)] == meta["toolUseId"], meta_path
    assert with_id == 10
    # Hand-checked: the 2.0.x agent file and its Task call (line 78 of the session).
    assert runs[(S_DEEP, "c8d9b115")] == "toolu_01MmDqMXjZLvzbNFLGH2ZA3k"
    assert runs[(S_TELECOM, "af4c295351308a696")] == "toolu_015ZpuRNjTyfLMf7aY7vw35S"
    assert runs[(S_WINBOAT, "a520480fc0182e0d7")] == "toolu_01KnhSrCGEaF1yqrncbe9Eub"
    assert runs[("ef958aa1-0e93-49f0-bb71-150f63befcd1", "a36efb2a1231c41e2")] == \
        "toolu_017y4gSjMWeQ3L2DAKiygU2y"


def _sidechain_spawns(path: Path) -> list[tuple[str, str]]:
    """1.0.x: (root uuid of a sidechain, id of the Task call whose prompt equals its first prompt)."""
    calls: dict[str, list[str]] = defaultdict(list)
    roots: list[tuple[str, str]] = []
    for _, obj in _lines(path):
        if obj.get("type") == "assistant":
            for b in obj["message"]["content"]:
                if b.get("type") == "tool_use" and b.get("name") in ("Task", "Agent"):
                    calls[b["input"]["prompt"]].append(b["id"])
        elif obj.get("type") == "user" and obj.get("isSidechain") and not obj.get("parentUuid"):
            roots.append((obj["uuid"], _block_text(obj["message"]["content"])))
    out = []
    for uuid, prompt in roots:
        assert len(calls[prompt]) == 1, (path, uuid)
        out.append((uuid, calls[prompt][0]))
    return out


def test_sidechains_in_the_main_file_are_subagent_runs_with_their_task_call(corpus: Corpus) -> None:
    for session in (S_LIVECD_1, S_LIVECD_2):
        path = corpus.root / LIVECD / f"{session}.jsonl"
        expected = _sidechain_spawns(path)
        assert len(expected) == {S_LIVECD_1: 5, S_LIVECD_2: 4}[session]
        rows = corpus.sql("SELECT agent_id, tool_use_id, layout FROM agent_runs WHERE session_id = ?",
                          (session,))
        assert sorted(r[1] for r in rows) == sorted(t for _, t in expected)
        assert {r[2] for r in rows} == {"sidechain"}
        # Each run's first prompt is stored under that run.
        for uuid, tool_use_id in expected:
            agent = next(r[0] for r in rows if r[1] == tool_use_id)
            got = corpus.sql("SELECT agent_id, is_sidechain FROM records WHERE uuid = ? AND kind = 'prompt'",
                             (uuid,))
            assert got == [(agent, 1)], uuid
    # Hand-checked: the Director's strategic-decision prompt, line 4 of 155c3456.
    assert ("48159d0b-18a4-42da-adcd-7b0b511bbf5d", "toolu_01EVEXziyGcG5tQKkThvXfLx") in \
        _sidechain_spawns(corpus.root / LIVECD / f"{S_LIVECD_1}.jsonl")


def test_subagent_run_count(corpus: Corpus) -> None:
    sidechains = sum(len(_sidechain_spawns(corpus.root / LIVECD / f"{s}.jsonl"))
                     for s in (S_LIVECD_1, S_LIVECD_2))
    assert corpus.sql("SELECT COUNT(*) FROM agent_runs")[0][0] == 24 + sidechains == 33
    assert corpus.summary["subagent_runs"] == 33


def test_aside_question_replay_is_kept_per_file(corpus: Corpus) -> None:
    parent = corpus.root / "-home-vwestberg-Claude" / f"{S_WINBOAT}.jsonl"
    aside = (corpus.root / "-home-vwestberg-Claude" / S_WINBOAT / "subagents" /
             "agent-aside_question-ac9ee4804d56a951.jsonl")
    kept_types = {"user", "assistant"}
    parent_uuids = {o["uuid"] for _, o in _lines(parent) if o.get("type") in kept_types}
    aside_uuids = {o["uuid"] for _, o in _lines(aside) if o.get("type") in kept_types}
    shared = parent_uuids & aside_uuids
    assert len(shared) >= 40  # the /btw file replays its parent's history
    pid, aid = corpus.source_id(parent), corpus.source_id(aside)
    in_parent = {r[0] for r in corpus.sql("SELECT uuid FROM records WHERE source_id = ?", (pid,))}
    in_aside = {r[0] for r in corpus.sql("SELECT uuid FROM records WHERE source_id = ?", (aid,))}
    both = shared & in_parent
    assert len(both) >= 40
    assert both <= in_aside, sorted(both - in_aside)[:5]
    # Same line, same pieces, same text in both files.
    for uuid in sorted(both)[:20]:
        a = corpus.sql("SELECT part, kind, text FROM records WHERE source_id = ? AND uuid = ? ORDER BY part",
                       (pid, uuid))
        b = corpus.sql("SELECT part, kind, text FROM records WHERE source_id = ? AND uuid = ? ORDER BY part",
                       (aid, uuid))
        assert a == b, uuid
    assert corpus.sql("SELECT is_aside, session_id FROM agent_runs WHERE agent_id = ?",
                      ("aside_question-ac9ee4804d56a951",)) == [(1, S_WINBOAT)]


# -- 1. compaction, summaries, titles ---------------------------------------------------------


def test_both_compaction_styles_are_records(corpus: Corpus) -> None:
    boundaries, summaries = [], []
    for path in _jsonl_files(corpus.root):
        for _, obj in _lines(path):
            if obj.get("type") == "system" and obj.get("subtype") == "compact_boundary":
                boundaries.append((path, obj["uuid"], obj["sessionId"]))
            if obj.get("type") == "user" and obj.get("isCompactSummary"):
                summaries.append((path, obj["uuid"], obj["sessionId"],
                                  _block_text(obj["message"]["content"])))
    # Current style in c0dddd8d (2.1.150), 1.0.x style (summary only) in e1ffaf02.
    assert sorted(s for _, _, s in boundaries) == [S_TELECOM]
    assert sorted(s for _, _, s, _ in summaries) == sorted([S_TELECOM, S_LIVECD_2])
    for path, uuid, session in boundaries:
        assert corpus.sql("SELECT kind, session_id, source_id FROM records WHERE uuid = ?", (uuid,)) == [
            ("compaction", session, corpus.source_id(path))]
    for path, uuid, session, text in summaries:
        assert text.startswith("This session is being continued")
        rows = corpus.sql("SELECT kind, session_id, source_id, text FROM records WHERE uuid = ?", (uuid,))
        assert rows == [("compact_summary", session, corpus.source_id(path), text)], uuid
    assert corpus.summary["compactions"] == 3
    assert corpus.summary["records_by_kind"]["compaction"] == 1
    assert corpus.summary["records_by_kind"]["compact_summary"] == 2


def test_summary_lines_are_records_keyed_by_leaf(corpus: Corpus) -> None:
    expected = []
    for path in _jsonl_files(corpus.root):
        for _, obj in _lines(path):
            if obj.get("type") == "summary":
                expected.append((obj["leafUuid"], obj["summary"], corpus.source_id(path)))
    assert len(expected) == 10
    got = corpus.sql("SELECT uuid, text, source_id FROM records WHERE kind = 'summary'")
    assert sorted(got) == sorted(expected)
    # A search hit on a summary names the leaf it summarises.
    hits = corpus.deja_json("search", "Cloudflare API Gateway DNS", "--json", *KEYWORD,
                            "--kind", "summary")["hits"]
    assert hits, "the summary line was not found"
    assert hits[0]["kind"] == "summary"
    assert hits[0]["uuid"] == "2faf6e8b-f2a8-4675-8412-ba54331b925f"
    assert hits[0]["session_id"] == S_LIVECD_1


def test_session_titles_last_one_wins(corpus: Corpus) -> None:
    expected: dict[str, tuple[str, str]] = {}
    for path in _jsonl_files(corpus.root):
        for _, obj in _lines(path):
            if obj.get("type") == "ai-title":
                expected[obj["sessionId"]] = (obj["aiTitle"], "ai-title")
            elif obj.get("type") == "custom-title":
                expected[obj["sessionId"]] = (obj["customTitle"], "custom-title")
    # Hand-checked: c0dddd8d was first titled "Scrutinise the changes", later renamed.
    assert expected == {
        S_TELECOM: ("fix-contract-expiry-atomicity", "ai-title"),
        S_AVD: ("Create Android AVD with root access", "ai-title"),
        S_TEAMS: ("add-teams-keybinding", "custom-title"),
    }
    got = {r[0]: (r[1], r[2]) for r in corpus.sql(
        "SELECT session_id, title, title_kind FROM sessions WHERE title IS NOT NULL")}
    assert got == expected


def test_title_last_one_wins_and_agent_name_does_not_erase_it(tmp_path: Path,
                                                              db_target: Target) -> None:
    """A made-up session: titles and agent names interleaved as Claude Code 2.1.x writes them."""
    session = "2a3b4c5d-6e7f-4a8b-9c0d-1e2f3a4b5c6d"
    path = write(tmp_path / "projects" / "-home-dev-t" / f"{session}.jsonl", [
        *conversation(session, 2),
        line({"type": "ai-title", "aiTitle": "First guess", "sessionId": session}),
        line({"type": "custom-title", "customTitle": "Named by the user", "sessionId": session}),
        line({"type": "agent-name", "agentName": "named-by-the-user", "sessionId": session}),
    ])
    home = tmp_path / "home"
    home.mkdir()
    db = db_target

    def ingest_and_read() -> tuple[Any, ...]:
        deja_json(home, "--db", str(db), "ingest", "--root", str(tmp_path / "projects"), "--json",
                  "--no-embed")
        return sql(db, "SELECT title, title_kind, agent_name FROM sessions WHERE session_id = ?",
                   (session,))[0]

    assert ingest_and_read() == ("Named by the user", "custom-title", "named-by-the-user")
    with open(path, "ab") as f:  # a later pass: the newest title wins
        f.write(line({"type": "ai-title", "aiTitle": "Renamed later", "sessionId": session}))
    assert ingest_and_read() == ("Renamed later", "ai-title", "named-by-the-user")


# -- 1. noise is not indexed ---------------------------------------------------------------


def test_progress_snapshots_and_queue_operations_are_not_records(corpus: Corpus) -> None:
    noise_types = {"progress", "file-history-snapshot", "queue-operation"}
    checked = 0
    for path in _jsonl_files(corpus.root):
        noise_offsets = {off for off, obj in _lines(path) if obj.get("type") in noise_types}
        if not noise_offsets:
            continue
        sid = corpus.source_id(path)
        offsets = {r[0] for r in corpus.sql("SELECT byte_offset FROM records WHERE source_id = ?", (sid,))}
        assert not offsets & noise_offsets, path
        checked += len(noise_offsets)
    assert checked == 1027 + 138 + 20  # progress, file-history-snapshot, queue-operation


def test_agent_progress_copies_are_indexed_from_the_subagent_file_only(corpus: Corpus) -> None:
    parent = corpus.root / "-home-vwestberg-Claude" / f"{S_TEAMS}.jsonl"
    child = parent.with_suffix("") / "subagents" / "agent-a71969c1296961234.jsonl"
    copied = set()
    for _, obj in _lines(parent):
        data = obj.get("data") or {}
        if obj.get("type") == "progress" and data.get("type") == "agent_progress":
            copied.add(data["message"]["uuid"])
    assert len(copied) >= 20
    child_uuids = {o.get("uuid") for _, o in _lines(child)}
    assert copied <= child_uuids
    pid, cid = corpus.source_id(parent), corpus.source_id(child)
    from_parent = {r[0] for r in corpus.sql("SELECT uuid FROM records WHERE source_id = ?", (pid,))}
    from_child = {r[0] for r in corpus.sql("SELECT uuid FROM records WHERE source_id = ?", (cid,))}
    assert not copied & from_parent
    assert len(copied & from_child) >= 20
    assert corpus.sql("SELECT COUNT(*) FROM records WHERE kind = 'progress'")[0][0] == 0


def test_a_real_password_in_escaped_json_does_not_reach_the_database(corpus: Corpus) -> None:
    """8fd119a6 writes a docker-compose file (a tool input: JSON text inside a JSON string)
    holding PASSWORD: \\"...\\". The values are read from the transcript here, never written down."""
    import re

    path = corpus.root / "-home-vwestberg-Claude" / f"{S_WINBOAT}.jsonl"
    values = set(re.findall(r'PASSWORD: \\"([^\\"$]{6,})', path.read_text()))
    assert values, "expected the docker-compose password in the transcript"
    stored = corpus.stored_bytes()
    assert not [v for v in values if v.encode() in stored or v.lower().encode() in stored.lower()]
    texts = [r[0] for r in corpus.sql("SELECT text FROM records WHERE text LIKE '%PASSWORD: %'")]
    assert any('PASSWORD: \\"[REDACTED:secret_assignment]' in t for t in texts)


# -- 2. fidelity ------------------------------------------------------------------------------


def _expected_pieces(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """What a conversation line must yield, read straight from the JSON."""
    ltype = obj.get("type")
    message = obj.get("message") if isinstance(obj.get("message"), dict) else {}
    out: list[dict[str, Any]] = []
    if ltype == "assistant":
        for b in message.get("content") or []:
            if not isinstance(b, dict):
                continue
            if b.get("type") == "text" and b.get("text", "").strip():
                out.append({"kinds": {"assistant", "error"}, "text": b["text"]})
            elif b.get("type") == "thinking" and b.get("thinking", "").strip():
                out.append({"kinds": {"thinking"}, "text": b["thinking"]})
            elif b.get("type") == "tool_use":
                out.append({"kinds": {"tool_call"}, "tool_name": b["name"], "tool_use_id": b["id"],
                            "input": b.get("input")})
    elif ltype == "user" and not obj.get("isCompactSummary"):
        content = message.get("content")
        if isinstance(content, str) and content.strip():
            out.append({"kinds": {"prompt", "command", "meta"}, "text": content})
        elif isinstance(content, list):
            for b in content:
                if isinstance(b, dict) and b.get("type") == "tool_result":
                    text = _block_text(b.get("content"))
                    if text.startswith("<persisted-output>"):
                        text = _persisted(text, obj.get("toolUseResult") or {})
                    if text.strip():
                        out.append({"kinds": {"tool_result"}, "text": text, "tool_use_id": b["tool_use_id"]})
    return out


def _persisted(notice: str, tur: dict[str, Any]) -> str:
    """What deja keeps of an output Claude Code spilled to tool-results/: the notice
    (it names the file), then the fuller output the line's toolUseResult holds
    (stdout and stderr; a Read's file content) in place of the 2 KB preview."""
    fuller = "\n".join(v for v in (tur.get("stdout"), tur.get("stderr"))
                       if isinstance(v, str) and v.strip())
    if not fuller and isinstance(tur.get("file"), dict):
        fuller = tur["file"].get("content") or ""
    return notice.split("Preview (first", 1)[0].rstrip() + "\n\nOutput:\n" + fuller


def test_spilled_tool_outputs_keep_the_fuller_output_not_the_preview(corpus: Corpus) -> None:
    """4 results in the shared corpus were spilled to tool-results/*.txt: their block
    holds a 2 KB preview, their toolUseResult 30 KB or more. Words far past the
    preview are stored and found, and the spill file is named in the meta."""
    rows = corpus.sql("SELECT uuid, length(text), CAST(meta AS TEXT) FROM records "
                      "WHERE kind = 'tool_result' AND text LIKE '<persisted-output>%'")
    assert len(rows) == 4
    assert all(length > 30_000 for _, length, _ in rows)
    metas = [json.loads(m) for _, _, m in rows if m]
    assert sum(1 for m in metas if m["persisted_output"]["persistedOutputPath"].endswith(".txt")) == 3
    # A line near the end of the 30 KB kept of the 54 KB diff, 28 KB past the preview.
    tail = corpus.sql("SELECT text FROM records WHERE uuid = ?",
                      ("8090dd0a-8325-4657-b530-fcccb631beb3",))[0][0][-400:-200]
    word = max(re.findall(r"[A-Za-z]{8,}", tail), key=len)
    found = corpus.deja_json("search", word, "--json", "--mode", "keyword", "--project", "all",
                             "--limit", "50")["hits"]
    assert "8090dd0a-8325-4657-b530-fcccb631beb3" in {h["uuid"] for h in found}, word


def test_real_lines_are_kept_verbatim_with_their_context(corpus: Corpus) -> None:
    """Prompts, answers, thinking, tool calls (name + input), tool results: text and context."""
    counts: dict[str, int] = defaultdict(int)
    for path in _jsonl_files(corpus.root):
        sid = corpus.source_id(path)
        stored: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for row in corpus.sql(
                "SELECT uuid, kind, text, tool_name, tool_use_id, ts, cwd, git_branch, model, text_len, "
                "truncated FROM records WHERE source_id = ?", (sid,)):
            stored[row[0]].append(row)
        for _, obj in _lines(path):
            pieces = _expected_pieces(obj)
            if not pieces:
                continue
            rows = stored.get(obj["uuid"], [])
            assert len(rows) >= len(pieces), (path.name, obj["uuid"])
            for row in rows:
                _, _, _, _, _, ts, cwd, branch, model, _, _ = row
                assert ts == obj.get("timestamp"), (path.name, obj["uuid"])
                assert cwd == (obj.get("cwd") or None), (path.name, obj["uuid"])
                assert branch == (obj.get("gitBranch") or None), (path.name, obj["uuid"])
                if obj["type"] == "assistant":
                    assert model == obj["message"].get("model"), (path.name, obj["uuid"])
            for piece in pieces:
                candidates = [r for r in rows if r[1] in piece["kinds"]]
                kind = sorted(piece["kinds"])[0]
                counts[kind] += 1
                if "input" in piece:
                    match = [r for r in candidates
                             if r[3] == piece["tool_name"] and r[4] == piece["tool_use_id"]]
                    assert len(match) == 1, (path.name, obj["uuid"], piece["tool_use_id"])
                    text = match[0][2]
                    name, _, payload = text.partition(" ")
                    assert name == piece["tool_name"]
                    if "[REDACTED:" not in payload:
                        assert json.loads(payload) == piece["input"], (path.name, obj["uuid"])
                    continue
                if "tool_use_id" in piece:
                    candidates = [r for r in candidates if r[4] == piece["tool_use_id"]]
                assert len(piece["text"]) <= TEXT_CAP  # nothing in the corpus needs the cap
                ok = [r for r in candidates if _same_or_redacted(r[2], piece["text"])]
                assert ok, (path.name, obj["uuid"], kind, piece["text"][:100])
                assert ok[0][9] == len(piece["text"]) and ok[0][10] == 0
    assert counts["tool_call"] == 1065 and counts["tool_result"] >= 1000
    assert counts["thinking"] >= 200 and counts["assistant"] >= 500 and counts["command"] >= 150


def test_tool_results_are_named_by_their_call(corpus: Corpus) -> None:
    unnamed = corpus.sql(
        "SELECT COUNT(*) FROM records r WHERE kind = 'tool_result' AND tool_name IS NULL AND EXISTS "
        "(SELECT 1 FROM records c WHERE c.kind = 'tool_call' AND c.tool_use_id = r.tool_use_id)")
    assert unnamed == [(0,)]
    # A Bash result from the 1.0.x session, hand-checked.
    assert corpus.sql("SELECT tool_name FROM records WHERE kind = 'tool_result' AND uuid = ?",
                      ("9bd5e227-4a21-45dc-8d99-175bb4790de6",)) == [("Bash",)]


def test_sessions_keep_cwd_branch_version_and_time_span(corpus: Corpus) -> None:
    seen: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in _jsonl_files(corpus.root):
        for _, obj in _lines(path):
            if obj.get("type") in ("user", "assistant", "system", "attachment") and obj.get("sessionId"):
                s = seen[obj["sessionId"]]
                for key in ("cwd", "gitBranch", "version", "timestamp"):
                    if obj.get(key):
                        s[key].add(obj[key])
    rows = corpus.sql("SELECT session_id, cwd, git_branch, version, first_ts, last_ts, project_dir "
                      "FROM sessions")
    assert {r[0] for r in rows} == set(seen) and len(rows) == 10
    for sid, cwd, branch, version, first, last, _project in rows:
        s = seen[sid]
        assert cwd in s["cwd"], sid
        assert branch in s["gitBranch"] or (branch is None and not s["gitBranch"]), sid
        assert version in s["version"], sid
        assert (first, last) == (min(s["timestamp"]), max(s["timestamp"])), sid
    by_id = {r[0]: r for r in rows}
    # The scrubbed fixture whose file name differs from its sessionId.
    assert by_id[S_EPISODIC][6] == "-home-user-episodic-memory-fixture"
    assert by_id[S_LIVECD_1][1:3] == ("/home/ubuntu/Documents/livecd-gen", "main")


# -- 2. search over the corpus -----------------------------------------------------------------


def test_search_finds_text_and_reports_the_hit_fields(corpus: Corpus) -> None:
    hits = corpus.deja_json("search", "systemd-nspawn", "--json", *KEYWORD)["hits"]
    assert hits
    for h in hits:
        assert HIT_KEYS <= set(h), h
        assert "nspawn" in h["snippet"].lower()
    assert {h["session_id"] for h in hits} <= {S_LIVECD_1, S_LIVECD_2}
    assert all(h["project"] == "/home/ubuntu/Documents/livecd-gen" for h in hits)
    # A Chinese-language session is searchable too.
    # A Chinese-language prompt (2764ab64, "删除掉下载的是所有avd") is found by a phrase inside it.
    zh = corpus.deja_json("search", "下载", "--json", *KEYWORD)["hits"]
    assert "846c7e23-192e-4449-9f37-98369edd9d69" in {h["uuid"] for h in zh}


def test_words_after_a_nul_in_a_real_tool_result_are_searchable(corpus: Corpus) -> None:
    """2764ab64 line cfa3b9a8: `cat` of an ELF file, NULs from character 699 on."""
    uuid = "cfa3b9a8-b3ac-4754-ba5b-281e45a0f442"
    assert corpus.sql("SELECT text_len FROM records WHERE uuid = ?", (uuid,)) == [(21615,)]
    for word in ("libhidlbase", "strtoul"):  # only after the first NUL
        hits = corpus.deja_json("search", word, "--json", *KEYWORD)["hits"]
        assert uuid in {h["uuid"] for h in hits}, word


_DRIVER = r"""
import contextlib, io, json, sys
from mcp_server.cli import main
results = []
for argv in json.load(sys.stdin):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001
            rc = f"{type(exc).__name__}: {exc}"
    results.append({"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()[-3000:]})
sys.__stdout__.write(json.dumps(results))
"""

QUERIES = [
    '"', "'", "*", "**", "NEAR", "NEAR(nspawn chroot)", "nspawn NEAR chroot",
    "NEAR/2", "AND", "OR", "NOT", "AND OR NOT", "nspawn AND", "OR nspawn", "nspawn NOT chroot",
    "(", ")", "(nspawn", "nspawn)", "(a OR b) AND c", '"unterminated phrase', 'say "hi', '""',
    '"" ""', "-", "systemd-nspawn", "arch-chroot --help", "a.b()", "README.md", "os.path.join(a, b)",
    "*.jsonl", "nspawn*", "*nspawn", "c++", "C#", "100%", "^start", "col:value", "text:nspawn",
    "records_fts", "rowid", "{}", "[]", "\\", "a'b", "it's", "$HOME/.claude", "~/x", "x=1;y=2",
    "😀", "安卓 模拟器", "naïve café", "   spaced    out   ", "drop table records; --",
    "' OR 1=1 --", "nspawn " * 300,
]
DASH_QUERIES = ["-rf", "--force", "-", "--", "-x -y", "--db"]


def test_any_text_is_a_valid_query(sqlite_corpus: Corpus) -> None:
    """Every query: exit 0 and {"hits": [...]} with the hit fields (one process, many CLI runs)."""
    corpus = sqlite_corpus
    argvs = [["--db", str(corpus.db), "search", *KEYWORD, q, "--json"] for q in QUERIES]
    # A query that starts with a dash is passed after "--", as for any command line tool.
    argvs += [["--db", str(corpus.db), "search", *KEYWORD, "--json", "--", q] for q in DASH_QUERIES]
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER], input=json.dumps(argvs), capture_output=True, text=True,
        timeout=300, env=deja_env(corpus.home), cwd=str(REPO),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    failures = []
    for argv, res in zip(argvs, results):
        query = argv[-1] if argv[-2] == "--" else argv[-2]
        try:
            assert res["rc"] == 0, f"exit {res['rc']}: {res['stderr'][-500:]}"
            lines = [line for line in res["stdout"].splitlines() if line.strip()]
            assert len(lines) == 1, res["stdout"][:300]
            data = json.loads(lines[0])
            assert isinstance(data.get("hits"), list)
            for h in data["hits"]:
                assert HIT_KEYS <= set(h), h
                assert isinstance(h["snippet"], str) and isinstance(h["kind"], str)
        except AssertionError as exc:
            failures.append(f"{query[:40]!r}: {exc}")
    assert not failures, "\n".join(failures)
    by_query = {argv[-2] if argv[-2] != "--" else argv[-1]: json.loads(r["stdout"])["hits"]
                for argv, r in zip(argvs, results)}
    assert by_query["nspawn*"] and by_query["systemd-nspawn"] and by_query["NEAR(nspawn chroot)"] is not None


@pytest.mark.parametrize("query", ['"', "NEAR(", "a AND (b OR"])
def test_awkward_queries_in_their_own_process(sqlite_corpus: Corpus, query: str) -> None:
    corpus = sqlite_corpus
    proc = _deja(corpus.home, "--db", str(corpus.db), "search", *KEYWORD, query, "--json")
    assert proc.returncode == 0, proc.stderr
    assert isinstance(json.loads(proc.stdout)["hits"], list)


def test_concurrent_searches_while_reingesting(corpus: Corpus) -> None:
    """Readers and the ingest pass share the file (WAL) or the server: nothing fails, nothing
    is added."""
    def search(q: str) -> subprocess.CompletedProcess[str]:
        return _deja(corpus.home, "--db", str(corpus.db), "search", *KEYWORD, q, "--json")

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(search, q) for q in ("nspawn", "AVD root", "contract expiry")]
        again = _deja(corpus.home, "--db", str(corpus.db), "ingest", "--root", str(corpus.root),
                      "--json", "--no-embed")
        for f in futures:
            res = f.result()
            assert res.returncode == 0, res.stderr
            assert json.loads(res.stdout)["hits"]
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["new_records"] == 0 and summary["files_read"] == 0


# -- 6. the database file ----------------------------------------------------------------------


def test_database_follows_the_design(sqlite_corpus: Corpus) -> None:
    corpus = sqlite_corpus
    db = Path(corpus.db)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    for suffix in ("-wal", "-shm"):
        side = Path(str(db) + suffix)
        if side.exists():
            assert stat.S_IMODE(side.stat().st_mode) == 0o600, side
    assert corpus.sql("PRAGMA journal_mode") == [("wal",)]
    assert corpus.sql("PRAGMA user_version") == [(SCHEMA_VERSION,)]
    schema = dict(corpus.sql("SELECT name, sql FROM sqlite_master"))
    assert "vec BLOB" in schema["chunk_vectors"] and "bits BLOB" in schema["chunks"]
    assert "embedding_model" in schema and "CREATE TABLE" in schema["embedding_model"]
    assert "USING fts5" in schema["records_fts"] and "contentless_delete=1" in schema["records_fts"]
    # sqlite-vec loads on the same file and its Hamming distance (the coarse
    # vector scan) answers; the file and its full-text index are sound.
    import sqlite_vec

    conn = sqlean.connect(f"file:{db}?mode=ro", uri=True)
    try:
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        assert conn.execute("SELECT vec_distance_hamming(vec_bit(x'0f'), vec_bit(x'01'))"
                            ).fetchone()[0] == 3
        assert conn.execute("SELECT COUNT(*) FROM chunk_vectors").fetchone()[0] == 0
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()


# -- 2. fidelity on a made-up session ----------------------------------------------------------


def test_long_tool_results_are_kept_to_the_cap_and_searchable_deep_inside(
        tmp_path: Path, db_target: Target) -> None:
    session = "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9"
    root = tmp_path / "projects"
    kw = {"cwd": "/home/dev/deep", "gitBranch": "feature/deep"}
    command = {"command": "cat big.log | grep -n 'x' \"quoted\" ünïcödé\nsecond line", "timeout": 60}
    deep = "".join(f"log line {i:06d} ok\n" for i in range(2200))  # ~46 KB
    assert len(deep) > 40_000
    result_60k = deep + "zephyrquokka appears once here\n" + "tail filler\n" * 1000
    assert 40_000 < result_60k.index("zephyrquokka") and len(result_60k) < TEXT_CAP
    result_200k = "".join(f"row {i:07d} marmotvalue\n" for i in range(8000)) + "x" * 8000
    assert len(result_200k) == 200_000
    exactly_cap = "c" * (TEXT_CAP - 12) + " capboundary"
    lines = [
        user(session, "fp-1", "Why does the deep log grow?", ts="2025-04-02T08:00:00.000Z", **kw),
        assistant(session, "fa-1", [
            {"type": "thinking", "thinking": "Look at the log first.", "signature": "c2ln"},
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_01Deep", "name": "Bash", "input": command},
        ], ts="2025-04-02T08:00:05.000Z", model="claude-opus-4-5", **kw),
        tool_result(session, "fr-1", "toolu_01Deep", result_60k, ts="2025-04-02T08:00:09.000Z", **kw),
        tool_result(session, "fr-2", "toolu_01Deep", result_200k, ts="2025-04-02T08:00:10.000Z", **kw),
        tool_result(session, "fr-3", "toolu_01Deep",
                    [{"type": "text", "text": exactly_cap}], ts="2025-04-02T08:00:11.000Z", **kw),
    ]
    write(root / "-home-dev-deep" / f"{session}.jsonl", lines)
    home = tmp_path / "home"
    home.mkdir()
    db = db_target
    out = deja_json(home, "--db", str(db), "ingest", "--root", str(root), "--json", "--no-embed")
    assert out["new_records"] == 7
    columns = ("kind", "text", "cwd", "git_branch", "ts", "model", "tool_name", "tool_use_id",
               "text_len", "truncated")

    def rec(uuid: str, part: int = 0) -> dict[str, Any]:
        rows = sql(db, f"SELECT {', '.join(columns)} FROM records WHERE uuid = ? AND part = ?",
                   (uuid, part))
        assert len(rows) == 1, (uuid, part)
        return dict(zip(columns, rows[0]))

    p = rec("fp-1")
    assert (p["kind"], p["text"], p["cwd"], p["git_branch"], p["ts"]) == (
        "prompt", "Why does the deep log grow?", "/home/dev/deep", "feature/deep", "2025-04-02T08:00:00.000Z")
    thinking, text, call = rec("fa-1", 0), rec("fa-1", 1), rec("fa-1", 2)
    assert (thinking["kind"], thinking["text"], thinking["model"]) == ("thinking", "Look at the log first.",
                                                                        "claude-opus-4-5")
    assert (text["kind"], text["text"], text["model"]) == ("assistant", "Let me look.", "claude-opus-4-5")
    assert (call["kind"], call["tool_name"], call["tool_use_id"]) == ("tool_call", "Bash", "toolu_01Deep")
    assert json.loads(call["text"][len("Bash "):]) == command
    assert call["ts"] == "2025-04-02T08:00:05.000Z" and call["cwd"] == "/home/dev/deep"

    r1 = rec("fr-1")
    assert (r1["text"], r1["text_len"], r1["truncated"], r1["tool_name"]) == (
        result_60k, len(result_60k), 0, "Bash")
    r2 = rec("fr-2")
    assert (r2["truncated"], r2["text_len"]) == (1, 200_000)
    marker_at = r2["text"].rindex("[deja: truncated")
    assert "\n" not in r2["text"][marker_at:]  # the marker ends the text
    body = r2["text"][:marker_at].rstrip("\n")
    assert len(body) >= TEXT_CAP and result_200k.startswith(body)
    r3 = rec("fr-3")
    assert (r3["text"], r3["truncated"], r3["text_len"]) == (exactly_cap, 0, TEXT_CAP)

    hits = deja_json(home, "--db", str(db), "search", "zephyrquokka", "--json", *KEYWORD)["hits"]
    assert [h["uuid"] for h in hits] == ["fr-1"]
    h = hits[0]
    assert (h["session_id"], h["kind"], h["project"], h["timestamp"]) == (
        session, "tool_result", "/home/dev/deep", "2025-04-02T08:00:09.000Z")
    assert "zephyrquokka" in h["snippet"]
    hits = deja_json(home, "--db", str(db), "search", "capboundary", "--json", *KEYWORD)["hits"]
    assert [h["uuid"] for h in hits] == ["fr-3"]
