"""Search end to end: filters, limits, budgets, the JSON contract, degraded modes.

One generated corpus (plus tests/sample) is ingested and embedded once per
module with the real model. It is built so that filters exclude most of it:
~500 records of one project talk about databases, and a handful of records
(another project, another session, a rare kind, a rare tool, an old time
range) talk about something else entirely. vec0 runs its KNN before an outer
WHERE, so a filter applied after the KNN would find none of the rare records
for a database question; the engine must return every matching record, up
to the limit. Counts are checked against brute-force SQL.

The CLI runs as a subprocess (`deja search ... --json`) where the process
boundary matters (exit codes, stderr, the JSON on stdout); the library
(`mcp_server.search.search`) everywhere else, for speed.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from fixtures.cli import deja, deja_json
from fixtures.embedders import FixedEmbedder
from fixtures.paths import MODEL_CACHE, SAMPLE
from fixtures.transcripts import SessionFile
from ingest.db import connect, make_connector
from ingest.embed import DEFAULT_MODEL, Embedder, load_embedder
from ingest.errors import InvalidQuery
from ingest.quantize import bits_rows, int8_rows
from ingest.store import Store
from mcp_server.search import (FUSION, Resources, SearchFilters, SearchRequest, VectorIndex,
                               search)
from mcp_server.search.snippets import SNIPPET_CHARS

QUERY = "database migration locked"

# -- writing transcripts -----------------------------------------------------------------------


_SUBJECTS = ["the sqlite database", "schema version seven", "the users table", "the orders table",
             "the FTS index", "the WAL file", "the nightly migration", "the staging database",
             "the migration runner", "the connection pool", "the backup job", "the read replica"]
_PROBLEMS = ["stays locked during the migration", "fails with database is locked",
             "needs a migration to add a column", "blocks writers while the migration runs",
             "was migrated twice by two processes", "keeps a stale lock after the crash",
             "rolls back the migration on a constraint error", "times out on the database lock"]
_FIXES = ["retry with a busy timeout", "take an exclusive lock before migrating",
          "split the migration into smaller transactions", "add the missing index first",
          "run the migration from one process only", "check PRAGMA user_version before migrating"]


def _bulk_text(rng: random.Random) -> str:
    return (f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_PROBLEMS)}; "
            f"we should {rng.choice(_FIXES)} (ticket {rng.randrange(1000, 9999)}).")


def build_corpus(root: Path, now: datetime) -> dict[str, Any]:
    """The generated transcripts; returns what the tests need to know about them."""
    rng = random.Random(7)
    info: dict[str, Any] = {}
    day0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
    for s in range(5):
        f = SessionFile(root, "-home-bench-bulk", f"bulk-{s:04d}-0000-0000-000000000000",
                        "/home/bench/bulk", day0 + timedelta(days=s))
        for _ in range(20):
            f.prompt(_bulk_text(rng))
            f.say(_bulk_text(rng))
            f.tool("Bash", {"command": f"sqlite3 app.db 'PRAGMA user_version' # {rng.random():.6f}"},
                   _bulk_text(rng))
        if s == 0:  # a rare tool inside the bulk session
            for topic in ("tide tables for the harbour", "ferry timetable to the island",
                          "lighthouse opening hours"):
                f.tool("WebFetch", {"url": f"https://example.org/{topic.replace(' ', '-')}",
                                    "prompt": f"find the {topic}"},
                       f"The page lists the {topic} for the summer season.")
        if s == 1:  # a rare kind inside the bulk session
            for thought in ("Maybe the poem needs a softer rhyme in the second stanza.",
                            "The violin part could move up an octave at the chorus.",
                            "A watercolour wash would suit the sky better than ink.",
                            "The recipe wants more cardamom and less sugar."):
                f.think(thought)
        if s == 2:  # the match sits deep inside a long answer
            f.say("Background. " + " ".join(_bulk_text(rng) for _ in range(30))
                  + " The codename of the release is zanzibarquux, remember it. "
                  + " The tanker was refuelled at dawn. "
                  + " ".join(_bulk_text(rng) for _ in range(5)))
        f.save()

    # A rare session in the bulk project.
    f = SessionFile(root, "-home-bench-bulk", "raresess-0000-0000-0000-000000000000",
                    "/home/bench/bulk", day0 + timedelta(days=1, hours=5))
    f.prompt("How often should I oil the bicycle chain?")
    f.say("Oil the chain every few hundred kilometres, and after riding in the rain.")
    f.prompt("And the gears keep skipping on the steep hill.")
    f.say("Adjust the rear derailleur cable tension by a quarter turn.")
    f.save()

    # An old session in the bulk project (2025-06-15 10:00 ... 10:04).
    f = SessionFile(root, "-home-bench-bulk", "oldsess0-0000-0000-0000-000000000000",
                    "/home/bench/bulk", datetime(2025, 6, 15, 10, 0, tzinfo=timezone.utc))
    for text in ("Plan the summer hiking trip to the fjords.", "Pack a rain jacket and boots.",
                 "Book the cabin near the glacier.", "Check the ferry to the trailhead.",
                 "Bring a map and a compass."):
        f.say(text)
    f.save()

    # A rare project, and a second one whose cwd is a subfolder of the first.
    f = SessionFile(root, "-home-bench-rare", "rarepa00-0000-0000-0000-000000000000",
                    "/home/bench/rare", day0 + timedelta(days=2))
    f.prompt("The greenhouse tomatoes need watering twice a day in July.")
    f.say("Mulch around the tomato plants keeps the soil moist longer.")
    f.prompt("What about the basil next to the tomatoes?")
    f.say("Basil likes the same warmth; pinch the flowers off.")
    f.say("Stake the tall tomato vines before the fruit gets heavy.")
    f.save()
    f = SessionFile(root, "-home-bench-rare-pkg", "rarepb00-0000-0000-0000-000000000000",
                    "/home/bench/rare/pkg", day0 + timedelta(days=3))
    f.prompt("Knit a scarf with the blue merino wool.")
    f.say("Cast on forty stitches and use a rib pattern.")
    f.say("Block the scarf after washing so it keeps its shape.")
    f.save()

    # Records relative to now, for 7d / 2w / yesterday.
    f = SessionFile(root, "-home-bench-timeline", "timeline-0000-0000-0000-000000000000",
                    "/home/bench/timeline", now - timedelta(days=40))
    ages = {"40d": timedelta(days=40), "20d": timedelta(days=20), "10d": timedelta(days=10),
            "3d": timedelta(days=3), "1h": timedelta(hours=1)}
    info["timeline"] = {}
    for label, age in ages.items():
        info["timeline"][label] = f.say(f"chronomarker note written {label} ago", ts=now - age)
    f.save()
    return info


# -- fixtures ---------------------------------------------------------------------------------


class Corpus:
    def __init__(self, db: Path, root: Path, home: Path, info: dict[str, Any],
                 embedder: Embedder) -> None:
        self.db = db
        self.root = root
        self.home = home
        self.info = info
        self.embedder = embedder

    def search(self, query: str, *, indexed: bool = False, fusion: dict[str, Any] | None = None,
               **kw: Any) -> Any:
        """The library search on a fresh connection (returns SearchResult).

        kw: the SearchRequest's fields; fusion: overrides of FUSION.
        indexed: as the server searches, with a loaded in-memory VectorIndex and
        the vector ranker on a second connection.
        """
        tuned = dataclasses.replace(FUSION, **(fusion or {}))

        async def go() -> Any:
            request = SearchRequest(query, **kw)
            store = await Store.open(self.db)
            second = await connect(self.db) if indexed else None
            try:
                resources = Resources(embedder=self.embedder)
                if second is not None:
                    index = VectorIndex()
                    await index.refresh(second)
                    assert len(index) == self.sql("SELECT COUNT(*) FROM chunks")[0][0]
                    resources = Resources(embedder=self.embedder, vector_index=index,
                                          vector_conn=second)
                return await search(store.conn, request, resources, fusion=tuned)
            finally:
                await store.close()
                if second is not None:
                    await second.close()

        return anyio.run(go)

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
        conn = make_connector(self.db, readonly=True)()
        try:
            return conn.execute(query, params).fetchall()
        finally:
            conn.close()

    def cli(self, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = deja_json(self.home, "--db", str(self.db), *args, env=env)
        return out


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return load_embedder(None, "auto", cache_dir=MODEL_CACHE, local_files_only=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Iterator[Corpus]:
    base = tmp_path_factory.mktemp("search")
    root = base / "projects"
    home = base / "home"
    home.mkdir()
    info = build_corpus(root, datetime.now(timezone.utc))
    # A project whose folder exists, for `--project .` run from inside it.
    real = base / "work" / "walrus-app"
    (real / "src").mkdir(parents=True)
    f = SessionFile(root, str(real).replace("/", "-").replace("_", "-"),
                    "walrus00-0000-0000-0000-000000000000", str(real),
                    datetime(2026, 3, 20, tzinfo=timezone.utc))
    f.prompt("Count the walrus inventory in the spreadsheet.")
    f.say("The walrus inventory has 42 rows.")
    f.save()
    info["real_project"] = real
    db = base / "data" / "deja.db"
    out = deja_json(home, "--db", str(db), "ingest", "--root", str(root), "--root", str(SAMPLE),
                    "--json", embed=True)
    assert out["pending_embeddings"] == 0 and out["embedded"] > 400, out
    yield Corpus(db, root, home, info, embedder)


# -- filters never starve: every matching record comes back, up to the limit ------------------

# (label, search kwargs, SQL over records r joined to sources s selecting the matching ids)
FILTERS = [
    ("project folder", {"project": "-home-bench-rare"}, "s.project_dir = '-home-bench-rare'"),
    ("project path covers subfolder cwd", {"project": "/home/bench/rare"},
     "s.project_dir IN ('-home-bench-rare', '-home-bench-rare-pkg')"),
    ("project path of the subfolder", {"project": "/home/bench/rare/pkg"},
     "s.project_dir = '-home-bench-rare-pkg'"),
    ("session", {"session_id": "raresess-0000-0000-0000-000000000000"},
     "r.session_id = 'raresess-0000-0000-0000-000000000000'"),
    ("session in all projects", {"session_id": "raresess-0000-0000-0000-000000000000",
                                 "project": "all"},
     "r.session_id = 'raresess-0000-0000-0000-000000000000'"),
    ("kind", {"kinds": ["thinking"]}, "r.kind = 'thinking'"),
    ("several kinds", {"kinds": ["thinking", "compact_summary", "summary"]},
     "r.kind IN ('thinking', 'compact_summary', 'summary')"),
    ("several kinds and a project", {"kinds": ["prompt", "assistant"],
                                     "project": "-home-bench-rare-pkg"},
     "r.kind IN ('prompt', 'assistant') AND s.project_dir = '-home-bench-rare-pkg'"),
    ("tool", {"tool": "WebFetch"}, "r.tool_name = 'WebFetch'"),
    ("tool and kind", {"tool": "WebFetch", "kinds": ["tool_result"]},
     "r.tool_name = 'WebFetch' AND r.kind = 'tool_result'"),
    ("time range", {"since": "2025-06-01", "until": "2025-07-01"},
     "r.ts >= '2025-06-01' AND r.ts < '2025-07-01'"),
    ("time range and project", {"since": "2025-06-01", "until": "2025-07-01",
                                "project": "/home/bench/bulk"},
     "r.ts >= '2025-06-01' AND r.ts < '2025-07-01' AND s.project_dir = '-home-bench-bulk'"),
]


def _expected(corpus: Corpus, where: str) -> set[str]:
    """uuids of the embedded records matching `where`: the ones vector search can find."""
    rows = corpus.sql(
        "SELECT DISTINCT r.uuid FROM records r JOIN sources s ON s.id = r.source_id "
        f"WHERE r.embed_state = 1 AND EXISTS (SELECT 1 FROM chunks c WHERE c.record_id = r.id) "
        f"AND {where}")
    return {r[0] for r in rows}


def test_the_rare_records_are_far_outside_the_unfiltered_top(corpus: Corpus) -> None:
    """The premise: an unfiltered KNN over the query's neighbours finds none of them."""
    hits = corpus.search(QUERY, mode="vector", limit=200).hits
    rare = _expected(corpus, "s.project_dir IN ('-home-bench-rare', '-home-bench-rare-pkg') "
                             "OR r.kind = 'thinking' OR r.tool_name = 'WebFetch' "
                             "OR r.session_id LIKE 'raresess%' OR r.ts < '2026'")
    assert len(rare) >= 25
    top = {h.uuid for h in hits[:100]}
    assert not top & rare
    total = corpus.sql("SELECT COUNT(*) FROM records WHERE embed_state = 1")[0][0]
    assert len(rare) / total < 0.07  # and each filter below keeps 1 to 2% of the corpus


