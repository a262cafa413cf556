"""`deja browse`: a terminal UI over the history. `data.py` holds its queries, `app.py` its
Textual screens; `mcp_server/cli/browse.py` starts it."""
