"""`deja browse` headless: every key of every screen through Textual's pilot, over a real
database of the shared transcripts (the compacted session c0dddd8d has subagent runs), and
the real process in tmux (it draws, and quits on q with exit code 0).

`test_every_key_in_help_is_pressed` fails when a screen gains a key no test here presses.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.cli import deja_argv, deja_env
from fixtures.engine_corpus import Corpora, Corpus
from fixtures.engines import is_postgres
from rich.console import Console
from textual.binding import Binding
from textual.widgets import DataTable, Input, OptionList, Static

from ingest.config import PostgresUrl
from ingest.pg.store import PgStore
from ingest.store import Store
from mcp_server.browse.app import BrowseApp, HelpScreen
from mcp_server.browse.checkpoint import CheckpointScreen
from mcp_server.browse.doctor import DoctorScreen
from mcp_server.browse.search import SearchScreen
from mcp_server.browse.session import SessionScreen
from mcp_server.browse.sessions import SessionsScreen

pytestmark = pytest.mark.anyio

COMPACTED = "c0dddd8d-6c0f-4a12-8927-28271848cfc7"
# The keys each test below presses, by screen (checked against the screens' BINDINGS).
PRESSED = {
    SessionsScreen: {"enter", "slash", "p", "s", "c", "d", "r", "question_mark", "q"},
    SessionScreen: {"escape", "n", "f", "c", "g", "G", "question_mark", "q"},
    SearchScreen: {"escape", "down", "slash", "question_mark"},
    CheckpointScreen: {"escape", "question_mark", "q"},
    DoctorScreen: {"escape", "r", "question_mark", "q"},
    HelpScreen: {"escape", "question_mark", "q"},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def shared_db(corpora: Corpora) -> Path:
    """The run's SQLite ingest of the shared corpus (fixtures/engine_corpus.py; read only)."""
    return Path(corpora.get("sqlite").target)


@pytest.fixture
async def app(corpus: Corpus) -> AsyncIterator[BrowseApp]:
    """The UI over the run's ingest of the corpus on each engine (same screens, same keys)."""
    if is_postgres(corpus.target):
        url = PostgresUrl(str(corpus.target))
        pg = await PgStore.open(url, "test", {}, create=False)
        try:
            yield BrowseApp(url, pg)
        finally:
            await pg.close()
        return
    store = await Store.open(Path(corpus.target))
    try:
        yield BrowseApp(Path(corpus.target), store)
    finally:
        await store.close()


@pytest.fixture
async def sqlite_app(shared_db: Path) -> AsyncIterator[BrowseApp]:
    """The UI over the SQLite file only: the longest key walk (the session view, whose reads
    tests/test_pg_reads.py compares on both engines) runs once."""
    store = await Store.open(shared_db)
    try:
        yield BrowseApp(shared_db, store)
    finally:
        await store.close()


def plain(renderable: Any) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def text_of(widget: Static) -> str:
    """What a Static shows, as plain text."""
    return plain(widget.content)


async def until(pilot: Any, check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the screen never got there"
        await pilot.pause(0.05)


async def open_compacted(app: BrowseApp, pilot: Any) -> None:
    screen = app.screen
    assert isinstance(screen, SessionsScreen)
    await until(pilot, lambda: any(r["session_id"] == COMPACTED for r in screen.rows))
    index = [r["session_id"] for r in screen.rows].index(COMPACTED)
    screen.query_one(DataTable).move_cursor(row=index)
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(app.screen, SessionScreen)
                and "resume:" in text_of(app.screen.query_one("#head", Static)))


def test_every_key_in_help_is_pressed() -> None:
    for screen, pressed in PRESSED.items():
        keys = set()
        for b in screen.BINDINGS:
            assert isinstance(b, Binding)
            keys.update(b.key.split(","))
        assert keys == pressed, screen.__name__