@pytest.mark.parametrize("path", ["sql", "index"])
@pytest.mark.parametrize("mode", ["vector", "hybrid"])
@pytest.mark.parametrize("label,kwargs,where", FILTERS, ids=[f[0] for f in FILTERS])
def test_filtered_query_returns_every_match_up_to_the_limit(
        corpus: Corpus, mode: str, label: str, kwargs: dict[str, Any], where: str,
        path: str) -> None:
    """Through the SQL scan and the in-memory index, with a coarse step far
    smaller than the corpus, so that the candidate count must grow."""
    expected = _expected(corpus, where)
    assert len(expected) >= 3, f"{label}: the corpus should have a few matches"
    for limit in (len(expected) + 5, 2):
        result = corpus.search(QUERY, mode=mode, limit=limit, indexed=path == "index",
                               fusion={"coarse": 10, "candidates": 20}, **kwargs)
        assert result.vector_status == "ok"
        got = [h.uuid for h in result.hits]
        assert len(got) == len(set(got))
        assert set(got) <= expected, f"{label}: hits outside the filter"
        assert len(got) == min(limit, len(expected)), (
            f"{label} ({mode}, limit {limit}): {len(got)} hits, {len(expected)} exist")


def test_filtered_keyword_query_finds_every_match(corpus: Corpus) -> None:
    rows = corpus.sql("SELECT uuid FROM records WHERE text LIKE '%tomato%'")
    # The record after a match matches through its context column, below the
    # records holding the word themselves.
    after = corpus.sql(
        "SELECT n.uuid FROM records r JOIN records n ON n.source_id = r.source_id AND n.id = "
        "(SELECT MIN(id) FROM records x WHERE x.source_id = r.source_id AND x.id > r.id) "
        "WHERE r.text LIKE '%tomato%'")
    result = corpus.search("tomato", mode="keyword", limit=50, project="/home/bench/rare")
    got = [h.uuid for h in result.hits]
    direct = {r[0] for r in rows}
    assert set(got[:len(direct)]) == direct
    assert set(got[len(direct):]) <= {r[0] for r in after} - direct
    assert all("tomato" in h.snippet.lower() for h in result.hits[:len(direct)])


