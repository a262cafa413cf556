"""`deja browse`: live search, keyword mode (the embedding model is never loaded here)."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.console import Group
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, OptionList, Static
from textual.widgets.option_list import Option

from ingest.errors import DejaError

from ..render.terminal import project_name, snippet_text
from ..render.text import label, short_id, when
from . import data
from .session import SessionScreen

__all__ = ["SearchScreen"]


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

