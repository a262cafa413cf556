"""Checkpoints: where a session stood, built from its ingested records (no model, no API).

A checkpoint holds a session's goal, the decisions its user stated, what was
done (files edited, commands that failed, tests run), what is pending (open
TodoWrite items and Task* tasks, the pending-tasks section of its latest
compaction summary), its latest summary's reference, the last requests, and
its branch. `session_facts()` reads those facts from the records (also what
`load_checkpoint` shows of what happened after a checkpoint);
`build_checkpoint()` makes a `Checkpoint` of them; `record_checkpoint()`
stores it as a memory of kind `checkpoint` (origin `transcript`, one per
session: each supersedes the last), searchable at once. `record_summary()`
stores a compaction summary a PostCompact hook hands over (origin
`compact_summary`).

It lives in ingest (it writes) and imports nothing heavy: the hooks use it
(no mcp, numpy, torch or onnxruntime).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiosqlite

from .db import clean_text
from .memories import MAX_MEMORY_CHARS, MemoryWritten, write_memory
from .store import Store
from .summary import sections

__all__ = [
    "Checkpoint", "SessionFacts", "session_facts", "build_checkpoint", "record_checkpoint",
    "record_summary", "tool_input", "EDIT_TOOLS", "is_decision",
]

EDIT_TOOLS = ("Edit", "Write", "MultiEdit", "NotebookEdit", "str_replace_based_edit_tool")
_SHELL_TOOLS = ("Bash", "PowerShell")
# Commands that run tests, as people type them.
_TEST_COMMAND = re.compile(
    r"\b(?:pytest|py\.test|tox|nox|unittest|(?:npm|pnpm|yarn|bun)\s+(?:run\s+)?test|jest|vitest|"
    r"mocha|go\s+test|cargo\s+(?:test|nextest)|mvn\s+(?:-\S+\s+)*(?:test|verify)|gradlew?\s+\S*test|"
    r"dotnet\s+test|rspec|phpunit|ctest|make\s+(?:test|check)|bazel\s+test|ginkgo|swift\s+test|"
    r"flutter\s+test|mix\s+test)\b",
    re.IGNORECASE,
)
# A prompt in which the user decides or sets a rule ("let's use X", "don't touch Y").
_DECISION = re.compile(
    r"(?:^|[.!?\n]\s*|\b)(?:let'?s|we(?:'ll| will| should| must|'re going to)|go with|use\b|"
    r"don'?t|do not|never|always|instead|decided?|prefer|keep\b|stick with|switch to|"
    r"make sure|from now on|rather than)",
    re.IGNORECASE,
)
_TASK_CREATED = re.compile(r"Task #(\w+) created")
_MAX_CALLS = 3000  # the latest tool calls a checkpoint looks at (a session can hold 10,000s)


def tool_input(text: str) -> Any:
    """The JSON input of a tool_call record ('Name {json}'); None if it is not JSON."""
    _, _, raw = text.partition(" ")
    try:
        return json.loads(raw)
    except ValueError:
        return None


def is_decision(prompt: str) -> bool:
    """True when a short prompt reads as the user deciding or setting a rule."""
    return len(prompt) <= 1500 and _DECISION.search(prompt) is not None


def _base_name(tool: str | None) -> str:
    """A tool's name without its MCP prefix (mcp__acp__Edit -> Edit)."""
    return (tool or "").rsplit("__", 1)[-1]


_ERROR_LINE = re.compile(r"error|fail|panic|exception|traceback|denied|not found|cannot|refused",
                         re.IGNORECASE)


