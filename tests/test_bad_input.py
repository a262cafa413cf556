"""Bad input: ingest goes on, reports each problem, and loses nothing else.

Malformed JSON, a JSON value that is not an object, invalid UTF-8, escaped lone
surrogates, NUL characters, 50 MB single lines, an empty file, unknown line
types, a broken subagent meta file, names that are not UTF-8, and files and
folders the ingesting user cannot read (when the tests run as root, the child
runs without root's permission override: fixtures.privileges).

Each test of what ingest keeps runs on both engines (the `engine` fixture); the
database folder's own failure is SQLite's alone.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures.cli import deja
from fixtures.engines import Target, is_postgres, sql
from fixtures.privileges import permission_bound
from fixtures.targets import socket_link
from fixtures.transcripts import assistant, conversation, line, tool_result, write

SESSION = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"
BIG = 50 * 1024 * 1024


def _uuids(db: Target) -> set[str]:
    return {r[0] for r in sql(db, "SELECT DISTINCT uuid FROM records WHERE uuid IS NOT NULL")}


def _good(n: int, tag: str) -> list[bytes]:
    return conversation(SESSION, n, prefix=tag)


def _good_uuids(n: int, tag: str) -> set[str]:
    return {f"{tag}-{i:04d}-{SESSION[:8]}" for i in range(n)}


def test_bad_lines_are_reported_and_the_rest_is_kept(tmp_path: Path, db_target: Target,
                                                     deja_json: Callable[..., Any]) -> None:
    db_path = db_target
    root = tmp_path / "projects"
    proj = root / "-home-dev-gizmo"
    sid = SESSION.encode()
    mixed = write(proj / f"{SESSION}.jsonl", [
        *_good(2, "a"),
        b'{"type": "user", "uuid": "broken", "message": {"content": "no end"\n',            # line 3
        *_good(2, "b"),
        b"[1, 2, 3]\n",                                                                       # line 6
        *_good(2, "c"),
        b'{"type":"user","uuid":"utf8-1","sessionId":"' + sid +
        b'","message":{"role":"user","content":"caf\xe9 \xff\xfe latin-1 bytes kiwiword"}}\n',
        *_good(2, "d"),
        b'{"type":"hologram","uuid":"holo-1","sessionId":"' + sid +
        b'","message":{"content":"a line type from a future version, emuword"}}\n',
        b'{"type":"telemetry-blob","payload":{"x":1}}\n',
        *_good(2, "e"),
        b'{"type":"user","uuid":"surr-1","sessionId":"' + sid +
        b'","message":{"role":"user","content":"half an emoji \\ud83d then dingoword"}}\n',
        tool_result(SESSION, "nul-1", "toolu_01N", "binary\x00\x01\x02 output then wallabyword"),
        b"\n",
        b"   \t \n",
        *_good(2, "f"),
    ])
    big = write(proj / "7d8e9f0a-1b2c-4d3e-8f4a-5b6c7d8e9f0a.jsonl", [
        *_good(2, "g"),
        tool_result(SESSION, "big-1", "toolu_01B", "numbat " + "z" * BIG + " tailword"),
        *_good(2, "h"),
        b'{"type": "user", "junk": "' + b"q" * BIG + b"\n",  # 50 MB of JSON that never closes
        *_good(2, "i"),
    ])
    write(proj / "empty.jsonl", [])
    sub = proj / SESSION / "subagents"
    write(sub / "agent-a77777777777777777.jsonl", _good(2, "j"))
    (sub / "agent-a77777777777777777.meta.json").write_text("{not json")
    odd_dir = os.fsencode(str(root)) + b"/-home-caf\xe9"
    os.makedirs(odd_dir)
    with open(odd_dir + b"/\xff\xfename-" + SESSION.encode() + b".jsonl", "wb") as f:
        f.write(b"".join(_good(2, "k")))

    out = deja_json("--db", str(db_path), "ingest", "--root", str(root), "--json", "--no-embed")

    # Each problem is reported ...
    skipped = [(s["path"], s["line"], s["reason"]) for s in out["skipped"]]
    assert out["skipped_lines"] == 3 == len(skipped), skipped
    by_line = {(Path(p).name, n): r for p, n, r in skipped}
    assert "invalid JSON" in by_line[(mixed.name, 3)]
    assert "not a JSON object" in by_line[(mixed.name, 6)]
    assert "invalid JSON" in by_line[(big.name, 6)]
    assert out["invalid_utf8_lines"] == 2  # the latin-1 bytes and the lone surrogate
    assert out["unknown_line_types"] == {"hologram": 1, "telemetry-blob": 1}
    errors = {(Path(e["path"]).name, e["reason"]) for e in out["file_errors"]}
    assert any(name == "agent-a77777777777777777.meta.json" for name, _ in errors), errors
    assert out["files"] == 5 and out["files_read"] == 5

    # ... and nothing else is lost.
    expected = set().union(*(_good_uuids(2, t) for t in "abcdefghijk"))
    expected |= {"utf8-1", "holo-1", "surr-1", "nul-1", "big-1"}
    got = _uuids(db_path)
    assert expected <= got, sorted(expected - got)
    assert "broken" not in got

    text = dict(sql(db_path, "SELECT uuid, text FROM records WHERE uuid IN ('utf8-1', 'surr-1', 'nul-1')"))
    assert text["utf8-1"] == "caf\ufffd \ufffd\ufffd latin-1 bytes kiwiword"
    assert text["surr-1"] == "half an emoji \ufffd then dingoword"
    assert "\x00" not in text["nul-1"] and text["nul-1"].endswith("then wallabyword")
    # The 50 MB line is kept, cut at the cap and marked.
    truncated, text_len, stored = sql(
        db_path, "SELECT truncated, text_len, text FROM records WHERE uuid = 'big-1'")[0]
    assert truncated == 1 and text_len == len("numbat ") + BIG + len(" tailword")
    assert 64 * 1024 <= len(stored) < 64 * 1024 + 200 and "[deja: truncated" in stored[-120:]
    # The non-UTF-8 names are stored printable, the file itself read like any other.
    shown = [r[0] for r in sql(db_path, "SELECT display_path FROM sources WHERE display_path LIKE '%name-%'")]
    assert len(shown) == 1 and "-home-caf\ufffd/\ufffd\ufffdname-" in shown[0]

    # Every one of those words is in the full-text index, as the record's own text (FTS5's
    # `text` column; on PostgreSQL the tsvector's weight A, its context being weight B) ...
    match = ("SELECT uuid FROM records WHERE ts_filter(search_tsv, '{a}') @@ "
             "to_tsquery('deja', ?)" if is_postgres(db_path) else
             "SELECT r.uuid FROM records_fts JOIN records r ON r.id = records_fts.rowid "
             "WHERE records_fts MATCH 'text : ' || ?")
    for word, uuid in [("kiwiword", "utf8-1"), ("emuword", "holo-1"), ("dingoword", "surr-1"),
                       ("wallabyword", "nul-1"), ("numbat", "big-1"), ("kword1x", f"k-0001-{SESSION[:8]}")]:
        assert sql(db_path, match, (word,)) == [(uuid,)], word
    # ... and `deja search` finds the word after the NUL.
    hits = deja_json("--db", str(db_path), "search", "wallabyword", "--json", "--mode", "keyword")["hits"]
    assert [h["uuid"] for h in hits] == ["nul-1"]

    again = deja_json("--db", str(db_path), "ingest", "--root", str(root), "--json", "--no-embed")
    assert again["new_records"] == 0 and again["skipped_lines"] == 0


# -- unreadable files and folders --------------------------------------------------------------


@pytest.fixture
def as_owner(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`deja ARGS...` in a child that file modes apply to (root drops its override)."""
    prefix = permission_bound(tmp_path)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return deja(home, *args, prefix=prefix, expect=None)

    return run


