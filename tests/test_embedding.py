"""The vector side of the database: embedding at ingest, `deja embed`, models, crashes.

With the real model (all-MiniLM-L6-v2, ONNX export shared through
DEJA_MODEL_CACHE). Invariants checked after every step that writes vectors:

- every record with embed_state = 1 has at least one chunk, unless its text
  is blank;
- every chunk has exactly one int8 vector (chunk_vectors) and its sign bits;
- no chunk twice (record_id, seq);
- pending (embed_state 0) + embedded (1) = the records of embeddable kinds.

Embedding at ingest, `deja embed` and a stored model of another dimension run
on both engines (the `engine` fixture; PostgreSQL keeps a chunk's float vector
in pgvector's column, so its invariants have no int8 copy or sign bits to
compare). So does a kill -9 mid-embedding (a batch's chunks and its records' state
commit together). SQLite's only: another model's ONNX export and the full
reembed round trip (a minute; the refusal and `deja reembed` are tested on
both engines with a stored model of another dimension), the event loop
during `embed_pending`.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
import uuid as uuid_mod
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from fixtures.cli import deja, deja_argv, deja_env, deja_json
from fixtures.db import sql
from fixtures.engines import Target, is_postgres
from fixtures.engines import sql as engine_sql
from fixtures.paths import MODEL_CACHE, REPO, SAMPLE
from fixtures.transcripts import SessionFile
from ingest.db import make_connector
from ingest.embed import DEFAULT_DIM, DEFAULT_MODEL, Embedder, load_embedder, resolve_model
from ingest.indexing import EMBEDDABLE_KINDS
from ingest.store import Store

# Loading the model and embedding take minutes on a loaded machine.
TIMEOUT = 300


# -- helpers ------------------------------------------------------------------------------------


def check_invariants(db: Target) -> dict[str, int]:
    """Assert the vector side is consistent; return the counts (on either engine)."""
    def q(query: str) -> list[tuple[Any, ...]]:
        return engine_sql(db, query)

    kinds = ", ".join(f"'{k}'" for k in EMBEDDABLE_KINDS)
    pg = is_postgres(db)
    counts = {
        "pending": q("SELECT COUNT(*) FROM records WHERE embed_state = 0")[0][0],
        "embedded": q("SELECT COUNT(*) FROM records WHERE embed_state = 1")[0][0],
        "embeddable": q(f"SELECT COUNT(*) FROM records WHERE kind IN ({kinds})")[0][0],
        "chunks": q("SELECT COUNT(*) FROM chunks")[0][0],
        # PostgreSQL: the vector is a NOT NULL column of the chunk itself.
        "vectors": q("SELECT COUNT(*) FROM chunks" if pg else
                     "SELECT COUNT(*) FROM chunk_vectors")[0][0],
    }
    assert counts["pending"] + counts["embedded"] == counts["embeddable"], counts
    no_chunk = q("SELECT id, text FROM records r WHERE embed_state = 1 AND NOT EXISTS "
                 "(SELECT 1 FROM chunks c WHERE c.record_id = r.id)")
    assert all(not text.strip() for _id, text in no_chunk), no_chunk[:3]
    assert not q("SELECT c.id FROM chunks c JOIN records r ON r.id = c.record_id "
                 "WHERE r.embed_state != 1"), "chunks of records not marked embedded"
    if not pg:
        chunk_ids = [r[0] for r in q("SELECT id FROM chunks ORDER BY id")]
        vec_ids = [r[0] for r in q("SELECT chunk_id FROM chunk_vectors ORDER BY chunk_id")]
        assert chunk_ids == vec_ids, "chunks and chunk_vectors differ"
        assert not q("SELECT c.id FROM chunks c JOIN chunk_vectors v ON v.chunk_id = c.id "
                     "WHERE c.bits IS NULL OR length(c.bits) * 8 != length(v.vec)")
    assert q("SELECT COUNT(*) FROM (SELECT DISTINCT record_id, seq FROM chunks) AS d")[0][0] \
        == counts["chunks"], "a chunk is duplicated"
    return counts


def _execute(db: Target, statement: str) -> None:
    """One write on either engine (fixtures.engines.sql only reads SQLite)."""
    if is_postgres(db):
        import psycopg

        with psycopg.connect(str(db), autocommit=True) as conn:
            conn.execute(statement)
        return
    conn = make_connector(Path(db))()
    try:
        conn.execute(statement)
    finally:
        conn.close()


def write_sessions(root: Path, n_sessions: int, turns: int, seed: int = 1,
                   words: int = 40) -> None:
    """Generated sessions: prompts, answers and tool calls with varied text."""
    rng = random.Random(seed)
    vocab = ("database index migration cache redis queue worker deploy rollback schema test "
             "fixture parser tokenizer vector search ranking budget snippet session project "
             "branch commit review lint format benchmark latency memory thread lock retry "
             "timeout socket client server request response header cookie token secret").split()
    start = datetime(2026, 4, 1, 8, 0, tzinfo=timezone.utc)
    for s in range(n_sessions):
        sid = str(uuid_mod.uuid5(uuid_mod.NAMESPACE_URL, f"gen-{seed}-{s}"))
        f = SessionFile(root, f"-home-gen-p{s % 3}", sid, f"/home/gen/p{s % 3}",
                        start + timedelta(days=s))
        for t in range(turns):
            # user prompt, assistant text, tool call, tool result: four lines a minute apart
            prompt, answer, command, result = (
                " ".join(rng.choice(vocab) for _ in range(rng.randint(words // 2, words)))
                for _ in range(4))
            turn = start + timedelta(days=s, minutes=4 * t)
            f.prompt(f"Turn {t}: {prompt}?", ts=turn)
            f.say(answer, ts=turn + timedelta(minutes=1))
            f.tool("Bash", {"command": f"grep -r {command[:30]!r} src"}, result,
                   ts=turn + timedelta(minutes=2))
        f.save()


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return load_embedder(None, "auto", cache_dir=MODEL_CACHE, local_files_only=True)


@pytest.fixture(scope="session")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another model folder: MiniLM's files (symlinked) plus one file, so another identity.

    Its id is a fingerprint of the files, stable across runs, so its ONNX
    export (made on the first run, ~20 s) is cached in DEJA_MODEL_CACHE.
    """
    source = Path(resolve_model(None).source)
    folder = tmp_path_factory.mktemp("other-model") / "model"
    for path in source.rglob("*"):
        target = folder / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
    (folder / "deja-test-identity.txt").write_text("a different model for deja's tests\n")
    return folder


