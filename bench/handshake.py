"""How long deja's MCP server takes to answer, side by side with a trivial MCPServer.

The target (issue #4): from spawn to the answer of `tools/list`, deja may add
at most 0.3 s (aim: 0.1 s) to what a trivial `MCPServer` with one tool takes
on the same machine in the same run, with a database of a million records and
before the embedding model is loaded.

Each round spawns, in turn, the trivial server and deja (with the background
ingest on, as Claude Code registers it, and with `--no-ingest`), in an order
that rotates from round to round so that neither side always runs first after
an idle moment. One spawn, measured from the parent:
    Popen -> write `initialize` -> read its answer -> write `initialized` and
    `tools/list` -> read the `tools/list` answer
with plain pipes and JSON lines (the same client cost for both sides). The
process is then stopped (stdin closed, killed if it has not exited after
`--exit-grace` s; the time to exit is reported, not part of the figure).
Other load on the machine moves both sides alike; the medians and p90 of
each side and the difference of medians are printed.

The million-record database is generated with SQL, not ingested (a million
records is ~5 GB of transcripts): the schema comes from deja's own migrations,
then sources, sessions and records are bulk-inserted with varied text so that
FTS5 indexes real content. It is cached under the work folder (`--workdir`,
default $TMPDIR/deja-bench-handshake) and reused while the schema version
and record count match.

Usage (from the repository root):
    python bench/handshake.py                    # 1M records, 15 rounds
    python bench/handshake.py --records 100000 --rounds 5
    python bench/handshake.py --json

tests/test_server.py runs the same comparison (`make_db`, `variants`, `compare`) on 100k records.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

TARGET_S = 0.3
AIM_S = 0.1

TRIVIAL_SERVER = '''\
"""A trivial MCPServer with one tool: the baseline deja's start-up is held against."""
from mcp.server.mcpserver import MCPServer

server = MCPServer(name="trivial")


@server.tool()
def echo(text: str) -> str:
    """Return the text."""
    return text


