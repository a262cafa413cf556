"""`python -m ingest`: the standalone ingest command."""

from .cli import main

raise SystemExit(main())