def _first_lines(text: str, limit: int) -> str:
    """The lines of an output that say what went wrong (those naming an error first),
    on one line, within `limit` characters."""
    lines = [line.strip() for line in clean_text(text).strip().splitlines() if line.strip()]
    telling = [line for line in lines if _ERROR_LINE.search(line)]
    text = " | ".join((telling or lines)[:4])
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class SessionFacts:
    """What a session's records say it did, since a point in time (or ever)."""

    files_edited: list[str] = field(default_factory=list)  # latest first
    failed_commands: list[dict[str, Any]] = field(default_factory=list)  # latest last
    tests_run: list[dict[str, Any]] = field(default_factory=list)  # latest last
    open_todos: list[dict[str, Any]] = field(default_factory=list)
    last_errors: list[dict[str, Any]] = field(default_factory=list)  # latest first
    commands: list[str] = field(default_factory=list)  # every shell command, in order


async def _rows(conn: aiosqlite.Connection, sql: str,
                params: Sequence[Any] = ()) -> list[Any]:
    return list(await conn.execute_fetchall(sql, params))


async def session_facts(conn: aiosqlite.Connection, session_id: str,
                        since_ts: str | None = None, until_ts: str | None = None) -> SessionFacts:
    """The facts of the session's main thread (subagents left out) after `since_ts`
    (and up to `until_ts`, when given).

    Open todos are the state at the end, whenever they were written: the last
    TodoWrite list, and the Task* tasks not completed.
    """
    facts = SessionFacts()
    calls = await _rows(
        conn,
        "SELECT c.tool_name, c.text, c.ts, r.is_error, r.text FROM records c "
        "LEFT JOIN records r ON r.tool_use_id = c.tool_use_id AND r.kind = 'tool_result' "
        "AND r.session_id = c.session_id "
        "WHERE c.session_id = ? AND c.kind = 'tool_call' AND c.agent_id IS NULL "
        "AND (? IS NULL OR c.ts > ?) AND (? IS NULL OR c.ts <= ?) "
        "ORDER BY c.ts DESC NULLS LAST, c.id DESC LIMIT ?",
        (session_id, since_ts, since_ts, until_ts, until_ts, _MAX_CALLS))
    for tool, text, ts, is_error, result in reversed(calls):
        name = _base_name(tool)
        data = tool_input(text)
        if not isinstance(data, dict):
            continue
        if name in EDIT_TOOLS:
            path = data.get("file_path") or data.get("notebook_path") or data.get("path")
            if isinstance(path, str):
                if path in facts.files_edited:
                    facts.files_edited.remove(path)
                facts.files_edited.insert(0, path)
        elif name in _SHELL_TOOLS and isinstance(data.get("command"), str):
            command = data["command"].strip()
            facts.commands.append(command)
            if is_error:
                facts.failed_commands.append({"command": command[:500], "timestamp": ts,
                                              "error": _first_lines(result or "", 300)})
            if _TEST_COMMAND.search(command):
                facts.tests_run.append({"command": command[:300], "timestamp": ts,
                                        "ok": None if is_error is None else not is_error})
    facts.files_edited = facts.files_edited[:30]
    facts.failed_commands = facts.failed_commands[-8:]
    facts.tests_run = facts.tests_run[-8:]
    facts.open_todos = await _open_todos(conn, session_id)
    errors = await _rows(
        conn, "SELECT ts, kind, tool_name, text FROM records WHERE session_id = ? AND "
        "agent_id IS NULL AND (kind = 'error' OR (kind = 'tool_result' AND is_error = 1)) "
        "AND (? IS NULL OR ts > ?) AND (? IS NULL OR ts <= ?) ORDER BY ts DESC NULLS LAST, id DESC LIMIT 3",
        (session_id, since_ts, since_ts, until_ts, until_ts))
    facts.last_errors = [{"timestamp": ts, "kind": k, "tool_name": tn, "text": _first_lines(t, 500)}
                         for ts, k, tn, t in errors]
    return facts


