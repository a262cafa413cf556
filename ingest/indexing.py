"""What today's deja puts in its indexes: which records get vectors, and the
full-text context of a record.

These are live settings of the writers (store.py, memories.py) and of the
benches that build databases the way ingest does. They are free to change:
the migrations never read them (each migration carries the SQL it ran when it
shipped, as fixed text), so changing a value here changes what is written
from now on, never what an upgrade of an old database produces. Changing what
already-written rows hold (the `records_au` trigger, which repeats
FTS_CONTEXT_SQL, or the `embed_state` of old rows) takes a new migration.
"""

from __future__ import annotations

__all__ = ["EMBEDDABLE_KINDS", "CONTEXT_CHARS", "CONTEXT_KINDS", "FTS_CONTEXT_SQL"]

# Kinds that get vectors. Others (commands, injected meta, system noise,
# compaction markers, errors) stay keyword-only: FTS covers them.
EMBEDDABLE_KINDS = (
    "prompt", "assistant", "thinking", "tool_call", "tool_result", "compact_summary",
    "summary", "workflow_result", "memory", "attachment",
)

# What the full-text index holds for each record: its own text, and the text
# before it in the same file (capped), in a second column that search weighs
# low. Only what a record can answer counts as its context: a prompt, a reply,
# a tool call (for its result), a summary. A tool's output or a thinking block
# before a reply would add the most words (58% of the context text of the
# shared transcripts) and say least about what the reply answers. Memories
# stand alone: they have no conversation around them.
# The expression reads the record as `r` and the SQL function deja_fts_text,
# which ingest.db registers on every connection.
CONTEXT_CHARS = 2000
CONTEXT_KINDS = ("prompt", "assistant", "tool_call", "compact_summary", "summary")
FTS_CONTEXT_SQL = (
    "CASE WHEN r.kind = 'memory' THEN '' ELSE deja_fts_text(("
    f"SELECT CASE WHEN p.kind IN ({', '.join(repr(k) for k in CONTEXT_KINDS)}) "
    f"THEN substr(p.text, 1, {CONTEXT_CHARS}) END "
    "FROM records p WHERE p.source_id = r.source_id AND p.id < r.id "
    "ORDER BY p.id DESC LIMIT 1)) END"
)
