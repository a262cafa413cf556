"""deja's answering side: search, the MCP server and the `deja` CLI."""