async def _open_todos(conn: aiosqlite.Connection, session_id: str) -> list[dict[str, Any]]:
    """The items of the last TodoWrite not completed, then the open Task* tasks."""
    rows = await _rows(
        conn,
        "SELECT c.tool_name, c.text, r.text FROM records c "
        "LEFT JOIN records r ON r.tool_use_id = c.tool_use_id AND r.kind = 'tool_result' "
        "AND r.session_id = c.session_id "
        "WHERE c.session_id = ? AND c.kind = 'tool_call' AND c.agent_id IS NULL "
        "AND c.tool_name IN ('TodoWrite', 'TaskCreate', 'TaskUpdate') ORDER BY c.ts NULLS FIRST, c.id",
        (session_id,))
    todos: list[dict[str, Any]] = []
    tasks: dict[str, dict[str, Any]] = {}
    for tool, text, result in rows:
        data = tool_input(text)
        if not isinstance(data, dict):
            continue
        if tool == "TodoWrite":
            todos = [{"content": str(item.get("content", ""))[:300], "status": item.get("status")}
                     for item in data.get("todos") or [] if isinstance(item, dict)]
        elif tool == "TaskCreate":
            m = _TASK_CREATED.search(result or "")
            task_id = m.group(1) if m else f"?{len(tasks) + 1}"
            tasks[task_id] = {"content": str(data.get("subject") or data.get("description")
                                             or "")[:300], "status": "pending", "task_id": task_id}
        elif tool == "TaskUpdate":
            task = tasks.get(str(data.get("taskId")))
            if task is not None and isinstance(data.get("status"), str):
                task["status"] = data["status"]
    open_items = [t for t in todos if t["status"] != "completed"]
    open_items += [t for t in tasks.values() if t["status"] not in ("completed", "deleted")]
    return open_items[:30]


@dataclass
class Checkpoint:
    """Where a session stood (see the module docstring); `render()` is its stored text."""

    session_id: str
    title: str | None
    branch: str | None
    cwd: str | None
    project_dir: str | None
    last_ts: str | None
    goal: str | None = None
    decisions: list[str] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    summary_pending: str | None = None  # the latest summary's pending-tasks section
    summary_current_work: str | None = None
    summary: dict[str, Any] | None = None  # {uuid, timestamp} of the latest summary
    files_edited: list[str] = field(default_factory=list)
    failed_commands: list[dict[str, Any]] = field(default_factory=list)
    tests_run: list[dict[str, Any]] = field(default_factory=list)
    last_requests: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        """The checkpoint as text a person or an agent reads (and search finds)."""
        head = f"Checkpoint of session {self.title or self.session_id}"
        where = ", ".join(p for p in (
            f"id {self.session_id}", f"branch {self.branch}" if self.branch else "",
            self.cwd or "", f"last active {self.last_ts}" if self.last_ts else "") if p)
        out = [f"{head} ({where})"]
        if self.goal:
            out.append(f"Goal: {self.goal}")
        if self.pending:
            out.append("Pending:")
            out += [f"- [{t.get('status')}] {t.get('content')}" for t in self.pending]
        if self.summary_pending:
            out.append(f"Pending tasks (from the compaction summary):\n{self.summary_pending}")
        if self.summary_current_work:
            out.append(f"Current work (from the compaction summary):\n{self.summary_current_work}")
        if self.decisions:
            out.append("Decisions the user stated:")
            out += [f"- {d}" for d in self.decisions]
        if self.files_edited:
            out.append("Files edited: " + ", ".join(self.files_edited))
        if self.failed_commands:
            out.append("Commands that failed:")
            out += [f"- `{c['command']}`: {c['error']}" for c in self.failed_commands]
        if self.tests_run:
            out.append("Tests run:")
            out += [f"- `{t['command']}`" + {True: " (passed)", False: " (failed)"}.get(t["ok"], "")
                    for t in self.tests_run]
        if self.last_requests:
            out.append("Last requests:")
            out += [f"- {r}" for r in self.last_requests]
        text = "\n".join(out)
        return text if len(text) <= MAX_MEMORY_CHARS - 500 else text[: MAX_MEMORY_CHARS - 600] + "…"