def test_filters_through_the_cli_match_the_library(corpus: Corpus) -> None:
    expected = _expected(corpus, "r.tool_name = 'WebFetch' AND r.kind IN ('tool_call', 'tool_result')")
    out = corpus.cli("search", QUERY, "--json", "--tool", "WebFetch", "--kind", "tool_call",
                     "--kind", "tool_result", "--limit", "50")
    assert out["vector_status"] == "ok"
    assert {h["uuid"] for h in out["hits"]} == expected
    out = corpus.cli("search", QUERY, "--json", "--project", "/home/bench/rare", "--session",
                     "rarepb00-0000-0000-0000-000000000000")
    assert {h["uuid"] for h in out["hits"]} == _expected(
        corpus, "r.session_id = 'rarepb00-0000-0000-0000-000000000000'")
    assert {h["project"] for h in out["hits"]} == {"/home/bench/rare/pkg"}


def _many_chunk_db(path: Path, rng: np.random.Generator) -> np.ndarray:
    """2,000 one-chunk records in one project; 220 twelve-chunk records in another.

    Vectors straight into the schema (the plumbing, not the model, is under
    test). The chunks of a long record lie close together, as the windows of
    one long answer do. Returns the query vector.
    """
    async def create() -> None:
        await (await Store.open(path)).close()

    anyio.run(create)
    conn = make_connector(path)()
    try:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO embedding_model VALUES (1, ?, 384, '2026-01-01')", (DEFAULT_MODEL,))
        conn.execute("INSERT INTO sources (id, path, display_path, project_dir, layout) VALUES "
                     "(1, x'61', 'a', '-p-big', 'session'), (2, x'62', 'b', '-p-long', 'session')")
        query = rng.normal(size=384).astype(np.float32)
        query /= np.linalg.norm(query)
        rid = cid = 0
        for source, n_records, n_chunks in ((1, 2000, 1), (2, 220, 12)):
            for _ in range(n_records):
                rid += 1
                conn.execute(
                    "INSERT INTO records (id, source_id, line_key, part, uuid, session_id, kind, "
                    "text, text_len, ts, embed_state) VALUES (?, ?, ?, 0, ?, 's', 'assistant', ?, "
                    "10, '2026-01-01T00:00:00.000Z', 1)",
                    (rid, source, f"k{rid}", f"u{rid}", f"record {rid}"))
                # the big project sits near the query; the long records farther away
                center = query * (0.8 if source == 1 else 0.1) + rng.normal(size=384) * 0.05
                for seq in range(n_chunks):
                    cid += 1
                    v = (center + rng.normal(size=384) * 0.002).astype(np.float32)
                    v /= np.linalg.norm(v)
                    conn.execute("INSERT INTO chunks VALUES (?, ?, ?, 0, 10, ?)",
                                 (cid, rid, seq, bits_rows(v)[0]))
                    conn.execute("INSERT INTO chunk_vectors VALUES (?, ?)", (cid, int8_rows(v)[0]))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return query


