"""One repository is one project wherever it is checked out (issue 11).

The project key (ingest/gitremote.py) is the normalized git remote of the
folder a session ran in. Real git repositories are made in temporary
folders (`git init`, `git remote add origin ...`), transcripts whose cwd
points into them are ingested by the CLI, and then:

- on SQLite, one machine with two clones of one repository: `deja search
  --project current` from either clone, and the MCP server's tools with
  `project="current"`, find both clones' sessions and not another project's;
- on PostgreSQL, two machines (DEJA_MACHINE m1 and m2, other roots, other
  paths, the remote spelled two ways) in one database: the project
  resolution, list_sessions, get_context and load_checkpoint through the
  shared read modules find both machines' sessions and say which machine;
  so does a third machine that has the repository but no history yet.

No credential of a remote url reaches either database.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
from fixtures.cli import deja, deja_env, deja_json
from fixtures.mcp import mcp_session, tool
from fixtures.postgres import PgServer
from fixtures.transcripts import SessionFile

from ingest.config import PostgresUrl
from ingest.gitremote import clear_cache, normalize_remote, project_key, remote_url
from ingest.pg.connect import connect as pg_connect
from ingest.pg.sqlconn import PgConn
from mcp_server import checkpoint, history, projects

KEY = "github.com/acme/widget"
TOKEN = "ghp_s3cretTOKENvalue0123456789"
START = datetime(2026, 5, 1, 9, 0, tzinfo=timezone.utc)


# -- the key of a remote ------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "git@github.com:acme/widget.git",
    "git@github.com:acme/widget",
    "github.com:acme/widget.git",
    "https://github.com/acme/widget",
    "https://github.com/acme/widget.git/",
    "http://github.com/acme/widget",
    "ssh://git@github.com/acme/widget.git",
    "ssh://git@github.com:22/acme/widget.git",
    "git+ssh://git@github.com/acme/widget.git",
    f"https://{TOKEN}@github.com/acme/widget.git",
    f"https://x-access-token:{TOKEN}@github.com:443/acme/widget",
    "git@GitHub.com:Acme/Widget.git",
    "HTTPS://GITHUB.COM/ACME/WIDGET",
    "  https://github.com/acme/widget\n",
])
def test_every_form_of_one_remote_gives_one_key(url: str) -> None:
    assert normalize_remote(url) == KEY


def test_nested_groups_and_other_hosts_keep_their_whole_path() -> None:
    assert normalize_remote("git@gitlab.com:group/sub/proj.git") == "gitlab.com/group/sub/proj"
    assert normalize_remote("https://git.example.org/a/b") == "git.example.org/a/b"
    assert normalize_remote("git://example.org/x/y.git") == "example.org/x/y"
    assert normalize_remote("git@github.com:acme/widget") != normalize_remote(
        "git@gitlab.com:acme/widget")


@pytest.mark.parametrize("url", [
    "", None, "/srv/git/widget.git", "../widget", "./widget", "~/widget",
    "file:///srv/git/widget.git", "C:/src/widget", "https://github.com/", "not a url at all",
])
def test_local_paths_and_nonsense_give_no_key(url: str | None) -> None:
    assert normalize_remote(url) is None


def test_no_credential_survives_normalization() -> None:
    for url in (f"https://{TOKEN}@github.com/acme/widget",
                f"https://user:{TOKEN}@github.com/acme/widget",
                f"ssh://user:{TOKEN}@host.example/acme/widget"):
        key = normalize_remote(url)
        assert key and TOKEN.lower() not in key and "user" not in key and "@" not in key


# -- the remote of a folder ---------------------------------------------------------------------


def git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org",
                    "-c", "init.defaultBranch=main", *args], cwd=cwd, check=True,
                   capture_output=True)


def repo(path: Path, remote: str | None, *, others: tuple[tuple[str, str], ...] = ()) -> Path:
    """A real git work tree at `path`, with `origin` at `remote` (and other remotes)."""
    path.mkdir(parents=True, exist_ok=True)
    git("init", "-q", str(path))
    for name, url in others:
        git("remote", "add", name, url, cwd=path)
    if remote:
        git("remote", "add", "origin", remote, cwd=path)
    return path


def test_a_folder_subfolder_and_worktree_map_to_the_repository(tmp_path: Path) -> None:
    main = repo(tmp_path / "widget", f"https://{TOKEN}@github.com/acme/widget.git",
                others=(("upstream", "git@github.com:other/fork.git"),))
    (main / "src" / "deep").mkdir(parents=True)
    git("commit", "-q", "--allow-empty", "-m", "init", cwd=main)
    git("worktree", "add", "-q", str(tmp_path / "widget-feature"), cwd=main)
    clear_cache()
    assert remote_url(main) == f"https://{TOKEN}@github.com/acme/widget.git"  # as configured
    for folder in (main, main / "src" / "deep", tmp_path / "widget-feature"):
        assert project_key(str(folder)) == KEY, folder
    # No origin: the first remote configured; no remote or no repository: no key.
    assert project_key(str(repo(tmp_path / "forked", None,
                                others=(("upstream", "git@github.com:Acme/Widget"),)))) == KEY
    assert project_key(str(repo(tmp_path / "bare-init", None))) is None
    (tmp_path / "plain").mkdir()
    assert project_key(str(tmp_path / "plain")) is None
    assert project_key(str(tmp_path / "gone")) is None
    assert project_key("relative/path") is None and project_key(None) is None


# -- SQLite: one machine, two clones ------------------------------------------------------------


def session(root: Path, cwd: Path, sid: str, word: str, day: int) -> None:
    f = SessionFile(root, projects.claude_project_dir(str(cwd)), sid, str(cwd),
                    START.replace(day=day))
    f.prompt(f"why does the {word} flange rattle in the widget build")
    f.say(f"the {word} flange is loose: tighten the widget mount")
    f.save()


SID = {name: f"00000000-0000-4000-8000-{i:012d}" for i, name in enumerate(
    ("clone_a", "clone_b", "other", "early", "m1", "m2", "m2_sub"), 1)}


@dataclass
class OneMachine:
    home: Path
    db: Path
    root: Path
    clone_a: Path
    clone_b: Path
    other: Path


@pytest.fixture(scope="module")
def one_machine(tmp_path_factory: pytest.TempPathFactory) -> OneMachine:
    base = tmp_path_factory.mktemp("clones")
    home, root, db = base / "home", base / "projects", base / "deja.db"
    home.mkdir()
    clone_a = repo(base / "src" / "widget", f"https://{TOKEN}@github.com/acme/widget.git")
    clone_b = repo(base / "scratch" / "widget-copy", "git@github.com:acme/widget.git")
    other = repo(base / "src" / "gadget", "git@github.com:acme/gadget.git")
    session(root, clone_a, SID["clone_a"], "marmoset", 1)
    session(root, clone_b, SID["clone_b"], "marmoset", 2)
    session(root, other, SID["other"], "marmoset", 3)
    out = deja_json(home, "--db", str(db), "ingest", "--root", str(root), "--no-embed", "--json")
    assert out["new_records"] == 6, out
    return OneMachine(home, db, root, clone_a, clone_b, other)


def sql(db: Path, query: str) -> list[tuple[Any, ...]]:
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        return [tuple(r) for r in conn.execute(query)]
    finally:
        conn.close()


def search_sessions(home: Path, target: str, cwd: Path, *extra: str) -> dict[str, set[Any]]:
    """The sessions (and machines) `deja search marmoset --project current` finds from `cwd`."""
    out = deja_json(home, "--db", target, "search", "marmoset", "--mode", "keyword",
                    "--project", "current", "--json", "--limit", "50", *extra, cwd=cwd)
    return {"sessions": {h["session_id"] for h in out["hits"]},
            "machines": {h.get("machine") for h in out["hits"]}}


def test_sqlite_stores_the_key_and_no_credential(one_machine: OneMachine) -> None:
    rows = dict(sql(one_machine.db, "SELECT session_id, project_key FROM sessions"))
    assert rows == {SID["clone_a"]: KEY, SID["clone_b"]: KEY,
                    SID["other"]: "github.com/acme/gadget"}
    assert TOKEN.encode() not in one_machine.db.read_bytes()


def test_sqlite_search_current_finds_both_clones(one_machine: OneMachine) -> None:
    for cwd in (one_machine.clone_a, one_machine.clone_b):
        found = search_sessions(one_machine.home, str(one_machine.db), cwd)
        assert found["sessions"] == {SID["clone_a"], SID["clone_b"]}, cwd
        assert found["machines"] == {None}  # SQLite hits say no machine
    # A subfolder of a clone is that repository too; the other project only itself.
    sub = one_machine.clone_b / "docs"
    sub.mkdir(exist_ok=True)
    assert search_sessions(one_machine.home, str(one_machine.db), sub)["sessions"] == {
        SID["clone_a"], SID["clone_b"]}
    assert search_sessions(one_machine.home, str(one_machine.db), one_machine.other)[
        "sessions"] == {SID["other"]}
    # The key itself names the project.
    out = deja_json(one_machine.home, "--db", str(one_machine.db), "search", "marmoset",
                    "--mode", "keyword", "--project", "GitHub.com/acme/widget", "--json")
    assert {h["session_id"] for h in out["hits"]} == {SID["clone_a"], SID["clone_b"]}


def test_sqlite_mcp_tools_with_current_find_both_clones(one_machine: OneMachine,
                                                        tmp_path: Path) -> None:
    env = deja_env(one_machine.home, {"CLAUDE_PROJECT_DIR": str(one_machine.clone_b)})
    args = ["-m", "mcp_server", "--db", str(one_machine.db), "--root", str(one_machine.root),
            "--log-file", str(tmp_path / "server.log")]

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        async with mcp_session(args, env, tmp_path / "stderr.txt") as s:
            hits = await tool(s, "search_memory", query="marmoset flange")
            listed = await tool(s, "list_sessions")
            return hits, listed

    hits, listed = anyio.run(go)
    assert {h["session_id"] for h in hits["hits"]} == {SID["clone_a"], SID["clone_b"]}
    assert {x["session_id"] for x in listed["sessions"]} == {SID["clone_a"], SID["clone_b"]}
    assert all("machine" not in x for x in listed["sessions"])
    assert "Traceback" not in (tmp_path / "stderr.txt").read_text()


def test_sessions_from_before_the_key_get_it_with_their_folders_next_batch(
        tmp_path: Path, home: Path) -> None:
    root, db = tmp_path / "projects", tmp_path / "deja.db"
    clone = repo(tmp_path / "widget", None)  # no remote yet: no key
    session(root, clone, SID["early"], "ocelot", 4)
    deja_json(home, "--db", str(db), "ingest", "--root", str(root), "--no-embed", "--json")
    assert sql(db, "SELECT project_key FROM sessions") == [(None,)]
    git("remote", "add", "origin", "git@github.com:acme/widget.git", cwd=clone)
    session(root, clone, SID["clone_a"], "ocelot", 5)
    deja_json(home, "--db", str(db), "ingest", "--root", str(root), "--no-embed", "--json")
    assert dict(sql(db, "SELECT session_id, project_key FROM sessions")) == {
        SID["early"]: KEY, SID["clone_a"]: KEY}


# -- PostgreSQL: two machines, one repository ---------------------------------------------------


@dataclass
class TwoMachines:
    url: str
    name: str
    home: Path
    alice: Path   # machine m1's clone
    bob: Path     # machine m2's clone, another path and another spelling of the remote
    carol: Path   # a third machine's clone, no history yet
    other: Path


@pytest.fixture(scope="module")
def two_machines(tmp_path_factory: pytest.TempPathFactory,
                 postgres_server: PgServer) -> TwoMachines:
    base = tmp_path_factory.mktemp("machines")
    home = base / "home"
    home.mkdir()
    name = postgres_server.new_database()
    url = postgres_server.uri(name)
    alice = repo(base / "alice" / "src" / "widget", f"https://{TOKEN}@github.com/acme/widget")
    bob = repo(base / "bob" / "work" / "Widget", "ssh://git@github.com/Acme/widget.git")
    carol = repo(base / "carol" / "widget", "git@github.com:acme/widget.git")
    other = repo(base / "bob" / "work" / "gadget", "git@github.com:acme/gadget.git")
    (bob / "pkg").mkdir()
    session(base / "root1", alice, SID["m1"], "marmoset", 6)
    session(base / "root2", bob, SID["m2"], "marmoset", 7)
    session(base / "root2", bob / "pkg", SID["m2_sub"], "marmoset", 8)
    session(base / "root2", other, SID["other"], "marmoset", 9)
    for machine, root in (("m1", base / "root1"), ("m2", base / "root2")):
        deja_json(home, "--db", url, "ingest", "--root", str(root), "--no-embed", "--json",
                  env={"DEJA_MACHINE": machine})
    return TwoMachines(url, name, home, alice, bob, carol, other)


WIDGET = {SID["m1"], SID["m2"], SID["m2_sub"]}


def pg_read(url: str, read: Any) -> Any:
    async def go() -> Any:
        raw = await pg_connect(PostgresUrl(url), {})
        try:
            return await read(PgConn(raw))
        finally:
            await raw.close()

    return anyio.run(go)


def test_pg_sessions_carry_key_and_machine(two_machines: TwoMachines,
                                           postgres_server: PgServer) -> None:
    with postgres_server.connect(two_machines.name) as conn:
        rows = {r[0]: r[1:] for r in conn.execute(
            "SELECT session_id, project_key, machine FROM sessions").fetchall()}
        assert rows == {SID["m1"]: (KEY, "m1"), SID["m2"]: (KEY, "m2"),
                        SID["m2_sub"]: (KEY, "m2"), SID["other"]: ("github.com/acme/gadget", "m2")}
        dump = json.dumps([list(r) for r in conn.execute(
            "SELECT * FROM sessions").fetchall()], default=str)
        assert TOKEN not in dump


def test_pg_current_finds_the_teammates_sessions(two_machines: TwoMachines) -> None:
    async def read(conn: PgConn) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("alice", "bob", "carol"):
            current = str(getattr(two_machines, name))
            scope, notes = await projects.project_filter(conn, current, "current")
            listed = await history.list_sessions(conn, project=scope, limit=50)
            out[name] = (scope, notes, listed["sessions"])
        out["other"] = await history.list_sessions(conn, project=str(two_machines.other))
        out["folder"] = await projects.resolve_project(
            conn, projects.claude_project_dir(str(two_machines.alice)))
        out["memory"] = await projects.memory_project(conn, str(two_machines.alice), None)
        return out

    out = pg_read(two_machines.url, read)
    for name in ("alice", "bob", "carol"):
        scope, notes, sessions = out[name]
        assert scope == str(getattr(two_machines, name)) and notes == [], name
        assert {s["session_id"] for s in sessions} == WIDGET, name
        assert {s["session_id"]: s["machine"] for s in sessions} == {
            SID["m1"]: "m1", SID["m2"]: "m2", SID["m2_sub"]: "m2"}
    assert [s["session_id"] for s in out["other"]["sessions"]] == [SID["other"]]
    # A folder name widens the same way; a new memory stays under this machine's folder.
    assert len(out["folder"]) == 3
    assert out["memory"] == (projects.claude_project_dir(str(two_machines.alice)),
                             str(two_machines.alice))


def test_pg_context_and_checkpoint_say_the_machine(two_machines: TwoMachines) -> None:
    async def read(conn: PgConn) -> tuple[Any, Any]:
        uuid = (await conn.execute_fetchall(
            "SELECT uuid FROM records WHERE session_id = ? AND kind = 'prompt'",
            (SID["m2"],)))[0][0]
        context = await history.get_context(conn, uuid, before=1, after=1)
        briefing = await checkpoint.load_checkpoint(conn, session_id=SID["m1"])
        return context, briefing

    context, briefing = pg_read(two_machines.url, read)
    assert context["session"]["session_id"] == SID["m2"] and context["session"]["machine"] == "m2"
    assert briefing["session"]["machine"] == "m1"


def test_pg_search_current_finds_both_machines(two_machines: TwoMachines) -> None:
    found = search_sessions(two_machines.home, two_machines.url, two_machines.carol)
    assert found["sessions"] == WIDGET and found["machines"] == {"m1", "m2"}


def test_pg_search_current_finds_this_machines_own_path(two_machines: TwoMachines) -> None:
    """What the PostgreSQL search finds already: this path's sessions, with their machine."""
    found = search_sessions(two_machines.home, two_machines.url, two_machines.bob)
    assert {SID["m2"], SID["m2_sub"]} <= found["sessions"] and "m2" in found["machines"]


