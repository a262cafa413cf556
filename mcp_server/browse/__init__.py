"""`deja browse`: a terminal UI over the history. `data.py` holds its queries, `app.py` the
Textual application and its help, and one module per screen (sessions, session, search,
checkpoint, doctor) the rest; `mcp_server/cli/browse.py` starts it."""