async def test_sessions_list_filters_and_fills_details(app: BrowseApp, shared_db: Path) -> None:
    async with app.run_test(size=(170, 50)) as pilot:
        screen = app.screen
        assert isinstance(screen, SessionsScreen)
        table = screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count > 0)
        all_rows = table.row_count
        # Details arrive after the list: turns of the compacted session.
        await until(pilot, lambda: "…" not in str(table.get_cell(COMPACTED, "turns")))
        assert str(table.get_cell(COMPACTED, "compact")) == "1"
        assert str(table.get_cell(COMPACTED, "tokens")).endswith("M")
        # / then text: only the matching sessions.
        await pilot.press("slash")
        assert isinstance(app.focused, Input)
        await pilot.press(*"expiry")
        await until(pilot, lambda: table.row_count == 1)
        assert screen.rows[0]["session_id"] == COMPACTED
        await pilot.press("enter")  # leaves the filter for the table
        assert isinstance(app.focused, DataTable)
        screen.query_one(Input).value = ""
        await until(pilot, lambda: table.row_count == all_rows)
        # p: the project list; choosing one narrows the sessions to it.
        await pilot.press("p")
        await pilot.pause(0.2)
        await pilot.press("down", "enter")
        await until(pilot, lambda: screen.project_dir is not None)
        await until(pilot, lambda: 0 < table.row_count < all_rows)
        assert {r["project_dir"] for r in screen.rows} == {screen.project_dir}
        # r: reload keeps the filters.
        before = table.row_count
        table.focus()
        await pilot.press("r")
        await until(pilot, lambda: table.row_count == before)
        await pilot.press("q")
    assert app.return_code in (0, None)


async def test_session_view_keys(sqlite_app: BrowseApp) -> None:
    app = sqlite_app
    async with app.run_test(size=(170, 50)) as pilot:
        await open_compacted(app, pilot)
        screen = app.screen
        assert isinstance(screen, SessionScreen)
        head = text_of(screen.query_one("#head", Static))
        assert f"claude --resume {COMPACTED}" in head and "1 compactions" in head
        body = text_of(screen.query_one("#records", Static))
        assert "┌ subagent" in body  # a run under its call
        assert "Bash call" in body
        folded = len(body)
        await pilot.press("f")
        assert len(text_of(screen.query_one("#records", Static))) > folded
        await pilot.press("f")
        assert len(screen.records) == 300 < screen.total  # a page (322 records in all)
        await pilot.press("n")
        assert len(screen.records) == screen.total
        assert "⟲ Conversation compacted" in text_of(screen.query_one("#records", Static))
        await pilot.press("G")
        await pilot.pause(0.1)
        assert screen.query_one("#body").scroll_y > 0
        await pilot.press("g")
        await pilot.pause(0.1)
        assert screen.query_one("#body").scroll_y == 0
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("question_mark")
        assert isinstance(app.screen, SessionScreen)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, CheckpointScreen))
        await pilot.press("escape")
        assert app.screen is screen
        await pilot.press("escape")
        assert isinstance(app.screen, SessionsScreen)
        await open_compacted(app, pilot)
        await pilot.press("q")


async def test_checkpoint_shows_the_resume_command(app: BrowseApp) -> None:
    async with app.run_test(size=(170, 50)) as pilot:
        screen = app.screen
        assert isinstance(screen, SessionsScreen)
        await until(pilot, lambda: bool(screen.rows))
        index = [r["session_id"] for r in screen.rows].index(COMPACTED)
        screen.query_one(DataTable).move_cursor(row=index)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, CheckpointScreen) and "resume:" in
                    text_of(app.screen.query_one("#checkpoint", Static)))
        shown = text_of(app.screen.query_one("#checkpoint", Static))
        cwd = next(r["cwd"] for r in screen.rows if r["session_id"] == COMPACTED)
        assert f"cd {cwd} && claude --resume {COMPACTED}" in shown
        assert "Pending Tasks" in shown  # the compaction summary's sections
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.press("escape")
        assert isinstance(app.screen, SessionsScreen)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, CheckpointScreen))
        await pilot.press("q")


