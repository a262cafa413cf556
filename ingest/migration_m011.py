"""Migration 11: a session's project key, its repository's git remote (issue 11).

Why: a project was its Claude Code folder (`sessions.project_dir`, named
after the path), so one repository in two folders, or on two machines, was
two projects. The ingest now stores, beside the path, the normalized remote
of the git work tree the session ran in (ingest/gitremote.py: `github.com/
org/repo`, no credentials), and mcp_server/projects.py widens a project to
every folder whose sessions share its key.

What it adds: `sessions.project_key` (NULL where the folder is no git work
tree, has no remote, or was not looked at yet) and an index for the lookup by
key. Existing sessions get theirs from the writer (ingest/batch.py): on
their next batch, and every older session of the same cwd with it. A
migration reads no file system, so it fills nothing itself.

Fixed text like every migration (see ingest/migrations.py).
"""

from __future__ import annotations

__all__ = ["M011_SCRIPT"]

M011_SCRIPT = """
ALTER TABLE sessions ADD COLUMN project_key TEXT;
CREATE INDEX sessions_project_key ON sessions (project_key) WHERE project_key IS NOT NULL;
"""