server.run("stdio")
'''

_WORDS = """
the a to of and in is it that for on with as this be are at by not or from but have
error fix test build deploy server client database query index search memory session
record embed vector token model python rust typescript docker kubernetes nginx redis
postgres sqlite migration schema commit branch merge rebase release version config
timeout retry backoff lock thread async await cancel signal process pipe socket
request response header cookie auth login password user admin permission denied
file folder path read write open close append truncate rename delete exists missing
import module package install upgrade dependency wheel pip cargo npm yarn make cmake
function class method argument parameter return value exception traceback assert
compile link warning deprecated unused variable constant type hint generic protocol
emulator android gradle kotlin swift xcode simulator device adb logcat root shell
""".split()


# -- the synthetic database -------------------------------------------------------


def _vocabulary(rng: random.Random, n: int = 6000) -> list[str]:
    """Common words plus made-up identifiers, so FTS posting lists have realistic spread."""
    syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "qua", "sh", "tr", "el"]
    made_up: set[str] = set()
    while len(made_up) < n:
        word = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 4)))
        if rng.random() < 0.2:
            word += str(rng.randint(0, 999))
        if rng.random() < 0.1:
            word += "_" + rng.choice(_WORDS)
        made_up.add(word)
    return _WORDS * 20 + sorted(made_up)  # common words 20x as likely


def _text(rng: random.Random, vocab: list[str], kind: str) -> str:
    n = {"prompt": (5, 40), "assistant": (10, 120), "thinking": (20, 150),
         "tool_call": (4, 30), "tool_result": (10, 300)}[kind]
    words = rng.choices(vocab, k=rng.randint(*n))
    if kind == "tool_call":
        return "Bash " + json.dumps({"command": " ".join(words[:6]),
                                     "description": " ".join(words[6:])})
    return " ".join(words)


def make_db(path: Path, records: int, *, seed: int = 4) -> Path:
    """A deja database of `records` synthetic records at `path` (reused if already built).

    ~200 records a session, 50 projects. The file is built beside `path` and
    renamed into place, so an interrupted build is never reused.
    """
    # deja is imported here, not at the top: the timed servers are subprocesses
    # and the rest of this bench needs nothing of deja.
    from ingest.db import make_connector
    from ingest.indexing import FTS_CONTEXT_SQL
    from ingest.migrations import SCHEMA_VERSION, migrate

    path = Path(path)
    marker = f"{SCHEMA_VERSION}:{records}:{seed}"
    if path.exists():
        conn = make_connector(path)()
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'synthetic'").fetchone()
        finally:
            conn.close()
        if row and row[0] == marker:
            return path
    building = path.with_name(path.name + ".building")
    for suffix in ("", "-wal", "-shm"):
        Path(str(building) + suffix).unlink(missing_ok=True)
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    conn = make_connector(building)()
    try:
        migrate(conn)
        kinds = ["prompt", "assistant", "assistant", "thinking", "tool_call", "tool_call",
                 "tool_result", "tool_result", "tool_result", "assistant"]
        n_sessions = max(1, records // 200)
        conn.execute("BEGIN IMMEDIATE")
        session_rows = []
        source_rows = []
        for s in range(n_sessions):
            sid = f"{rng.getrandbits(32):08x}-{s:04x}-4000-8000-{rng.getrandbits(48):012x}"
            project = f"-home-dev-project{s % 50:02d}"
            cwd = f"/home/dev/project{s % 50:02d}"
            file = f"/nonexistent-deja-bench/projects/{project}/{sid}.jsonl"
            source_rows.append((s + 1, os.fsencode(file), file, project, "session", sid, sid))
            session_rows.append((sid, project, cwd, "main", " ".join(rng.choices(_WORDS, k=5))))
        conn.executemany(
            "INSERT INTO sources (id, path, display_path, project_dir, layout, session_hint, "
            "session_id) VALUES (?, ?, ?, ?, ?, ?, ?)", source_rows)
        conn.executemany(
            "INSERT INTO sessions (session_id, project_dir, cwd, git_branch, title) "
            "VALUES (?, ?, ?, ?, ?)", session_rows)

        def rows() -> Iterator[tuple[Any, ...]]:
            t0 = 1_700_000_000.0
            for i in range(records):
                s = i % n_sessions
                kind = kinds[(i // n_sessions) % len(kinds)]
                ts = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t0 + i * 3))
                text = _text(rng, vocab, kind)
                yield (s + 1, f"u{i:08d}", 0, f"u{i:08d}", session_rows[s][0], kind,
                       "user" if kind in ("prompt", "tool_result") else "assistant",
                       "Bash" if kind.startswith("tool") else None, text, len(text), ts,
                       session_rows[s][2], i * 500, 1)

        conn.executemany(
            "INSERT INTO records (source_id, line_key, part, uuid, session_id, kind, role, "
            "tool_name, text, text_len, ts, cwd, byte_offset, embed_state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows())
        # The whole table indexed at once, as ingest indexes each batch.
        conn.execute("INSERT INTO records_fts (rowid, text, context) SELECT r.id, "
                     f"deja_fts_text(r.text), {FTS_CONTEXT_SQL} FROM records r")
        conn.execute(
            "UPDATE sessions SET first_ts = (SELECT MIN(ts) FROM records r WHERE r.session_id = "
            "sessions.session_id), last_ts = (SELECT MAX(ts) FROM records r WHERE r.session_id = "
            "sessions.session_id)")
        conn.execute("INSERT INTO meta (key, value) VALUES ('last_ingest', ?), ('synthetic', ?)",
                     (time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), marker))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    os.replace(building, path)
    return path


# -- one spawn ------------------------------------------------------------------------


def _send(proc: subprocess.Popen[bytes], message: Mapping[str, Any]) -> None:
    assert proc.stdin is not None
    proc.stdin.write((json.dumps(message) + "\n").encode())
    proc.stdin.flush()


def _read_answer(proc: subprocess.Popen[bytes], request_id: int) -> dict[str, Any]:
    """The JSON-RPC answer to `request_id` (other lines, e.g. notifications, are skipped)."""
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the server closed stdout before answering request {request_id}")
        message = json.loads(line)
        if message.get("id") == request_id:
            return message


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "deja-bench", "version": "0"}}}


def spawn_to_tools_list(argv: Sequence[str], env: Mapping[str, str], *, cwd: Path = REPO,
                        exit_grace: float = 3.0) -> dict[str, Any]:
    """Spawn an MCP stdio server, handshake, list its tools; then stop it.

    Returns {"seconds": spawn -> tools/list answer, "initialize_s": spawn ->
    initialize answer, "tools": [names], "exit_s": stdin close -> exit (None
    if it was killed after `exit_grace` s), "returncode"}. Its stderr goes to
    a temporary file, returned as "stderr".
    """
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err, env=dict(env), cwd=str(cwd))
        try:
            _send(proc, INITIALIZE)
            init = _read_answer(proc, 1)
            initialize_s = time.perf_counter() - started
            _send(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
            _send(proc, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
            listed = _read_answer(proc, 2)
            seconds = time.perf_counter() - started
            assert "result" in init, init
            tools = [t["name"] for t in listed["result"]["tools"]]
            closed = time.perf_counter()
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                proc.wait(exit_grace)
                exit_s: float | None = time.perf_counter() - closed
            except subprocess.TimeoutExpired:
                exit_s = None
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return {"seconds": seconds, "initialize_s": initialize_s, "tools": tools, "exit_s": exit_s,
            "returncode": proc.returncode, "stderr": stderr}


# -- the comparison -------------------------------------------------------------------


def p90(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def variants(workdir: Path, db: Path, root: Path, home: Path) -> dict[str, list[str]]:
    """argv of each side: the trivial server, deja with ingest on and off."""
    trivial = workdir / "trivial_server.py"
    trivial.write_text(TRIVIAL_SERVER)
    deja = [sys.executable, "-m", "mcp_server", "--db", str(db), "--root", str(root),
            "--log-file", str(home / "deja-server.log")]
    return {"trivial": [sys.executable, str(trivial)], "deja": deja,
            "deja --no-ingest": deja + ["--no-ingest"]}


def server_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DEJA_DB", None)
    env["HOME"] = str(home)
    env["CLAUDE_PROJECT_DIR"] = "/home/dev/project07"
    # The model loads after the handshake; a warm ONNX export keeps that
    # load short and the same from run to run (the tests share this one).
    env.setdefault("DEJA_MODEL_CACHE", str(REPO / ".pytest_cache" / "deja-models"))
    env.update(extra or {})
    return env


def compare(argvs: Mapping[str, Sequence[str]], env: Mapping[str, str], rounds: int, *,
            exit_grace: float = 3.0, progress: bool = False) -> dict[str, Any]:
    """Alternate the sides for `rounds` rounds; per side the samples, median and p90."""
    names = list(argvs)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            run = spawn_to_tools_list(argvs[name], env, exit_grace=exit_grace)
            samples[name].append(run)
            if progress:
                sys.stderr.write(f"round {r + 1}/{rounds} {name}: {run['seconds']:.3f} s\n")
    out: dict[str, Any] = {"rounds": rounds, "sides": {}}
    for name, runs in samples.items():
        seconds = [run["seconds"] for run in runs]
        exits = [run["exit_s"] for run in runs]
        out["sides"][name] = {
            "median_s": round(statistics.median(seconds), 4),
            "p90_s": round(p90(seconds), 4),
            "min_s": round(min(seconds), 4),
            "initialize_median_s": round(statistics.median(run["initialize_s"] for run in runs), 4),
            "samples_s": [round(s, 4) for s in seconds],
            "tools": runs[-1]["tools"],
            "exit_median_s": round(statistics.median(e for e in exits if e is not None), 3)
            if any(e is not None for e in exits) else None,
            "killed_after_grace": sum(e is None for e in exits),
        }
    base = out["sides"][names[0]]
    for name in names[1:]:
        side = out["sides"][name]
        side["added_median_s"] = round(side["median_s"] - base["median_s"], 4)
        side["added_p90_s"] = round(side["p90_s"] - base["p90_s"], 4)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "deja-bench-handshake")
    parser.add_argument("--exit-grace", type=float, default=3.0,
                        help="seconds to wait for exit after closing stdin before killing")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    workdir = args.workdir
    home = workdir / "home"
    root = workdir / "projects"  # empty: the history is all in the database
    for folder in (home, root):
        folder.mkdir(parents=True, exist_ok=True)
    db = workdir / f"deja-{args.records}.db"
    started = time.perf_counter()
    make_db(db, args.records)
    built_s = time.perf_counter() - started
    if not args.json:
        print(f"database: {db} ({db.stat().st_size / 1e6:.0f} MB, {args.records} records, "
              f"ready in {built_s:.1f} s)")
    result = compare(variants(workdir, db, root, home), server_env(home), args.rounds,
                     exit_grace=args.exit_grace, progress=not args.json)
    result.update({"records": args.records, "database": str(db), "cpus": os.cpu_count(),
                   "load_avg": os.getloadavg(), "target_added_s": TARGET_S, "aim_added_s": AIM_S})
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'side':18} {'median':>8} {'p90':>8} {'min':>8} {'added':>8} {'added p90':>10}  "
          f"exit after stdin close")
    for name, side in result["sides"].items():
        added = f"{side['added_median_s']:+8.3f}" if "added_median_s" in side else " " * 8
        added90 = f"{side['added_p90_s']:+10.3f}" if "added_p90_s" in side else " " * 10
        exit_text = (f"median {side['exit_median_s']} s" if side["exit_median_s"] is not None
                     else "-") + (f", {side['killed_after_grace']} killed after "
                                  f"{args.exit_grace} s" if side["killed_after_grace"] else "")
        print(f"{name:18} {side['median_s']:8.3f} {side['p90_s']:8.3f} {side['min_s']:8.3f} "
              f"{added} {added90}  {exit_text}")
    print(f"target: deja adds <= {TARGET_S} s (aim {AIM_S} s) to the trivial server's median; "
          f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    # Run as a script: import deja from this repository, whatever is installed.
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
