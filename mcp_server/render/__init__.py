"""Views of the history for people: plain-text helpers (text.py), rich renderables for the
terminal (terminal.py), Markdown and HTML documents (documents.py). No database code:
each takes the dicts mcp_server/history.py and mcp_server/transcript.py return."""
