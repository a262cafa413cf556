"""A compaction summary cut into its sections, and the sections that matter for resuming.

Claude Code's compaction summaries (and the `compact_summary` PostCompact
hands a hook) are written to a fixed outline of numbered sections: "1. Primary
Request and Intent:", ..., "7. Pending Tasks:", "8. Current Work:", "9.
Optional Next Step:". Whoever resumes work needs the pending tasks and the
current work first, not the first N characters (the request and a list of
technical concepts). `sections()` finds the headings, `by_priority()` orders
the sections for resuming. Headings are recognised by their words, not their
numbers, and a summary without the outline is one section. Pure: text in,
sections out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Section", "sections", "by_priority", "SECTION_KEYS"]

# (key, words a heading holds), in the order a resuming agent reads them:
# what is left to do, where work stood, what was decided and what broke.
_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pending_tasks", ("pending task", "pending", "remaining task", "todo", "open task")),
    ("current_work", ("current work", "current state", "work in progress")),
    ("next_step", ("next step",)),
    ("errors_and_fixes", ("error", "fix", "bug")),
    ("decisions", ("decision", "problem solving", "approach", "solution")),
    ("intent", ("primary request", "intent", "initial request", "goal", "request")),
    ("user_messages", ("user message",)),
    ("files", ("files and code", "file", "code section")),
    ("concepts", ("technical concept", "concept")),
)
SECTION_KEYS: tuple[str, ...] = (*(key for key, _ in _KINDS), "other")

# A heading: at the start of a line, "7. Pending Tasks:" (maybe bold or a
# markdown heading), or "## Pending Tasks". Nested numbered items are indented,
# or end with more text after the colon, so they are not headings.
_HEADING = re.compile(
    r"^(?:#{1,4}\s*)?(?:\*\*)?(?:(\d{1,2})\.\s+)?(?:\*\*)?"
    r"([A-Z][A-Za-z /&'-]{2,60}?)(?:\*\*)?:?(?:\*\*)?\s*$",
    re.MULTILINE,
)


@dataclass(frozen=True)
class Section:
    key: str  # one of SECTION_KEYS
    heading: str
    text: str  # the body, without the heading


def _key(heading: str) -> str | None:
    low = heading.lower()
    for key, words in _KINDS:
        if any(w in low for w in words):
            return key
    return None


def sections(text: str) -> list[Section]:
    """The summary's sections in their order; one `other` section when it has no outline.

    A heading counts when its words name a known section (SECTION_KEYS) and it is
    numbered or a markdown heading, so that a stray capitalised line is body text.
    """
    marks: list[tuple[int, int, str, str]] = []  # start, body start, key, heading
    for m in _HEADING.finditer(text):
        numbered = m.group(1) is not None
        markdown = m.group(0).startswith("#")
        key = _key(m.group(2))
        if key is None or not (numbered or markdown):
            continue
        marks.append((m.start(), m.end(), key, m.group(2).strip()))
    if not marks:
        return [Section("other", "", text.strip())] if text.strip() else []
    out: list[Section] = []
    preamble = text[: marks[0][0]].strip()
    if preamble:
        out.append(Section("other", "", preamble))
    for i, (_, body_start, key, heading) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else len(text)
        body = text[body_start:end].strip()
        if body:
            out.append(Section(key, heading, body))
    return out


def by_priority(found: list[Section]) -> list[Section]:
    """`found` ordered for resuming (SECTION_KEYS order; the preamble last)."""
    rank = {key: i for i, key in enumerate(SECTION_KEYS)}
    return sorted(found, key=lambda s: rank[s.key])
