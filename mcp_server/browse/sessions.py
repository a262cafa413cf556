"""`deja browse`'s first screen: the sessions list, newest first, filtered by project and text.

The first page shows as soon as the database is open; what costs a read of a
session's records (turns, compactions, tokens) fills in afterwards, row by
row, in a worker, and the later pages load when the cursor nears the end.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Select, Static

from ..render.terminal import project_name
from ..render.text import clean, duration, seconds_between, tokens_total, when
from . import data
from .checkpoint import CheckpointScreen
from .doctor import DoctorScreen
from .search import SearchScreen
from .session import SessionScreen

__all__ = ["SessionsScreen"]


class SessionsScreen(Screen[None]):
    """The sessions list: newest first, filtered by project and text."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "open", show=True),
        Binding("slash", "filter", "filter"),
        Binding("p", "project", "project"),
        Binding("s", "search", "search"),
        Binding("c", "checkpoint", "checkpoint"),
        Binding("d", "doctor", "diagnostics"),
        Binding("r", "reload", "reload"),
        Binding("question_mark", "app.help", "help"),
        Binding("q", "app.quit", "quit"),
    ]
    COLUMNS: ClassVar[dict[str, int]] = {
        "when": 16, "title": 44, "project": 24, "branch": 18, "span": 6, "turns": 5,
        "records": 7, "agents": 6, "compact": 7, "tokens": 7}

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.exhausted = False
        self.project_dir: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="filters"):
            yield Input(placeholder="filter: title, id, folder, branch (/)", id="filter")
            yield Select[str]([], prompt="all projects (p)", id="project", allow_blank=True)
        yield DataTable(id="sessions", cursor_type="row", zebra_stripes=True)
        yield Static("", id="status")
        yield Footer()

    async def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for col, width in self.COLUMNS.items():
            table.add_column(col, key=col, width=width)
        table.focus()
        await self.reload()
        self.load_projects()

    @property
    def conn(self) -> Any:
        return self.app.conn  # type: ignore[attr-defined]

    @work(exclusive=True, group="projects")
    async def load_projects(self) -> None:
        found = await data.projects(self.conn)
        self.query_one(Select).set_options(
            (f"{project_name({'cwd': cwd})} ({n})", pdir) for pdir, cwd, n in found)

    async def reload(self) -> None:
        table = self.query_one(DataTable)
        table.clear()
        self.rows, self.exhausted = [], False
        await self.more()

    async def more(self) -> None:
        """The next page of sessions, then their details in the background."""
        if self.exhausted:
            return
        text = self.query_one("#filter", Input).value
        page = await data.sessions_page(self.conn, project_dir=self.project_dir, text=text,
                                        offset=len(self.rows))
        self.exhausted = len(page) < data.PAGE
        table = self.query_one(DataTable)
        for s in page:
            s["duration_s"] = seconds_between(s["first_ts"], s["last_ts"])
            table.add_row(when(s["last_ts"]), Text(clean(s["title"]) or "(untitled)"),
                          Text(project_name(s)), Text(clean(s["git_branch"]) or ""),
                          duration(s["duration_s"]), "…", str(s["records"]),
                          str(s["subagent_runs"]), "…", "…", key=s["session_id"])
        self.rows.extend(page)
        self.query_one("#status", Static).update(
            f"{len(self.rows)}{'' if self.exhausted else '+'} sessions"
            + (f" in {self.project_dir}" if self.project_dir else ""))
        self.fill_details(page)

    @work(exclusive=False, group="details")
    async def fill_details(self, page: list[dict[str, Any]]) -> None:
        table = self.query_one(DataTable)
        for s in page:
            details = await data.session_details(self.conn, s["session_id"])
            s.update(details)
            try:
                table.update_cell(s["session_id"], "turns", str(details["turns"]))
                table.update_cell(s["session_id"], "compact", str(details["compactions"]))
                table.update_cell(s["session_id"], "tokens", tokens_total(details["tokens"]))
            except KeyError:  # listed before a reload: that row is gone
                return

    def selected(self) -> dict[str, Any] | None:
        table = self.query_one(DataTable)
        if not self.rows or table.cursor_row < 0 or table.cursor_row >= len(self.rows):
            return None
        return self.rows[table.cursor_row]

    async def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.cursor_row >= len(self.rows) - 5:
            await self.more()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    @on(Input.Changed, "#filter")
    async def filter_changed(self) -> None:
        await self.reload()

    @on(Input.Submitted, "#filter")
    def filter_done(self) -> None:
        self.query_one(DataTable).focus()

    @on(Select.Changed, "#project")
    async def project_changed(self, event: Select.Changed) -> None:
        value = event.value
        self.project_dir = value if isinstance(value, str) else None
        await self.reload()

    def action_open(self) -> None:
        s = self.selected()
        if s is not None:
            self.app.push_screen(SessionScreen(s["session_id"]))

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_project(self) -> None:
        select = self.query_one(Select)
        select.focus()
        select.action_show_overlay()

    def action_search(self) -> None:
        self.app.push_screen(SearchScreen(self.project_dir))

    def action_checkpoint(self) -> None:
        s = self.selected()
        if s is not None:
            self.app.push_screen(CheckpointScreen(s))

    def action_doctor(self) -> None:
        self.app.push_screen(DoctorScreen())

    async def action_reload(self) -> None:
        await self.reload()

