"""`deja browse`: the Textual application, a thin view over browse/data.py.

Screens: the sessions list (the first screen), a session, live search, a
session's checkpoint with the command that resumes it, diagnostics, help.
Each screen's keys are its BINDINGS, shown in the footer and in the help
screen (`?`), and each is tested headless (tests/test_browse.py).

Start-up: the list shows the first page of sessions as soon as the database
is open; what costs a read of a session's records (turns, compactions,
tokens) fills in afterwards, row by row, in a worker, and the list's later
pages load when the cursor reaches its end. Nothing imports the embedding
model: search runs in keyword mode.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from rich.console import Group, RenderableType
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Header, Input, OptionList, Select, Static
from textual.widgets.option_list import Option

from ingest.errors import DejaError
from ingest.store import Store

from ..render.terminal import project_name, record_lines, session_header, snippet_text
from ..render.text import clean, duration, label, seconds_between, short_id, tokens_total, when
from ..transcript import session_overview, session_records
from . import data

__all__ = ["BrowseApp"]

SESSION_PAGE = 300
_STATUS = {"ok": ("✓", "green"), "warn": ("!", "yellow"), "fail": ("✗", "bold red")}


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


class SessionScreen(Screen[None]):
    """One session: its header, then its records; tool calls folded, subagents indented."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "back"),
        Binding("n", "more", "more records"),
        Binding("f", "full", "fold/unfold tools"),
        Binding("c", "checkpoint", "checkpoint"),
        Binding("g", "top", "top"),
        Binding("G", "bottom", "bottom"),
        Binding("question_mark", "app.help", "help"),
        Binding("q", "app.quit", "quit"),
    ]

    def __init__(self, session_id: str, around: str | None = None) -> None:
        super().__init__()
        self.session_id, self.around = session_id, around
        self.overview: dict[str, Any] = {"session_id": session_id}
        self.records: list[dict[str, Any]] = []
        self.total = 0
        self.start = 0
        self.full = False

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="body"):
            yield Static(id="head")
            yield Static(id="records")
        yield Footer()

    async def on_mount(self) -> None:
        conn = self.app.conn  # type: ignore[attr-defined]
        self.overview = await session_overview(conn, self.session_id)
        self.query_one("#head", Static).update(session_header(self.overview))
        if self.around:
            page = await session_records(conn, self.session_id, around=self.around, context=40)
        else:
            page = await session_records(conn, self.session_id, limit=SESSION_PAGE)
        self.records, self.total, self.start = page["records"], page["total"], page["offset"]
        self.draw()
        self.query_one("#body").focus()

    def draw(self) -> None:
        parts: list[RenderableType] = []
        if self.start:
            parts.append(Text(f"… {self.start} earlier records", style="dim"))
        for r in self.records:
            parts.extend(record_lines(r, full=self.full))
        rest = self.total - self.start - len(self.records)
        parts.append(Text(f"… {rest} later records (n: more)" if rest > 0 else "— end —",
                          style="dim"))
        self.query_one("#records", Static).update(Group(*parts))

    async def action_more(self) -> None:
        start = self.start + len(self.records)
        if start >= self.total:
            return
        page = await session_records(self.app.conn,  # type: ignore[attr-defined]
                                     self.session_id, offset=start, limit=SESSION_PAGE)
        self.records.extend(page["records"])
        self.draw()

    def action_full(self) -> None:
        self.full = not self.full
        self.draw()

    def action_checkpoint(self) -> None:
        self.app.push_screen(CheckpointScreen(self.overview))

    def action_top(self) -> None:
        self.query_one("#body", VerticalScroll).scroll_home(animate=False)

    def action_bottom(self) -> None:
        self.query_one("#body", VerticalScroll).scroll_end(animate=False)


class SearchScreen(Screen[None]):
    """Live search: keyword hits as you type, query words highlighted."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "back"),
        Binding("down", "hits", "to hits", show=False),
        Binding("slash", "query", "edit query"),
        Binding("question_mark", "app.help", "help"),
    ]

    def __init__(self, project_dir: str | None) -> None:
        super().__init__()
        self.project_dir = project_dir
        self.hits: list[Any] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="search (keywords, \"phrases\", prefix*)", id="query")
        yield OptionList(id="hits")
        yield Static("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Changed, "#query")
    def changed(self, event: Input.Changed) -> None:
        self.run_search(event.value)

    @on(Input.Submitted, "#query")
    def submitted(self) -> None:
        self.action_hits()

    @work(exclusive=True, group="search")
    async def run_search(self, query: str) -> None:
        hits_list = self.query_one(OptionList)
        status = self.query_one("#status", Static)
        if not query.strip():
            hits_list.clear_options()
            status.update("")
            return
        try:
            result = await data.keyword_search(self.app.conn,  # type: ignore[attr-defined]
                                               query, project_dir=self.project_dir)
        except DejaError as exc:
            status.update(Text(str(exc), style="yellow"))
            return
        self.hits = result.hits
        hits_list.clear_options()
        hits_list.add_options(Option(self._hit(h, query), id=str(i))
                              for i, h in enumerate(result.hits))
        if hits_list.has_focus and result.hits:
            hits_list.highlighted = 0
        status.update(f"{len(result.hits)} hits · {result.elapsed_ms:.0f} ms · keyword"
                      " · enter: open the session at the hit")

    @staticmethod
    def _hit(h: Any, query: str) -> Group:
        head = Text(label({"kind": h.kind, "tool_name": h.tool_name}), style="bold")
        head.append(f"  {when(h.timestamp)}  {project_name({'cwd': h.project})}  "
                    f"session {short_id(h.session_id)}  {h.handle}", style="dim")
        return Group(head, snippet_text(h.snippet, query), Text(""))

    def action_hits(self) -> None:
        hits = self.query_one(OptionList)
        hits.focus()
        if hits.highlighted is None and hits.option_count:
            hits.highlighted = 0

    def action_query(self) -> None:
        self.query_one(Input).focus()

    @on(OptionList.OptionSelected, "#hits")
    def open_hit(self, event: OptionList.OptionSelected) -> None:
        h = self.hits[int(event.option.id or 0)]
        if h.session_id:
            self.app.push_screen(SessionScreen(h.session_id, around=h.handle
                                               if not h.agent_id else None))


class CheckpointScreen(Screen[None]):
    """Where a session stood (load_checkpoint), and the command that resumes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "back"),
        Binding("question_mark", "app.help", "help"),
        Binding("q", "app.quit", "quit"),
    ]

    def __init__(self, session: dict[str, Any]) -> None:
        super().__init__()
        self.session = session

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="body"):
            yield Static(id="checkpoint")
        yield Footer()

    async def on_mount(self) -> None:
        out = await data.checkpoint(self.app.conn, self.session)  # type: ignore[attr-defined]
        self.query_one("#checkpoint", Static).update(_checkpoint_view(out))


