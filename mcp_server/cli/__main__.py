"""`python -m mcp_server.cli ARGS`: the same as `deja ARGS`."""

from . import main

raise SystemExit(main())
