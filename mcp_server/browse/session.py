"""`deja browse`: one session's screen, its header and then its records, a page at a time."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.console import Group, RenderableType
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from ..render.terminal import record_lines, session_header
from ..transcript import session_overview, session_records
from .checkpoint import CheckpointScreen

__all__ = ["SessionScreen", "SESSION_PAGE"]

SESSION_PAGE = 300


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

