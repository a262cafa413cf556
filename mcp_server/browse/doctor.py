"""`deja browse`: the diagnostics screen, deja doctor's checks (mcp_server/doctor), each with its fix."""

from __future__ import annotations

import os
from typing import ClassVar

from rich.console import Group, RenderableType
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from . import data

__all__ = ["DoctorScreen"]

_STATUS = {"ok": ("✓", "green"), "warn": ("!", "yellow"), "fail": ("✗", "bold red")}


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