@pytest.mark.parametrize("mode", ["vector", "hybrid"])
def test_records_with_many_chunks_do_not_starve_a_filtered_query(tmp_path: Path, mode: str) -> None:
    db = tmp_path / "many.db"
    query = _many_chunk_db(db, np.random.default_rng(3))

    async def go() -> Any:
        store = await Store.open(db)
        try:
            return await search(store.conn, SearchRequest(
                "nothing matches this by keyword", mode=mode, limit=200, project="-p-long"),
                Resources(embedder=FixedEmbedder(query)))  # type: ignore[arg-type]
        finally:
            await store.close()

    result = anyio.run(go)
    assert result.vector_status == "ok"
    assert len(result.hits) == 200  # of 220 matching records


def test_the_in_memory_index_starts_empty_and_grows(tmp_path: Path) -> None:
    """A server starts on a database without vectors: its index is ready and empty,
    then takes the first chunks written."""
    db = tmp_path / "empty.db"
    vector = np.ones(384, dtype=np.float32) / np.sqrt(384)

    async def go() -> tuple[int, int, int, list[int]]:
        store = await Store.open(db)
        index = VectorIndex()
        try:
            first = await index.refresh(store.conn)
            empty = len(index) if index.ready else -1
            await store.conn.execute(
                "INSERT INTO sources (id, path, display_path, project_dir, layout) "
                "VALUES (1, x'61', 'a', '-p', 'session')")
            await store.conn.execute(
                "INSERT INTO records (id, source_id, line_key, part, kind, text, text_len) "
                "VALUES (7, 1, 'k', 0, 'assistant', 'x', 1)")
            await store.conn.execute("INSERT INTO chunks VALUES (70, 7, 0, 0, 1, ?)",
                                     (bits_rows(vector)[0],))
            await store.conn.commit()
            added = await index.refresh(store.conn)
            ids, _ = index.candidates(bits_rows(vector)[0], SearchFilters(), 10)
            return first, empty, added, ids
        finally:
            await store.close()

    assert anyio.run(go) == (0, 0, 1, [70])


def test_the_in_memory_index_follows_new_deleted_and_reembedded_chunks(tmp_path: Path) -> None:
    """The server's index: chunks added after its last refresh are found (the SQL
    tail), deleted ones never come back, and deletions or a new model generation
    make the next refresh reload everything."""
    db = tmp_path / "index.db"
    query = _many_chunk_db(db, np.random.default_rng(5))
    n_chunks = 2000 + 220 * 12

    def add_record(conn: Any, rid: int, vector: np.ndarray) -> None:
        conn.execute("INSERT INTO records (id, source_id, line_key, part, uuid, session_id, kind, "
                     "text, text_len, ts, embed_state) VALUES (?, 1, ?, 0, ?, 's', 'assistant', "
                     "'new', 3, '2026-02-01T00:00:00.000Z', 1)", (rid, f"k{rid}", f"u{rid}"))
        conn.execute("INSERT INTO chunks VALUES (?, ?, 0, 0, 3, ?)", (rid + 100_000, rid,
                                                                     bits_rows(vector)[0]))
        conn.execute("INSERT INTO chunk_vectors VALUES (?, ?)", (rid + 100_000, int8_rows(vector)[0]))

    async def go() -> dict[str, Any]:
        store = await Store.open(db)
        second = await connect(db)
        index = VectorIndex()
        out: dict[str, Any] = {}

        async def top(**filters: Any) -> list[str]:
            result = await search(
                store.conn, SearchRequest("no keyword match", mode="vector", limit=3, **filters),
                Resources(embedder=FixedEmbedder(query),  # type: ignore[arg-type]
                          vector_index=index, vector_conn=second),
                fusion=dataclasses.replace(FUSION, coarse=10_000))
            return [h.uuid for h in result.hits]

        try:
            out["loaded"] = await index.refresh(second)
            out["before"] = await top()
            # A record written after the refresh, nearer the query than any other.
            raw = make_connector(db)()
            add_record(raw, 9001, query)
            raw.commit()
            out["tail"] = await top()
            out["tail_project"] = await top(project="-p-big")
            out["incremental"] = await index.refresh(second)
            out["after_refresh"] = await top()
            # Deleted: gone at once (the exact step reads the database), reloaded on refresh.
            raw.execute("DELETE FROM records WHERE id = 9001")
            raw.commit()
            out["deleted"] = await top()
            out["reloaded"] = await index.refresh(second)
            # Re-embedded under a new generation, reusing chunk ids: reloaded too.
            raw.execute("UPDATE embedding_model SET created_at = '2026-09-09'")
            raw.commit()
            out["regenerated"] = await index.refresh(second)
            out["idle"] = await index.refresh(second)
            raw.close()
            return out
        finally:
            await store.close()
            await second.close()

    out = anyio.run(go)
    assert out["loaded"] == n_chunks
    assert out["tail"][0] == "u9001" and out["tail"][1:] == out["before"][:2]
    assert out["tail_project"][0] == "u9001"
    assert out["incremental"] == 1 and out["after_refresh"][0] == "u9001"
    assert out["deleted"] == out["before"]
    assert out["reloaded"] == n_chunks and out["regenerated"] == n_chunks
    assert out["idle"] == 0

