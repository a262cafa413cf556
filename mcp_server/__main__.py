"""`python -m mcp_server`: the MCP stdio server (same as `deja serve`)."""

import sys

from .cli import main

raise SystemExit(main(["serve", *sys.argv[1:]]))