def test_an_old_pg_sessions_table_upgrades(postgres_server: PgServer, tmp_path: Path) -> None:
    """A version 4 database gains the columns; its sessions their machine from their records."""
    from ingest.pg import schema

    name = postgres_server.new_database()
    url = postgres_server.uri(name)
    root = tmp_path / "projects"
    session(root, tmp_path / "nowhere", SID["early"], "ocelot", 10)
    with postgres_server.connect(name) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        for script in (schema.SCHEMA_V1, schema.SCHEMA_V2, schema.SCHEMA_V3, schema.SCHEMA_V4):
            conn.execute(script)
        conn.execute("INSERT INTO sources (machine, path, display_path, project_dir, layout) "
                     "VALUES ('old', 'x', 'x', '-p', 'session')")
        conn.execute("INSERT INTO records (machine, source_id, line_key, part, session_id, kind, "
                     "text, text_len) SELECT 'old', id, 'k', 0, 's-old', 'prompt', 't', 1 "
                     "FROM sources")
        conn.execute("INSERT INTO sessions (session_id, project_dir) VALUES ('s-old', '-p')")
    deja(tmp_path, "--db", url, "ingest", "--root", str(root), "--no-embed", "--json",
         env={"DEJA_MACHINE": "new"})
    with postgres_server.connect(name) as conn:
        assert conn.execute("SELECT version FROM deja_schema").fetchone()[0] == \
            schema.SCHEMA_VERSION
        assert dict(conn.execute("SELECT session_id, machine FROM sessions").fetchall()) == {
            "s-old": "old", SID["early"]: "new"}


def test_sync_carries_the_key_and_names_the_machine(one_machine: OneMachine,
                                                   postgres_server: PgServer) -> None:
    name = postgres_server.new_database()
    deja_json(one_machine.home, "--db", str(one_machine.db), "sync", "--to",
              postgres_server.uri(name), "--json", env={"DEJA_MACHINE": "laptop"})
    with postgres_server.connect(name) as conn:
        rows = {r[0]: r[1:] for r in conn.execute(
            "SELECT session_id, project_key, machine FROM sessions").fetchall()}
    assert rows == {SID["clone_a"]: (KEY, "laptop"), SID["clone_b"]: (KEY, "laptop"),
                    SID["other"]: ("github.com/acme/gadget", "laptop")}
