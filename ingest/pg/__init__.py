"""The PostgreSQL engine (team memory, issue 11): several machines, one database.

`DEJA_DB=postgresql://...` selects it. It ingests, exactly once, embeds and
counts: connect.py opens a connection and words its failures (never a
password), schema.py lays out the tables as fixed SQL with a version row,
text.py makes strings storable, batch.py writes one batch with its cursor,
store.py is the store the ingest runner writes through (ingest/surface.py),
lock.py keeps one ingester per machine with an advisory lock, vectors.py
gives the records their chunks and pgvector vectors, and run.py is the
ingest and embed commands on it. Search is mcp_server/search/pg/; the
server, the hooks and the history views come later: the CLI refuses them on
a PostgreSQL URL.

psycopg 3 is an optional dependency (`deja[postgres]`): nothing here is
imported unless a PostgreSQL URL is given.
"""
