"""deja's ingest side: reading Claude Code transcripts into the deja database.

Owns everything written to the database (schema, migrations, cursors, records,
embeddings). Imports nothing from `mcp_server`.
"""

__version__ = "0.1.0"
