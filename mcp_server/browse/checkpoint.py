"""`deja browse`: a session's checkpoint (load_checkpoint) and the command that resumes it."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.console import Group, RenderableType
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from ..render.text import clean, when
from . import data

__all__ = ["CheckpointScreen"]


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