def test_unreadable_file_and_folder_are_reported_not_fatal(
        tmp_path: Path, db_target: Target, as_owner: Callable[..., Any],
        request: pytest.FixtureRequest) -> None:
    root = tmp_path / "projects"
    ok_dir = root / "-home-dev-ok"
    write(ok_dir / f"{SESSION}.jsonl", _good(4, "ok"))
    locked_file = write(ok_dir / "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b.jsonl", _good(2, "lf"))
    locked_dir = root / "-home-dev-locked"
    write(locked_dir / "8d7c6b5a-4f3e-4d2c-9b1a-0f9e8d7c6b5a.jsonl", _good(2, "ld"))
    locked_sub = ok_dir / SESSION / "subagents"
    write(locked_sub / "agent-a1111111111111111.jsonl", _good(2, "ls"))
    locked_file.chmod(0o000)
    locked_dir.chmod(0o000)
    locked_sub.chmod(0o000)
    db = db_target
    if is_postgres(db):  # the child may not enter the server's own folder to reach its socket
        db = socket_link(request.getfixturevalue("postgres_server"), str(db), tmp_path / "sock")

    try:
        proc = as_owner("--db", str(db), "ingest", "--root", str(root), "--json", "--no-embed")
    finally:  # readable again (pytest removes tmp_path later)
        locked_file.chmod(0o644)
        locked_dir.chmod(0o755)
        locked_sub.chmod(0o755)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    errors = {e["path"]: e["reason"] for e in out["file_errors"]}
    assert set(errors) == {str(locked_file), str(locked_dir), str(locked_sub)}, errors
    assert all("ermission denied" in r for r in errors.values()), errors
    assert out["skipped_lines"] == 0
    assert _uuids(db) == _good_uuids(4, "ok")  # everything readable, nothing else

    # Once readable, what was unreadable is picked up, and nothing is doubled.
    proc = as_owner("--db", str(db), "ingest", "--root", str(root), "--json", "--no-embed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["file_errors"] == []
    assert out["new_records"] == 6
    assert _uuids(db) == set().union(*(_good_uuids(n, t) for n, t in
                                       ((4, "ok"), (2, "lf"), (2, "ld"), (2, "ls"))))
    if not is_postgres(db):
        assert stat.S_IMODE(Path(db).stat().st_mode) == 0o600


def test_unreadable_database_folder_is_a_clear_error(tmp_path: Path,
                                                     as_owner: Callable[..., Any]) -> None:
    """No traceback: a one-line message and exit code 1 when the database cannot be created."""
    root = tmp_path / "projects"
    write(root / "-p" / f"{SESSION}.jsonl", _good(2, "x"))
    forbidden = tmp_path / "forbidden"
    forbidden.mkdir(mode=0o500)  # no one but root's override may create anything in it
    try:
        proc = as_owner("--db", str(forbidden / "sub" / "deja.db"), "ingest", "--root", str(root),
                        "--json", "--no-embed")
    finally:
        forbidden.chmod(0o700)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("deja: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_root_that_does_not_exist_is_not_fatal(tmp_path: Path, db_target: Target,
                                               deja_json: Callable[..., Any]) -> None:
    out = deja_json("--db", str(db_target), "ingest", "--root", str(tmp_path / "nope"), "--json",
                    "--no-embed")
    assert out["files"] == 0 and out["new_records"] == 0


def test_assistant_line_with_odd_shapes(tmp_path: Path, db_target: Target,
                                        deja_json: Callable[..., Any]) -> None:
    """Fields of unexpected types (FORMAT.md: treat every field as optional) do not stop a file."""
    root = tmp_path / "projects"
    write(root / "-p" / f"{SESSION}.jsonl", [
        *_good(2, "a"),
        line({"type": "assistant", "uuid": "odd-1", "sessionId": SESSION, "message": "not an object"}),
        line({"type": "assistant", "uuid": "odd-2", "sessionId": SESSION,
              "message": {"content": [None, 3, "str", {"type": "tool_use"},
                                      {"type": "text", "text": None}]}}),
        line({"type": "user", "uuid": "odd-3", "sessionId": SESSION, "message": {"content": {"a": 1}}}),
        line({"type": "user", "uuid": "odd-4", "sessionId": SESSION, "toolUseResult": ["x", 1],
              "message": {"content": [{"type": "tool_result", "content": [{"type": "image"}, 5, None]}]}}),
        line({"type": "system", "uuid": "odd-5", "sessionId": SESSION, "content": {"nested": ["x"]}}),
        line({"type": "summary", "summary": None, "leafUuid": 7}),
        line({"type": None, "uuid": "odd-7"}),
        line({"uuid": "odd-8", "timestamp": 12345, "cwd": ["x"], "sessionId": {"x": 1}}),
        assistant(SESSION, "odd-9", [{"type": "text", "text": "still here afterword"}]),
        *_good(2, "b"),
    ])
    out = deja_json("--db", str(db_target), "ingest", "--root", str(root), "--json", "--no-embed")
    assert out["skipped_lines"] == 0, out["skipped"]
    got = _uuids(db_target)
    assert _good_uuids(2, "a") | _good_uuids(2, "b") | {"odd-9"} <= got
