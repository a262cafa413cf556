"""What today's deja puts in its indexes: which records get vectors, and the
full-text context of a record.

These are live settings of the writers (batch.py, derived.py, memories.py)
and of the benches that build databases the way ingest does. They are free to change:
the migrations never read them (each migration carries the SQL it ran when it
shipped, as fixed text), so changing a value here changes what is written
from now on, never what an upgrade of an old database produces. Changing what
already-written rows hold (the `records_au` trigger, which repeats
FTS_CONTEXT_SQL, or the `embed_state` of old rows) takes a new migration.
"""

from __future__ import annotations

import json
import re

__all__ = ["EMBEDDABLE_KINDS", "CONTEXT_CHARS", "CONTEXT_KINDS", "FTS_CONTEXT_SQL",
           "FTS_SKIP_SQL", "SKIP_KINDS", "COMMAND_KINDS", "SKIP_LOOKBACK", "SKIP_MIN_ARGS",
           "command_args", "PASSAGE_FROM", "PASSAGE_CHARS", "PASSAGE_OVERLAP", "PASSAGE_ROWID",
           "PASSAGES_SQL", "passage_spans", "passages_json"]

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

# Injected copies of what the user typed: a `system`, `meta` or `attachment`
# record (a skill's expansion ending "ARGUMENTS: ...") that repeats the
# arguments of the slash command just before it in the same file. The
# command record already holds them; the copy would rank twice for the same
# words and crowd another answer out of the list. Such records get no
# full-text rows (they keep their raw text; these kinds get no vectors).
FTS_SKIP_SQL = (
    "(r.kind IN ('system', 'meta', 'attachment') AND EXISTS ("
    "SELECT 1 FROM (SELECT trim(substr(p.text, instr(p.text, '<command-args>') + 14, "
    "instr(p.text, '</command-args>') - instr(p.text, '<command-args>') - 14)) AS args "
    "FROM records p WHERE p.source_id = r.source_id AND p.id < r.id AND p.id >= r.id - 3 "
    "AND p.kind IN ('command', 'prompt') AND instr(p.text, '</command-args>') > 0) "
    "WHERE length(args) >= 8 AND instr(r.text, args) > 0))"
)
# FTS_SKIP_SQL's terms, for the writers that apply the rule outside SQLite (PostgreSQL:
# ingest/pg/fulltext.py and the schema v8 triggers, ingest/pg/search_rules.py): the
# kinds of a copy, the kinds of the record it copies, how many records back that one
# may be, and the shortest arguments that count.
SKIP_KINDS = ("system", "meta", "attachment")
COMMAND_KINDS = ("command", "prompt")
SKIP_LOOKBACK = 3
SKIP_MIN_ARGS = 8
_ARGS_OPEN, _ARGS_CLOSE = "<command-args>", "</command-args>"


def command_args(text: str) -> str | None:
    """FTS_SKIP_SQL's `args` of a command (or prompt) record, as SQLite computes it: what
    its <command-args> holds, spaces trimmed; None without a </command-args>.

    To the letter of SQLite's instr and substr, so both engines skip the same records:
    without an opening tag the arguments start at character 14, and with the closing
    tag first substr's negative length takes the characters before its start."""
    close = text.find(_ARGS_CLOSE) + 1
    if close == 0:
        return None
    start = text.find(_ARGS_OPEN) + 1 + len(_ARGS_OPEN)
    return text[min(start, close) - 1:max(start, close) - 1].strip(" ")

# Passages: a long record (a compaction summary, a long tool output or prompt)
# is also indexed in pieces of at most PASSAGE_CHARS characters (the last one
# up to a quarter longer), cut at line or sentence ends and overlapping by
# about PASSAGE_OVERLAP, in `passages_fts`
# (migration m007). BM25 over the whole record buries one sentence under its
# length; a passage scores it as a short record would. A passage's rowid is
# record id * PASSAGE_ROWID + where it starts in the record's text, so it
# carries both without a table of its own (TEXT_CAP keeps starts far below).
# Tuned on bench/recall.py's v1 questions (LoCoMo's turns are too short to
# get passages): 500/100 gave hybrid hit@10 80.0, MRR .505; 800/150 80.0/.490;
# 1,000/100 78.3/.463; 300/60 81.7/.489 with 1.7x the passages of 500/100.
# A threshold of 1,000 or 2,500 instead of 1,500 did no better.
PASSAGE_FROM = 1500
PASSAGE_CHARS = 500
PASSAGE_OVERLAP = 100
PASSAGE_ROWID = 1 << 24

_LINE_END = re.compile(r"\n")
_SENTENCE_END = re.compile(r"[.!?;:。！？](?=\s)|\n")
_SPACE = re.compile(r"\s")


def _cut(text: str, lo: int, hi: int) -> int:
    """The best place in [lo, hi] to end a passage: after the last line end, else
    sentence end, else space; hi when there is none."""
    for pattern in (_LINE_END, _SENTENCE_END, _SPACE):
        last = -1
        for m in pattern.finditer(text, lo, hi):
            last = m.end()
        if last > lo:
            return last
    return hi


def _next_start(text: str, lo: int, hi: int) -> int:
    """The first line start in [lo, hi), else sentence start, else word start; hi if none."""
    for pattern in (_LINE_END, _SENTENCE_END, _SPACE):
        m = pattern.search(text, lo, hi)
        if m is not None:
            return m.end()
    return hi


def passage_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the passages of `text`; none for a text of PASSAGE_FROM or less."""
    n = len(text)
    if n <= PASSAGE_FROM:
        return []
    spans: list[tuple[int, int]] = []
    start = 0
    while start < n:
        end = n if n - start <= PASSAGE_CHARS * 5 // 4 else _cut(
            text, start + PASSAGE_CHARS // 2, start + PASSAGE_CHARS)
        spans.append((start, end))
        if end >= n:
            break
        # The next passage starts at the first line or sentence start in the overlap.
        start = max(_next_start(text, end - PASSAGE_OVERLAP, end), start + 1)
        while start < n and text[start].isspace():
            start += 1
    return spans


def passages_json(text: str | None) -> str:
    """passage_spans as JSON ("[[0, 812], [690, 1500], ...]"): the SQL function
    `deja_passages`, which the writers and migration m007 read with json_each."""
    if not text or len(text) <= PASSAGE_FROM:
        return "[]"
    return json.dumps(passage_spans(text), separators=(",", ":"))


# What the writers add to passages_fts for the records with id > ?. The
# same statement, in fixed text, is in m007 (its backfill and its update trigger).
PASSAGES_SQL = (
    "INSERT INTO passages_fts (rowid, text) "
    f"SELECT r.id * {PASSAGE_ROWID} + (j.value ->> 0), "
    "deja_fts_text(substr(r.text, (j.value ->> 0) + 1, (j.value ->> 1) - (j.value ->> 0))) "
    "FROM records r, json_each(deja_passages(r.text)) j "
    f"WHERE {{where}} AND length(r.text) > {PASSAGE_FROM} AND NOT {FTS_SKIP_SQL}"
)