# -- embedding at ingest, and later --------------------------------------------------------


def test_ingest_embeds_everything_and_says_so(tmp_path: Path, home: Path,
                                              db_target: Target) -> None:
    root = tmp_path / "projects"
    write_sessions(root, 2, 6)
    db = db_target
    out = deja_json(home, "ingest", "--root", str(root), "--root", str(SAMPLE), "--json",
                    embed=True, db=db, timeout=TIMEOUT)
    assert out["pending_embeddings"] == 0
    assert out["embedded"] > 50 and out["chunks"] >= out["embedded"]
    assert out["embedding_model"] == DEFAULT_MODEL
    counts = check_invariants(db)
    assert counts["embedded"] == out["embedded"] and counts["vectors"] == out["chunks"]
    assert engine_sql(db, "SELECT model_id, dim FROM embedding_model") == [
        (DEFAULT_MODEL, DEFAULT_DIM)]
    if is_postgres(db):  # unit vectors of the model's dimension
        norms = engine_sql(db, "SELECT MIN(vector_dims(vec)), MAX(vector_dims(vec)), "
                               "MIN(vec <#> vec), MAX(vec <#> vec) FROM chunks")
        assert norms[0][:2] == (DEFAULT_DIM, DEFAULT_DIM)
        assert -1.01 < norms[0][2] <= norms[0][3] < -0.99
    else:
        # Each chunk's sign bits are those of its int8 vector, which uses the full range.
        rows = sql(db, "SELECT c.bits, v.vec FROM chunks c "
                       "JOIN chunk_vectors v ON v.chunk_id = c.id")
        assert len(rows) == out["chunks"]
        for bits, vec in rows:
            q8 = np.frombuffer(vec, dtype=np.int8)
            signs = np.unpackbits(np.frombuffer(bits, dtype=np.uint8)).astype(bool)
            assert (signs == (q8 > 0))[q8 != 0].all()  # a tiny component rounds to 0 in int8
            assert np.abs(q8.astype(int)).max() == 127
    again = deja_json(home, "ingest", "--root", str(root), "--json", embed=True, db=db,
                      timeout=TIMEOUT)
    assert again["embedded"] == 0 and again["pending_embeddings"] == 0


