"""The most frequent terms of the history, from the full-text index's vocabulary.

FTS5 already counts, for every term, the records holding it
(`records_fts_vocab`, an fts5vocab table over the `text` column, migration
m004/m005): reading that is far cheaper than tokenizing the history again.
The price is that the index holds Porter stems (`configur`, `thi`), and that
it covers the whole database: a `--project` or time filter does not narrow
the terms (the JSON says so in `top_terms_scope`). On PostgreSQL the same list
comes from `ts_stat` over the keyword search's tsvector column (snowball stems).

What is left out: stopwords (written here also as the stems the index holds),
the keys and literals of tool-call JSON (every Edit carries `file_path`,
`old_string`...), numbers, and terms shorter than three characters.
"""

from __future__ import annotations

import re
from typing import Any

import aiosqlite

__all__ = ["STOPWORDS", "top_terms"]

STOPWORDS = frozenset("""
a about above after again against all also am an and ani any are aren as at be becaus because
been before being below between both but by can cannot could couldn did didn do doe does doing
don down dure during each few for from further had hadn ha has hasn have haven having he her here
hers herself him himself hi his how i if in into is isn it its itself just let ll me more most
mustn my myself no nor not now of off on onc once onli only or other ought our ours ourselves out
over own re same shan she should shouldn so some such than that the their theirs them themselves
then there these they thi this those through to too under until up us ve veri very wa was wasn
we were weren what when where which while who whom whi why will with won would wouldn you your
yours yourself yourselves yes ok okai okay get got go like make need use want see now one two new
may might must shall here there thing way well still even much mani many us usual
true false null none undefin undefined
file path old string new replac replace_al command descript content type text input output
tool id name result error todo statu status activeform pend pending complet progress limit
offset pattern lin line number run timeout background
""".split())

# On PostgreSQL: ts_stat over the keyword search's `search_tsv` (ingest/pg/search_schema.py:
# snowball stems, as FTS5's Porter stems), weight A only: the record's own words, not the
# context words of the record before it (weight B). It reads every record's tsvector, about
# the cost of the FTS5 vocabulary walk, with no index to read instead.
_PG_TERMS = ("SELECT word, ndoc, nentry FROM ts_stat('SELECT search_tsv FROM records', 'a') "
             "ORDER BY ndoc DESC, word LIMIT ?")

_NUMERIC = re.compile(r"^[0-9_.x]+$|^[0-9a-f]{8,}$")


def _keep(term: str) -> bool:
    return len(term) >= 3 and term not in STOPWORDS and not _NUMERIC.match(term)


async def top_terms(conn: aiosqlite.Connection, limit: int = 30) -> list[dict[str, Any]]:
    """The `limit` terms held by most records: [{"term", "records", "occurrences"}]."""
    out: list[dict[str, Any]] = []
    # Over-fetch: most of the very top is stopwords and tool-JSON keys.
    rows = await conn.execute_fetchall(
        _PG_TERMS if getattr(conn, "engine", "sqlite") == "postgresql" else
        "SELECT term, doc, cnt FROM records_fts_vocab WHERE col = 'text' "
        "ORDER BY doc DESC LIMIT ?", (limit * 8 + 200,))
    for term, docs, count in rows:
        if _keep(term):
            out.append({"term": term, "records": docs, "occurrences": count})
            if len(out) >= limit:
                break
    return out
