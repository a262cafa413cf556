"""The CLI end to end: ingest, re-ingest, stats, search, browse's refusal without a terminal,
on both engines (the `engine` fixture); help for every command."""

from __future__ import annotations

import argparse
import importlib
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures import cli
from fixtures.engine_corpus import CORPUS_MACHINE, Corpus
from fixtures.engines import Target, is_postgres, sql
from fixtures.paths import SAMPLE


def test_ingest_shared_corpus_then_rerun_adds_nothing(corpus: Corpus, shared_projects: Path,
                                                      tmp_path: Path,
                                                      deja_json: Callable[..., Any]) -> None:
    # The run's one ingest of the corpus on this engine (fixtures/engine_corpus.py), rerun on
    # a copy of what it wrote, as the machine that wrote it (sources are keyed by machine).
    first = corpus.summary
    for key in ("files", "sessions", "new_records", "skipped_lines", "redactions"):
        assert isinstance(first[key], int), key
    assert first["files"] == 35
    assert first["skipped_lines"] == 0, first["skipped"]
    assert first["new_records"] > 3000
    db = str(corpus.copy(tmp_path))
    again = deja_json("--db", db, "ingest", "--root", str(shared_projects), "--json",
                      env={"DEJA_MACHINE": CORPUS_MACHINE})
    assert again["new_records"] == 0
    assert again["files_read"] == 0
    assert again["elapsed_s"] < 1.0
    stats = deja_json("--db", db, "stats", "--json")
    assert stats["records"] == first["new_records"]
    assert stats["sessions"] >= 10
    assert sum(stats["by_kind"].values()) == stats["records"]


def test_db_env_var_and_file_modes(tmp_path: Path, db_target: Target,
                                   deja_json: Callable[..., Any]) -> None:
    db = db_target if is_postgres(db_target) else tmp_path / "private" / "x.db"
    out = deja_json("ingest", "--root", str(SAMPLE), "--json", env={"DEJA_DB": str(db)})
    assert out["database"] == str(db)
    assert sql(db, "SELECT COUNT(*) FROM records")[0][0] == out["new_records"] > 0
    if is_postgres(db):
        return  # the server's files are the server's
    assert db.stat().st_mode & 0o777 == 0o600
    assert db.parent.stat().st_mode & 0o777 == 0o700


def test_browse_needs_a_terminal(corpus: Corpus) -> None:
    proc = cli.deja(corpus.home, "--db", corpus.db, "browse", expect=1)
    assert "browse needs a terminal" in proc.stderr and "Traceback" not in proc.stderr


def test_readme_demo_on_sample_transcripts(db_target: Target,
                                           deja_json: Callable[..., Any]) -> None:
    """README's no-history demo: the sample transcripts under tests/ ingest and are searchable."""
    db_path = db_target
    out = deja_json("--db", str(db_path), "ingest", "--root", str(SAMPLE), "--json")
    assert out["files"] == 1 and out["sessions"] == 1 and out["skipped_lines"] == 0
    hits = deja_json("--db", str(db_path), "search", "redis timeout", "--json")["hits"]
    assert hits and all("redis" in h["snippet"].lower() for h in hits[:3])
    assert {"uuid", "session_id", "project", "kind", "timestamp", "snippet"} <= set(hits[0])
    assert hits[0]["project"] == "/home/demo/shop-api"


# -- help for every command ------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str]]:
    """(name, the one-line help the parent lists it with) of each direct subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {a.dest: a.help or "" for a in action._choices_actions}
            for name in action.choices:
                yield name, listed.get(name, "")


def _commands_from_parser(build: Callable[[], argparse.ArgumentParser]
                          ) -> list[tuple[tuple[str, ...], str]]:
    out: list[tuple[tuple[str, ...], str]] = []

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, listed in _subcommands(parser):
                    out.append(((*path, name), listed))
                    walk(action.choices[name], (*path, name))

    walk(build(), ())
    return out


def _commands_from_help() -> list[tuple[tuple[str, ...], str]]:
    """Without build_parser: the COMMAND list of `deja --help` (one level)."""
    with tempfile.TemporaryDirectory() as home:
        text = cli.deja(Path(home), "--help").stdout
    listing = text.split("positional arguments:", 1)[1].split("\n\n", 1)[0]
    found = re.findall(r"^    (\S+)(?:\s+(.+))?$", listing, re.MULTILINE)
    return [((name,), listed or "") for name, listed in found]


def _commands() -> list[tuple[tuple[str, ...], str]]:
    """Every deja command and subcommand, read from the parser so new ones are covered."""
    build = getattr(importlib.import_module("mcp_server.cli"), "build_parser", None)
    return _commands_from_parser(build) if callable(build) else _commands_from_help()


COMMANDS = _commands()


def test_the_command_list_is_read_from_the_parser() -> None:
    names = {path[0] for path, _ in COMMANDS}
    assert {"serve", "ingest", "stats", "search", "show", "sessions", "embed", "reembed"} <= names


def test_deja_help_lists_every_command(deja: Callable[..., Any]) -> None:
    text = deja("--help").stdout
    assert text.startswith("usage: deja") and "Long-term memory" in text
    for path, _ in COMMANDS:
        if len(path) == 1:
            assert re.search(rf"^\s+{re.escape(path[0])}\s", text, re.MULTILINE), path


@pytest.mark.parametrize(("path", "listed"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_has_help(deja: Callable[..., Any], path: tuple[str, ...],
                                listed: str) -> None:
    """`deja CMD --help` exits 0 with a usage line and a description; its parent lists it
    with a one-line help."""
    assert len(listed.strip()) >= 10, f"deja {' '.join(path)} has no help line in its parent"
    proc = deja(*path, "--help")
    assert proc.stdout.startswith(f"usage: deja {' '.join(path)}"), proc.stdout[:300]
    paragraphs = [p.strip() for p in proc.stdout.split("\n\n")]
    description = paragraphs[1] if len(paragraphs) > 1 else ""
    if re.match(r"[\w ]+:\n", description):  # a section ("options:"), not a description
        description = ""
    assert len(description) >= 20, (
        f"deja {' '.join(path)} --help says nothing about what it does:\n{proc.stdout}")
    assert proc.stderr == ""