# -- project, time and other filter forms -----------------------------------------------------


def test_project_all_and_unknown(corpus: Corpus) -> None:
    everything = corpus.search("chronomarker OR tomato OR redis", mode="keyword", limit=50)
    assert {h.project for h in everything.hits} >= {"/home/bench/timeline", "/home/bench/rare",
                                                    "/home/demo/shop-api"}
    assert corpus.search("tomato", mode="keyword", project="all").hits
    assert corpus.search("tomato", mode="keyword", project="-home-bench-rare").hits
    assert not corpus.search("tomato", mode="keyword", project="-home-bench-bulk").hits
    unknown = corpus.search("tomato", project="/home/nobody/nothing")
    assert unknown.hits == []


def test_project_as_an_absolute_path_of_an_existing_folder(corpus: Corpus) -> None:
    real = corpus.info["real_project"]
    out = corpus.cli("search", "walrus inventory", "--json", "--project", str(real))
    assert len(out["hits"]) == 2 and {h["project"] for h in out["hits"]} == {str(real)}


def test_project_dot_means_the_current_folder(corpus: Corpus) -> None:
    real = corpus.info["real_project"]
    for cwd in (real, real / "src"):
        proc = deja(corpus.home, "--db", str(corpus.db), "search", "walrus inventory",
                    "--json", "--mode", "keyword", "--project", ".", cwd=cwd, expect=None)
        assert proc.returncode == 0, proc.stderr
        assert len(json.loads(proc.stdout)["hits"]) == 2, cwd


def test_project_given_as_a_subfolder_of_its_cwd(corpus: Corpus) -> None:
    result = corpus.search("tomato", mode="keyword", project="/home/bench/rare/src/lib")
    assert {h.project for h in result.hits} == {"/home/bench/rare"}


@pytest.mark.parametrize("since,until,labels", [
    ("7d", None, {"3d", "1h"}),
    ("2w", None, {"10d", "3d", "1h"}),
    ("yesterday", None, {"1h"}),
    ("30d", "7d", {"20d", "10d"}),
    ("2w", "yesterday", {"10d", "3d"}),
    ("25 days ago", "9d", {"20d", "10d"}),
    (None, "30d", {"40d"}),
])
def test_relative_time_filters(corpus: Corpus, since: str | None, until: str | None,
                               labels: set[str]) -> None:
    for mode in ("keyword", "hybrid"):
        result = corpus.search("chronomarker", mode=mode, limit=20, since=since, until=until,
                               project="/home/bench/timeline")
        want = {corpus.info["timeline"][label] for label in labels}
        assert {h.uuid for h in result.hits} == want, (mode, since, until)


def test_iso_time_filters_include_since_and_exclude_until(corpus: Corpus) -> None:
    def uuids(**kw: Any) -> list[str]:
        r = corpus.search("fjords rain cabin ferry map", mode="keyword", limit=20,
                          session_id="oldsess0-0000-0000-0000-000000000000", **kw)
        return sorted(h.timestamp for h in r.hits)

    assert len(uuids()) == 5
    assert uuids(since="2025-06-15T10:02", until="2025-06-15T10:04:00Z") == [
        "2025-06-15T10:02:00.000Z", "2025-06-15T10:03:00.000Z"]
    assert uuids(since="2025-06-15T10:02:00+00:00") == [
        f"2025-06-15T10:0{m}:00.000Z" for m in (2, 3, 4)]
    assert uuids(until="2025-06-15") == []
    assert len(uuids(since="2025-06-15", until="2025-06-16")) == 5


def test_cli_relative_and_iso_dates(corpus: Corpus) -> None:
    out = corpus.cli("search", "chronomarker", "--json", "--since", "2w", "--until", "yesterday")
    want = {corpus.info["timeline"][k] for k in ("10d", "3d")}
    assert {h["uuid"] for h in out["hits"]} == want
    out = corpus.cli("search", "fjords", "--json", "--mode", "keyword", "--since", "2025-06-01",
                     "--until", "2025-07-01")
    assert out["hits"] and all(h["timestamp"].startswith("2025-06-15") for h in out["hits"])