def _clip(text: str | None, limit: int) -> str | None:
    if not text:
        return None
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def build_checkpoint(conn: aiosqlite.Connection, session_id: str) -> Checkpoint | None:
    """The checkpoint of `session_id` from its records; None when the session is unknown."""
    rows = await _rows(
        conn, "SELECT title, git_branch, cwd, project_dir, last_ts FROM sessions "
        "WHERE session_id = ?", (session_id,))
    if not rows:
        return None
    title, branch, cwd, project_dir, last_ts = rows[0]
    cp = Checkpoint(session_id=session_id, title=title, branch=branch, cwd=cwd,
                    project_dir=project_dir, last_ts=last_ts)
    if not branch:
        # A session whose rows say nothing yet: the latest record's branch.
        found = await _rows(conn, "SELECT git_branch FROM records WHERE session_id = ? AND "
                            "git_branch IS NOT NULL ORDER BY ts DESC NULLS LAST LIMIT 1", (session_id,))
        cp.branch = found[0][0] if found else None
    summary = await _rows(
        conn, "SELECT uuid, ts, text FROM records WHERE session_id = ? AND agent_id IS NULL "
        "AND kind = 'compact_summary' ORDER BY ts DESC NULLS LAST, id DESC LIMIT 1", (session_id,))
    since = summary[0][1] if summary else None
    if summary:
        cp.summary = {"uuid": summary[0][0], "timestamp": since}
        by_key: dict[str, str] = {}
        for s in sections(summary[0][2]):
            by_key.setdefault(s.key, s.text)
        cp.summary_pending = _clip(by_key.get("pending_tasks"), 2000)
        cp.summary_current_work = _clip(by_key.get("current_work"), 1200)
        cp.goal = _clip(by_key.get("intent"), 600)
    prompts = await _rows(
        conn, "SELECT text, ts FROM records WHERE session_id = ? AND agent_id IS NULL AND "
        "kind = 'prompt' ORDER BY ts NULLS FIRST, id", (session_id,))
    if not cp.goal and prompts:
        cp.goal = _clip(prompts[0][0], 600)
    recent = [t for t, ts in prompts if since is None or (ts or "") > since]
    cp.decisions = [_clip(t, 300) or "" for t in recent if is_decision(t)][-8:]
    cp.last_requests = [_clip(t, 300) or "" for t, _ in prompts[-5:]]
    facts = await session_facts(conn, session_id)
    cp.pending = facts.open_todos
    cp.files_edited = facts.files_edited
    cp.failed_commands = facts.failed_commands
    cp.tests_run = facts.tests_run
    return cp


async def record_checkpoint(store: Store, session_id: str, *, event: str) -> MemoryWritten | None:
    """Build the session's checkpoint and store it (superseding its previous one).

    None when the session has no records yet. `event` (pre-compact, session-end,
    ...) is kept in the memory's meta.
    """
    cp = await build_checkpoint(store.reads, session_id)
    if cp is None:
        return None
    return await write_memory(
        store, cp.render(), project_dir=cp.project_dir or "-", cwd=cp.cwd,
        title=f"Checkpoint: {cp.title}" if cp.title else None, kind="checkpoint",
        session_id=session_id, supersede=True,
        meta={"origin": "transcript", "event": event, "branch": cp.branch,
              "checkpoint": cp.to_dict()})


async def record_summary(store: Store, session_id: str, summary: str, *, project_dir: str,
                         cwd: str | None, trigger: str | None = None) -> MemoryWritten:
    """Store a compaction summary as the session's checkpoint (origin compact_summary).

    Raises InvalidQuery when the summary is empty.
    """
    text = summary.strip()
    if len(text) > MAX_MEMORY_CHARS - 200:
        text = text[: MAX_MEMORY_CHARS - 300] + "…"
    rows = await _rows(store.reads, "SELECT git_branch FROM sessions WHERE session_id = ?",
                       (session_id,))
    branch = rows[0][0] if rows else None
    return await write_memory(
        store, text, project_dir=project_dir, cwd=cwd,
        title=f"Compaction summary of session {session_id}", kind="checkpoint",
        session_id=session_id, supersede=True,
        meta={"origin": "compact_summary", "trigger": trigger, "branch": branch})
