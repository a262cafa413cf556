"""The PostgreSQL engine (team memory, issue 11): several machines, one database.

`DEJA_DB=postgresql://...` selects it. It ingests, exactly once, embeds and
counts: connect.py opens a connection and words its failures (never a
password), schema.py lays out the tables as fixed SQL with a version row,
text.py makes strings storable, batch.py writes one batch with its cursor,
store.py is the store the ingest runner writes through (ingest/surface.py),
lock.py keeps one ingester per machine with an advisory lock, vectors.py
gives the records their chunks and pgvector vectors, and run.py is the
ingest and embed commands on it, search_schema.py the keyword index,
sqlconn.py the aiosqlite-shaped connection the shared read queries run on,
memories.py a memory's insert, sync.py `deja sync --to URL`. Search is
mcp_server/search/pg/; the server, the hooks and every other command reach
these through the same library calls as on SQLite.

psycopg 3 is an optional dependency (`deja[postgres]`): no module that
loads it is imported unless a PostgreSQL URL is given. text.py (strings
either engine can store) loads nothing and is used by the SQLite search too.
"""