def test_no_embed_leaves_work_pending_and_embed_finishes_it(tmp_path: Path, home: Path,
                                                            db_target: Target) -> None:
    root = tmp_path / "projects"
    write_sessions(root, 2, 5)
    db = db_target
    out = deja_json(home, "ingest", "--root", str(root), "--no-embed", "--json",
                    embed=True, db=db, timeout=TIMEOUT)
    assert out["embedded"] == 0 and out["pending_embeddings"] == out["new_records"] > 0
    assert check_invariants(db)["chunks"] == 0
    assert engine_sql(db, "SELECT COUNT(*) FROM embedding_model")[0][0] == 0
    done = deja_json(home, "embed", "--json", db=db, timeout=TIMEOUT)
    assert done["pending_embeddings"] == 0
    assert done["embedded"] == out["pending_embeddings"]
    counts = check_invariants(db)
    assert counts["pending"] == 0 and counts["vectors"] == done["chunks"]
    assert deja_json(home, "embed", "--json", db=db, timeout=TIMEOUT)["embedded"] == 0


# -- one model per database ----------------------------------------------------------------


def test_another_model_is_refused_until_reembed(tmp_path: Path, home: Path,
                                                other_model: Path) -> None:
    db = tmp_path / "m.db"
    deja_json(home, "ingest", "--root", str(SAMPLE), "--json", embed=True, db=db, timeout=TIMEOUT)
    before = check_invariants(db)
    assert sql(db, "SELECT model_id, dim FROM embedding_model") == [(DEFAULT_MODEL, DEFAULT_DIM)]
    other = {"DEJA_EMBED_MODEL": str(other_model)}

    # embed refuses, and says what to do.
    proc = deja(home, "embed", "--json", env=other, expect=1, db=db, timeout=TIMEOUT)
    assert "deja reembed" in proc.stderr and DEFAULT_MODEL in proc.stderr
    assert "Traceback" not in proc.stderr
    # search answers by keyword and says why.
    res = deja_json(home, "search", "redis timeout", "--json", env=other, db=db, timeout=TIMEOUT)
    assert res["hits"] and "deja reembed" in res["vector_status"]
    assert any("keyword" in n for n in res["notes"])
    # ingest still ingests, and reports the refusal instead of failing.
    more = tmp_path / "more"
    write_sessions(more, 1, 1, seed=5)
    out = deja_json(home, "ingest", "--root", str(more), "--json",
                    env=other, embed=True, db=db, timeout=TIMEOUT)
    assert out["new_records"] == 4 and "deja reembed" in out.get("embed_error", "")
    assert out["pending_embeddings"] == 4
    assert check_invariants(db)["vectors"] == before["vectors"]

    # reembed rebuilds every vector with the new model and records it.
    out = deja_json(home, "reembed", "--json", env=other, db=db, timeout=TIMEOUT)
    assert out["pending_embeddings"] == 0 and out["embedding_model"].startswith("local:")
    model = sql(db, "SELECT model_id, dim FROM embedding_model")
    assert model == [(out["embedding_model"], DEFAULT_DIM)]
    after = check_invariants(db)
    assert after["vectors"] > 0 and after["pending"] == 0
    assert after["embedded"] == before["embedded"] + 4
    res = deja_json(home, "search", "redis timeout", "--json", env=other, db=db, timeout=TIMEOUT)
    assert res["vector_status"] == "ok"
    # ... and now the default model is the stranger.
    res = deja_json(home, "search", "redis timeout", "--json", db=db, timeout=TIMEOUT)
    assert "deja reembed" in res["vector_status"] and res["hits"]


