"""`deja browse`: the Textual application, a thin view over browse/data.py, and its help.

Screens, a module each: the sessions list (sessions.py, the first screen), a
session (session.py), live search (search.py), a session's checkpoint with the
command that resumes it (checkpoint.py), diagnostics (doctor.py); the help
screen (`?`) is here because it lists every other screen's keys. Each screen's
keys are its BINDINGS, shown in the footer and in the help screen, and each is
tested headless (tests/test_browse.py). Nothing imports the embedding model:
search runs in keyword mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from rich.console import Group, RenderableType
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from ingest.config import PostgresUrl
from ingest.store import Store

if TYPE_CHECKING:
    from ingest.pg.store import PgStore

from .checkpoint import CheckpointScreen
from .doctor import DoctorScreen
from .search import SearchScreen
from .session import SessionScreen
from .sessions import SessionsScreen

__all__ = ["BrowseApp", "HelpScreen"]


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

    def __init__(self, db_path: Path | PostgresUrl, store: Store | PgStore) -> None:
        super().__init__()
        # db_path: the file, or the PostgreSQL URL (the diagnostics view checks either).
        self.db_path, self.store = db_path, store
        self.conn = store.reads

    def on_mount(self) -> None:
        self.push_screen(SessionsScreen())

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())
