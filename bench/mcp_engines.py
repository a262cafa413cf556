"""The MCP server on SQLite and on PostgreSQL, side by side: handshake and search_memory latency.

Why: issue 11 wants the tools to work on PostgreSQL as on SQLite; this
measures what the agent feels. The shared corpus (both sets) is ingested and
embedded by the CLI into a fresh SQLite file and a fresh PostgreSQL database
(a pgserver in a temporary folder), once. Then, for each engine, `deja serve
--no-ingest` is spawned `--rounds` times: spawn -> initialize -> tools/list
answered (the handshake, before the model is loaded), and on one server,
after memory_status says the model is loaded, search_memory for each of
bench/questions.json's v1+dev questions (project "all", limit 10): p50/p95.

    python bench/mcp_engines.py [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from fixtures.cli import deja_argv, deja_env  # noqa: E402
from fixtures.postgres import start_server  # noqa: E402
from mcp import ClientSession  # noqa: E402
from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: E402

SHARED = REPO.parent / "shared" / "transcripts"


def _build(base: Path) -> dict[str, str]:
    server = start_server(base / "pg")
    targets = {"sqlite": str(base / "deja.db"), "postgresql": server.uri(server.new_database())}
    for name, target in targets.items():
        started = time.perf_counter()
        subprocess.run(deja_argv("--db", target, "ingest", "--root", str(SHARED), "--json"),
                       env=deja_env(base, embed=True), check=True, capture_output=True)
        print(f"{name}: ingested and embedded in {time.perf_counter() - started:.1f} s",
              file=sys.stderr)
    return targets


def _handshake(target: str, home: Path) -> float:
    argv = deja_argv("--db", target, "serve", "--no-ingest", "--log-file",
                     str(home / "hs.log"))
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=deja_env(home))
    assert proc.stdin is not None and proc.stdout is not None

    def send(obj: dict[str, Any]) -> None:
        assert proc.stdin is not None
        proc.stdin.write((json.dumps(obj) + "\n").encode())
        proc.stdin.flush()

    send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"}}})
    proc.stdout.readline()
    send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    proc.stdout.readline()
    elapsed = time.perf_counter() - started
    proc.stdin.close()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
    return elapsed


async def _searches(target: str, home: Path, questions: list[str]) -> list[float]:
    argv = deja_argv("--db", target, "serve", "--no-ingest", "--log-file",
                     str(home / "s.log"))
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=deja_env(home))
    times = []
    async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
        await s.initialize()
        while not (await s.call_tool("memory_status", {})).structured_content["model_loaded"]:
            await anyio.sleep(0.2)
        for q in questions:
            started = time.perf_counter()
            result = await s.call_tool("search_memory", {"query": q, "project": "all"})
            times.append(time.perf_counter() - started)
            assert not result.is_error, result.content
    return times


def _ms(values: list[float], q: float) -> float:
    return round(1000 * statistics.quantiles(values, n=100)[int(q) - 1], 1) if len(values) > 2 \
        else round(1000 * max(values), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    data = json.loads((REPO / "bench" / "questions.json").read_text())
    questions = [q["question"] for q in data["questions"] if q.get("split") in ("v1", "dev")]
    base = Path(tempfile.mkdtemp(prefix="deja-mcp-engines-"))
    targets = _build(base)
    out: dict[str, Any] = {}
    for name, target in targets.items():
        shakes = [_handshake(target, base) for _ in range(args.rounds)]
        searches = anyio.run(_searches, target, base, questions)
        out[name] = {"handshake_median_ms": round(1000 * statistics.median(shakes), 1),
                     "search_p50_ms": _ms(searches, 50), "search_p95_ms": _ms(searches, 95),
                     "questions": len(searches)}
    if args.json:
        print(json.dumps(out))
        return
    for name, row in out.items():
        print(f"{name:>10}: handshake median {row['handshake_median_ms']} ms, search_memory "
              f"p50 {row['search_p50_ms']} ms, p95 {row['search_p95_ms']} ms "
              f"({row['questions']} questions)")


if __name__ == "__main__":
    main()