@pytest.mark.parametrize("args,message", [
    (["--since", "last tuesday"], "cannot read the time"),
    (["--until", "2026-13-45"], "cannot read the time"),
    (["--kind", "bogus"], "unknown kind"),
    (["--limit", "0"], "limit"),
    (["--limit", "100000"], "limit"),
    (["--max-tokens", "5"], "max_tokens"),
])
def test_bad_values_are_clear_errors(corpus: Corpus, args: list[str], message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """In-process for speed (keyword mode loads no model); exit code 1, one line on stderr."""
    from mcp_server.cli import main

    code = main(["--db", str(corpus.db), "search", "tomato", "--json", "--mode", "keyword", *args])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.startswith("deja: ") and message in err and "Traceback" not in err
    assert err.count("\n") == 1 and out == ""


def test_bad_value_through_the_process_boundary(corpus: Corpus) -> None:
    proc = deja(corpus.home, "--db", str(corpus.db), "search", "tomato", "--json",
                "--since", "last tuesday", expect=None)
    assert proc.returncode == 1, proc
    assert proc.stderr.startswith("deja: ") and "cannot read the time 'last tuesday'" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_bad_values_raise_invalid_query_in_the_library(corpus: Corpus) -> None:
    for kw in ({"since": "soonish"}, {"kinds": ["nope"]}, {"limit": 0}, {"mode": "fuzzy"},
               {"max_tokens": 1}):
        with pytest.raises(InvalidQuery):
            corpus.search("tomato", **kw)


# -- bounded results: limit, budget, snippets, scores, handles --------------------------------


def test_limit_bounds_the_hits(corpus: Corpus) -> None:
    for limit in (1, 7, 40):
        assert len(corpus.search(QUERY, limit=limit).hits) == limit


def test_max_tokens_bounds_the_output_and_says_so(corpus: Corpus) -> None:
    full = corpus.search(QUERY, limit=40).to_dict()
    assert len(full["hits"]) == 40 and full["truncated_by_budget"] is False
    out = corpus.cli("search", QUERY, "--json", "--limit", "40", "--max-tokens", "300")
    assert out["truncated_by_budget"] is True
    assert 1 <= len(out["hits"]) < 40
    assert sum(len(h["snippet"]) for h in out["hits"]) / 4 <= 300
    # The budget keeps the best hits, in order.
    assert [h["uuid"] for h in out["hits"]] == [h["uuid"] for h in full["hits"][: len(out["hits"])]]


def test_hits_have_snippets_with_the_match_scores_and_handles(corpus: Corpus) -> None:
    out = corpus.cli("search", QUERY, "--json", "--limit", "20")
    hits = out["hits"]
    assert len(hits) == 20
    words = QUERY.split()
    both = 0
    for h in hits:
        scores = h["scores"]
        assert "bm25_rank" in scores or "vector_rank" in scores
        for key in ("bm25_rank", "vector_rank"):
            if key in scores:
                assert isinstance(scores[key], int) and scores[key] >= 1
        both += "bm25_rank" in scores and "vector_rank" in scores
        if scores.get("bm25_match") == "text":  # a word (maybe stemmed) matched: it shows
            assert any(w[:5] in h["snippet"].lower() for w in words), h["snippet"]
        elif "bm25_rank" in scores:  # matched through the record before it
            assert scores["bm25_match"] == "previous"
            before = corpus.sql("SELECT p.text FROM records r JOIN records p ON p.source_id = "
                                "r.source_id AND p.id < r.id WHERE r.id = ? ORDER BY p.id DESC "
                                "LIMIT 1", (h["record_id"],))
            assert any(w[:5] in before[0][0].lower() for w in words)
        assert h["handle"].startswith("rec:")
    assert both >= 5
    assert len({h["handle"] for h in hits}) == 20
    again = corpus.search(QUERY, limit=20)
    assert [h.handle for h in again.hits] == [h["handle"] for h in hits]


def test_snippet_shows_a_stemmed_match(corpus: Corpus) -> None:
    hits = corpus.search("refuelling", mode="keyword").hits
    assert len(hits) == 1
    assert "refuel" in hits[0].snippet.lower()


def test_snippet_shows_a_match_deep_inside_a_long_record(corpus: Corpus) -> None:
    hits = corpus.search("zanzibarquux", mode="keyword").hits
    assert len(hits) == 1
    assert "[zanzibarquux]" in hits[0].snippet
    # A window of the record (the word's brackets and two ellipses beside it), not all of it.
    assert hits[0].snippet.startswith("…") and len(hits[0].snippet) <= SNIPPET_CHARS + 4


def test_handle_names_the_hit(corpus: Corpus) -> None:
    from mcp_server.history import find_record

    hit = corpus.search("bicycle chain", limit=1).hits[0]

    async def go() -> Any:
        store = await Store.open(corpus.db)
        try:
            return await find_record(store.conn, hit.handle)
        finally:
            await store.close()

    row = anyio.run(go)
    assert row[0] == hit.id
    assert corpus.sql("SELECT uuid FROM records WHERE id = ?", (row[0],))[0][0] == hit.uuid


def test_json_contract(corpus: Corpus) -> None:
    out = corpus.cli("search", "redis timeout", "--json")
    assert isinstance(out["hits"], list) and out["hits"]
    for h in out["hits"]:
        assert {"uuid", "session_id", "project", "kind", "timestamp", "snippet", "handle",
                "scores"} <= set(h)
        assert isinstance(h["snippet"], str) and h["snippet"]
        assert isinstance(h["uuid"], str) and isinstance(h["session_id"], str)
        datetime.fromisoformat(h["timestamp"].replace("Z", "+00:00"))
    top = out["hits"][0]
    assert top["project"] == "/home/demo/shop-api"
    assert top["session_id"] == "7d5c2a4e-1f0b-4c1e-9a51-3b7e2f9d6c10"
    for key in ("vector_status", "notes", "pending_embeddings", "truncated_by_budget"):
        assert key in out
    # Without --json: readable text, no JSON.
    proc = deja(corpus.home, "--db", str(corpus.db), "search", "redis timeout", expect=None)
    assert proc.returncode == 0 and "redis" in proc.stdout.lower()
    assert not proc.stdout.lstrip().startswith("{")


# -- degraded: no vectors yet, no model ------------------------------------------------------


def test_without_vectors_search_answers_from_keywords_and_says_so(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    db = tmp_path / "d.db"
    out = deja_json(home, "--db", str(db), "ingest", "--root", str(SAMPLE), "--no-embed", "--json")
    assert out["pending_embeddings"] > 0
    for mode in ("hybrid", "vector"):
        res = deja_json(home, "--db", str(db), "search", "redis timeout", "--json", "--mode", mode)
        assert res["hits"] and "redis" in res["hits"][0]["snippet"].lower()
        assert res["mode"] == mode
        assert res["vector_status"] != "ok" and "embed" in res["vector_status"]
        assert any("keyword" in n for n in res["notes"])
        assert res["pending_embeddings"] == out["pending_embeddings"]
        assert all("vector_rank" not in h["scores"] for h in res["hits"])
    # Embedded, then more transcripts arrive unembedded: hits say how many wait.
    assert deja_json(home, "--db", str(db), "embed", "--json")["pending_embeddings"] == 0
    extra = tmp_path / "more"
    f = SessionFile(extra, "-home-demo-more", "more0000-0000-0000-0000-000000000000",
                    "/home/demo/more", datetime(2026, 5, 1, tzinfo=timezone.utc))
    f.prompt("redis cluster failover drill")
    f.save()
    deja_json(home, "--db", str(db), "ingest", "--root", str(extra), "--no-embed", "--json")
    res = deja_json(home, "--db", str(db), "search", "redis failover", "--json")
    assert res["vector_status"] == "ok" and res["pending_embeddings"] == 1
    assert any("await" in n for n in res["notes"])
    assert any(h["scores"].get("vector_rank") for h in res["hits"])
    keyword = Corpus(db, extra, home, {}, None).search("redis failover", mode="keyword")  # type: ignore[arg-type]
    assert keyword.hits[0].session_id == "more0000-0000-0000-0000-000000000000"


def test_a_pending_record_matching_every_word_stays_in_the_hybrid_top(
        corpus: Corpus, tmp_path: Path) -> None:
    import shutil

    db = tmp_path / "copy.db"
    conn = make_connector(corpus.db, readonly=True)()
    try:
        conn.execute("VACUUM INTO ?", (str(db),))
    finally:
        conn.close()
    extra = tmp_path / "more"
    f = SessionFile(extra, "-home-demo-more", "more0000-0000-0000-0000-000000000000",
                    "/home/demo/more", datetime(2026, 5, 1, tzinfo=timezone.utc))
    f.prompt("The staging database migration stayed locked by the zebra batch job.")
    f.save()
    deja_json(corpus.home, "--db", str(db), "ingest", "--root", str(extra), "--no-embed", "--json")
    shutil.rmtree(extra)
    hits = Corpus(db, extra, corpus.home, {}, corpus.embedder).search(
        "zebra database migration locked", limit=10).hits
    assert "more0000-0000-0000-0000-000000000000" in {h.session_id for h in hits}


def test_model_that_cannot_load_falls_back_to_keywords(corpus: Corpus) -> None:
    env = {"DEJA_EMBED_MODEL": "/nonexistent/path"}
    for mode in ("hybrid", "vector"):
        proc = deja(corpus.home, "--db", str(corpus.db), "search", "tomato", "--json",
                    "--mode", mode, env=env, expect=None)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        out = json.loads(proc.stdout)
        assert out["hits"] and "tomato" in out["hits"][0]["snippet"].lower()
        assert all("tomato" in h["snippet"].lower() if h["scores"]["bm25_match"] == "text"
                   else mode == "hybrid" for h in out["hits"])
        assert "/nonexistent/path" in out["vector_status"]
        assert any("keyword" in n for n in out["notes"])


def test_or_query_keeps_the_rarest_terms_by_their_exact_stems(
        corpus: Corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    """The OR fallback's pruning (it runs from 20k records on; forced here):
    document counts come from the index's own stems, so words whose porter
    stem is no prefix of them (libraries -> librari, used -> us) count right,
    and the most common terms are the ones left out."""
    import mcp_server.search.keyword as engine
    from mcp_server.search.terms import build_fts_terms

    words = ["libraries", "used", "database", "migration", "tomato", "the", "zzzunseen"]
    query = " ".join(words)
    terms = build_fts_terms(query)

    def count(word: str) -> int:
        return corpus.sql("SELECT COUNT(*) FROM records_fts WHERE records_fts MATCH ?",
                          (f'text : "{word}"',))[0][0]

    async def go() -> tuple[dict[str, int], str | None, str | None]:
        store = await Store.open(corpus.db)
        try:
            counts = await engine.doc_counts(store.conn, terms)
            monkeypatch.setattr(engine, "OR_PRUNE_FROM", 0)
            monkeypatch.setattr(engine, "OR_MAX_TERMS", 3)
            three = await engine.or_query(store.conn, terms)
            monkeypatch.setattr(engine, "OR_MAX_TERMS", 12)
            monkeypatch.setattr(engine, "OR_MAX_POSTINGS", 1)
            one = await engine.or_query(store.conn, terms)
            return counts, three, one
        finally:
            await store.close()

    counts, three, one = anyio.run(go)
    by_word = {t.words[0]: counts[t.fts] for t in terms}
    for word in words:
        assert by_word[word] == count(word), word
    assert by_word["libraries"] > 0 or by_word["used"] > 0  # the corpus has one of them
    content = sorted((by_word[w], w) for w in words if w != "the")
    assert three == " OR ".join(f'"{w}"' for _, w in content[:3])
    # A budget of one posting: the rarest term always, then only what fits (unseen words).
    unseen = [w for n, w in content if n == 0] or [content[0][1]]
    assert one == " OR ".join(f'"{w}"' for w in unseen)


# -- an empty query is an error, not arbitrary short prompts ---------------------------------


@pytest.mark.parametrize("query", ["", "   ", "\t\n"])
def test_an_empty_query_is_a_clear_error(corpus: Corpus, query: str) -> None:
    for mode in ("hybrid", "keyword"):
        proc = deja(corpus.home, "--db", str(corpus.db), "search", query, "--mode", mode,
                    expect=None)
        assert proc.returncode == 1, (query, mode, proc.stdout)
        assert proc.stderr == ("deja: the query is empty: give words, an error message or a "
                               "question\n"), proc.stderr
        assert proc.stdout == ""
    with pytest.raises(InvalidQuery, match="the query is empty"):
        corpus.search(query)


# -- the query splits CJK text exactly as the index does ---------------------------------------

# One sample per range of ingest.db.CJK_CHAR: (script, a word of two characters
# in a record, a longer run of the same script that starts with it).
CJK_SAMPLES = [
    ("hiragana", "ひら", "ひらがなです"),
    ("katakana", "カタ", "カタカナテスト"),
    ("extension A", "㐀㐁", "㐀㐁㐂㐃"),
    ("unified ideographs", "東京", "東京大学図書館"),
    ("hangul", "한국", "한국어사전"),
    ("compatibility ideographs", "豈更", "豈更車賈"),
    ("halfwidth katakana", "ｶﾀ", "ｶﾀｶﾅﾃｽﾄ"),
]


def test_the_query_treats_every_cjk_range_as_the_index_does() -> None:
    from ingest.db import CJK_CHAR, fts_text
    from mcp_server.search.terms import build_fts_terms, has_cjk

    for script, word, run in CJK_SAMPLES:
        for ch in run:
            assert CJK_CHAR.fullmatch(ch) and fts_text(ch) == f" {ch} ", (script, ch)
        assert has_cjk(run), script
        # A run is cut into overlapping pairs, each a phrase of two indexed tokens.
        pairs = [run[i:i + 2] for i in range(len(run) - 1)]
        assert [t.words[0] for t in build_fts_terms(run)] == list(dict.fromkeys(pairs)), script
        assert build_fts_terms(word)[0].fts == f'"{word[0]}  {word[1]}"', script


def test_a_record_in_each_cjk_range_is_found_by_a_query_in_its_script(tmp_path: Path) -> None:
    """Each record holds a two-character word; the query is a longer run of the same
    script: its character pairs find the record (through the OR fallback) only
    when the query splits the script as the index spaced it out."""
    home = tmp_path / "home"
    home.mkdir()
    root = tmp_path / "projects"
    f = SessionFile(root, "-home-cjk", "cjk00000-0000-0000-0000-000000000000", "/home/cjk",
                    datetime(2026, 4, 1, tzinfo=timezone.utc))
    uuids = {script: f.say(f"note {word} end") for script, word, _ in CJK_SAMPLES}
    f.prompt("an unrelated line in English")
    f.save()
    db = tmp_path / "cjk.db"
    deja_json(home, "--db", str(db), "ingest", "--root", str(root), "--no-embed", "--json")
    corpus = Corpus(db, root, home, {}, None)  # type: ignore[arg-type]
    for script, word, run in CJK_SAMPLES:
        for query in (word, run):
            hits = corpus.search(query, mode="keyword").hits
            assert [h.uuid for h in hits] == [uuids[script]], (script, query)
            assert f"[{word}]" in hits[0].snippet, (script, hits[0].snippet)


def test_read_only_connections_keep_a_smaller_page_cache(corpus: Corpus) -> None:
    """One server per Claude Code session: a search connection's cache is memory paid per session."""
    from ingest.db import CACHE_KIB, READ_CACHE_KIB

    reader = make_connector(corpus.db, readonly=True)()
    writer = make_connector(corpus.db)()
    try:
        assert reader.execute("PRAGMA cache_size").fetchone()[0] == -READ_CACHE_KIB
        assert writer.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB
        assert READ_CACHE_KIB < CACHE_KIB
    finally:
        reader.close()
        writer.close()
