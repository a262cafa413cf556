"""Export and import of deja's history: JSONL (round-trips), Markdown, Parquet.

- `selection`: which rows a `--project/--session/--since` export covers, read
  in one pass in id order (the order the full-text context needs on import).
- `jsonl`: the exchange format, one JSON object a line, tagged by `type`.
- `importer`: a JSONL export into a database, idempotent by the records'
  unique key (source path, line key, part).
- `markdown`, `parquet`: for people and for analysis; not read back.
"""