def _checkpoint_view(out: dict[str, Any]) -> Group:
    s = out.get("session") or {}
    parts: list[RenderableType] = [
        Text(clean(s.get("title")) or "(untitled)", style="bold"),
        Text.assemble(("resume: ", "dim"), (out["resume"], "bold green")),
        Text("")]
    cp = out.get("checkpoint")
    if cp:
        parts.append(Text(f"checkpoint ({cp.get('source') or ''}, "
                          f"{when(cp.get('timestamp'))})", style="bold magenta"))
        for section in cp.get("sections") or []:
            parts.append(Text(str(section.get("heading") or ""),
                              style="bold"))
            parts.append(Text(clean(str(section.get("text") or ""))))
        if cp.get("text") and not cp.get("sections"):
            parts.append(Text(clean(str(cp["text"]))))
    else:
        parts.append(Text("no checkpoint: no compaction or saved checkpoint yet", style="dim"))
    for key in ("last_requests", "open_todos", "files_edited", "failed_commands", "tests_run",
                "last_errors"):
        items = out.get(key) or []
        if items:
            parts.append(Text(key.replace("_", " "), style="bold"))
            parts.extend(Text("  • " + clean(_item(i))) for i in items[:12])
    return Group(*parts)


def _item(item: Any) -> str:
    if isinstance(item, dict):
        return " · ".join(str(v) for v in item.values() if v not in (None, ""))[:300]
    return str(item)[:300]


class DoctorScreen(Screen[None]):
    """Diagnostics: deja doctor's checks, each with its fix."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "back"),
        Binding("r", "rerun", "run again"),
        Binding("question_mark", "app.help", "help"),
        Binding("q", "app.quit", "quit"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            yield Static("running checks…", id="checks")
        yield Footer()

    def on_mount(self) -> None:
        self.action_rerun()

    @work(exclusive=True, thread=True)
    def action_rerun(self) -> None:
        checks = data.doctor_checks(self.app.db_path, os.environ)  # type: ignore[attr-defined]
        lines: list[RenderableType] = []
        for c in checks:
            mark, style = _STATUS.get(c.status, ("?", ""))
            line = Text.assemble((f"{mark} ", style), (c.name, "bold"), f"  {c.detail}")
            lines.append(line)
            if c.fix and c.status != "ok":
                lines.append(Text(f"    fix: {c.fix}", style="cyan"))
        self.app.call_from_thread(self.query_one("#checks", Static).update, Group(*lines))


class HelpScreen(ModalScreen[None]):
    """Every screen's keys."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "dismiss",
                                                     "close")]

    def compose(self) -> ComposeResult:
        lines: list[RenderableType] = [Text("deja browse: keys", style="bold")]
        for screen in (SessionsScreen, SessionScreen, SearchScreen, CheckpointScreen,
                       DoctorScreen):
            lines.append(Text(""))
            lines.append(Text(str(screen.__doc__).split(":")[0].strip().rstrip("."),
                              style="bold cyan"))
            for b in screen.BINDINGS:
                if isinstance(b, Binding):
                    lines.append(Text(f"  {b.key:<16} {b.description}"))
        with VerticalScroll(id="help"):
            yield Static(Group(*lines))
        yield Footer()


class BrowseApp(App[None]):
    """deja browse."""

    TITLE = "deja browse"
    CSS = """
    #filters { height: 3; }
    #sessions { height: 1fr; }
    #filter { width: 1fr; }
    #project { width: 40; }
    #status { height: 1; color: $text-muted; padding: 0 1; }
    #body { padding: 0 1; }
    HelpScreen { align: center middle; }
    #help { width: 80%; height: 80%; border: round $accent; padding: 0 1; background: $panel; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("q", "quit", "quit", show=False)]

    def __init__(self, db_path: Path, store: Store) -> None:
        super().__init__()
        self.db_path, self.store = db_path, store
        self.conn = store.conn

    def on_mount(self) -> None:
        self.push_screen(SessionsScreen())

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())