def test_a_stored_model_of_another_dimension_is_refused(home: Path, db_target: Target,
                                                         embedder: Embedder) -> None:
    """The database says 128-dim vectors of another model: refuse, then reembed to 384."""
    from fixtures.search_corpus import run_search

    from mcp_server.search import SearchRequest

    db = db_target
    deja_json(home, "ingest", "--root", str(SAMPLE), "--json", embed=True, db=db, timeout=TIMEOUT)
    _execute(db, "UPDATE embedding_model SET model_id = 'example/other-128', dim = 128")
    proc = deja(home, "embed", expect=1, db=db, timeout=TIMEOUT)
    assert "example/other-128" in proc.stderr and "deja reembed" in proc.stderr
    assert "Traceback" not in proc.stderr

    def hybrid() -> Any:
        return anyio.run(lambda: run_search(db, SearchRequest("redis timeout"), embedder))

    res = hybrid()
    assert res.hits and "deja reembed" in res.vector_status
    out = deja_json(home, "reembed", "--json", db=db, timeout=TIMEOUT)
    assert out["pending_embeddings"] == 0 and out["embedded"] > 0
    assert engine_sql(db, "SELECT model_id, dim FROM embedding_model") == [
        (DEFAULT_MODEL, DEFAULT_DIM)]
    assert check_invariants(db)["vectors"] > 0
    assert hybrid().vector_status == "ok"


# -- a crash mid-embedding ------------------------------------------------------------------


def test_sigkill_mid_embedding_leaves_a_consistent_database(tmp_path: Path, home: Path,
                                                           db_target: Target) -> None:
    root = tmp_path / "projects"
    # 960 records: a few seconds of embedding even on an idle machine (~500 short texts/s)
    write_sessions(root, 8, 30, seed=3, words=40)
    db = db_target
    out = deja_json(home, "ingest", "--root", str(root), "--no-embed", "--json", db=db,
                    timeout=TIMEOUT)
    total = out["pending_embeddings"]
    assert total >= 960
    for attempt in range(2):  # kill twice, at different points
        already = engine_sql(db, "SELECT COUNT(*) FROM records WHERE embed_state = 1")[0][0]
        proc = subprocess.Popen(deja_argv("embed", "--json", "--quiet", db=db),  # type: ignore[arg-type]
                                env=deja_env(home), cwd=str(REPO), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                # At least one more batch committed, then somewhere inside a later one.
                if engine_sql(db, "SELECT COUNT(*) FROM records WHERE embed_state = 1"
                              )[0][0] > already:
                    time.sleep(0.05 + 0.4 * attempt)
                    break
                time.sleep(0.02)
            assert proc.poll() is None, "embedding finished before it could be killed: enlarge"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
        counts = check_invariants(db)
        assert already < counts["embedded"] < total and counts["pending"] > 0
    before_rerun = check_invariants(db)["embedded"]
    done = deja_json(home, "embed", "--json", db=db, timeout=TIMEOUT)
    assert done["pending_embeddings"] == 0
    assert done["embedded"] == total - before_rerun
    counts = check_invariants(db)
    assert counts["pending"] == 0 and counts["embedded"] == total


# -- the event loop keeps running while embedding ---------------------------------------------


def test_event_loop_stays_responsive_while_embedding(tmp_path: Path, home: Path,
                                                     embedder: Embedder) -> None:
    from ingest.vectors import embed_pending

    root = tmp_path / "projects"
    # Enough work to span many ticks even when the machine is idle (~500 texts/s).
    write_sessions(root, 4, 50, seed=9, words=60)
    db = tmp_path / "loop.db"
    deja_json(home, "ingest", "--root", str(root), "--no-embed", "--json", db=db, timeout=TIMEOUT)

    async def main() -> tuple[float, int, Any]:
        store = await Store.open(db)
        gaps: list[float] = []
        try:
            async with anyio.create_task_group() as tg:
                async def tick() -> None:
                    last = time.perf_counter()
                    while True:
                        await anyio.sleep(0.05)
                        now = time.perf_counter()
                        gaps.append(now - last)
                        last = now

                tg.start_soon(tick)
                summary = await embed_pending(store, embedder, batch_records=32)
                tg.cancel_scope.cancel()
        finally:
            await store.close()
        return max(gaps), len(gaps), summary

    max_gap, ticks, summary = anyio.run(main)
    assert summary.pending == 0 and summary.embedded_records == 800
    assert ticks >= 10, "embedding was too quick to tell anything"
    print(f"max gap {max_gap:.3f} s over {ticks} ticks")
    assert max_gap < 0.5, f"the event loop stalled for {max_gap:.2f} s"
    check_invariants(db)