async def test_live_search_opens_the_hit(app: BrowseApp) -> None:
    async with app.run_test(size=(170, 50)) as pilot:
        await until(pilot, lambda: bool(getattr(app.screen, "rows", None)))
        await pilot.press("s")
        screen = app.screen
        assert isinstance(screen, SearchScreen)
        await pilot.press(*"contract expiry")
        hits = screen.query_one(OptionList)
        await until(pilot, lambda: hits.option_count > 0)
        assert "hits" in text_of(screen.query_one("#status", Static))
        first = hits.get_option_at_index(0).prompt
        assert "expiry" in plain(first).lower() and "[expiry]" not in plain(first)
        # (the brackets became a highlight)
        await pilot.press("down")
        assert isinstance(app.focused, OptionList)
        await pilot.press("slash")
        assert isinstance(app.focused, Input)
        # The query is selected: what is typed replaces it; ? is a character here, not help.
        await pilot.press(*"?expiry")
        assert screen.query_one(Input).value == "?expiry"
        await app.workers.wait_for_complete()
        await until(pilot, lambda: hits.option_count > 0)
        await pilot.press("down", "enter")
        await until(pilot, lambda: isinstance(app.screen, SessionScreen))
        opened = app.screen
        assert isinstance(opened, SessionScreen)
        await until(pilot, lambda: bool(opened.records))
        assert any(r.get("hit") for r in opened.records) or opened.around is None
        await pilot.press("escape")
        assert app.screen is screen
        hits.focus()
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("q")  # closes help
        assert app.screen is screen
        await pilot.press("escape")
        assert isinstance(app.screen, SessionsScreen)
        await pilot.press("q")


async def test_diagnostics(app: BrowseApp) -> None:
    async with app.run_test(size=(170, 50)) as pilot:
        await until(pilot, lambda: bool(getattr(app.screen, "rows", None)))
        await pilot.press("d")
        screen = app.screen
        assert isinstance(screen, DoctorScreen)
        checks = screen.query_one("#checks", Static)
        await until(pilot, lambda: "running checks" not in text_of(checks))
        try:
            import mcp_server.doctor  # noqa: F401
        except ImportError:
            assert "doctor not available" in text_of(checks)
        else:
            assert "✓" in text_of(checks) or "✗" in text_of(checks)
            if isinstance(app.db_path, PostgresUrl):  # the server's checks, not a file's
                assert "pgvector" in text_of(checks) and "integrity" not in text_of(checks)
        await pilot.press("r")
        await until(pilot, lambda: "running checks" not in text_of(checks))
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.press("escape")
        assert isinstance(app.screen, SessionsScreen)
        await pilot.press("d")
        await pilot.press("q")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_the_real_process_draws_and_quits_on_q(shared_db: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    done = tmp_path / "exit-code"
    env = deja_env(home)
    command = " ".join(f"'{a}'" for a in deja_argv("browse", db=shared_db))
    name = f"deja-browse-{tmp_path.name}"
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "150", "-y", "40",
                    f"{command}; echo $? > {done}; sleep 5"], check=True,
                   env={**env, "TERM": "xterm-256color"})
    try:
        deadline = time.monotonic() + 30
        screen = ""
        while not ("fix-contract-expiry-atomicity" in screen and " quit" in screen) and \
                time.monotonic() < deadline:
            time.sleep(0.1)
            screen = subprocess.run(["tmux", "capture-pane", "-pt", name], capture_output=True,
                                    text=True).stdout
        assert "fix-contract-expiry-atomicity" in screen and " quit" in screen, screen
        subprocess.run(["tmux", "send-keys", "-t", name, "q"], check=True)
        deadline = time.monotonic() + 10
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert done.read_text().strip() == "0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
