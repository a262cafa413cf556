"""Hook latency, from process spawn to exit, as Claude Code runs `deja hook EVENT`.

Claude Code starts the hook command (`<abs path>/deja hook session-start`, ...) as a
process, writes the hook's JSON on its stdin, closes it and waits for the exit. This
bench does exactly that with the venv's `deja` script, `--runs` times per event, on:

1. a database of the whole shared corpus (`transcripts/projects` and `more/projects`),
   keyword index only (hooks never embed);
2. with `--records N` (e.g. 1000000), a database of about N records made from copies of
   the shared corpus (bench/corpus.py), to see that the cost does not grow with the
   database.

Events: session-start (source startup, a new session in the project of the compacted
session c0dddd8d: the orientation), session-end and pre-compact (a session with 600+
records that gained two new lines since the last run: ingest them, build and store the
checkpoint), stop (two new lines, no checkpoint). It also prints the import time of
`deja hook` (`python -X importtime`) and checks that no heavy module is imported.

    python bench/hooks.py                      # the shared corpus, 40 runs per event
    python bench/hooks.py --records 1000000    # and a million-record database
    python bench/hooks.py --json               # also every figure as one JSON line
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from corpus import DEFAULT_SRC, make_corpus  # noqa: E402
from deja_process import deja_command, env, pct  # noqa: E402

SHARED = DEFAULT_SRC.parent  # .../shared/transcripts
C0 = "c0dddd8d-6c0f-4a12-8927-28271848cfc7"
C0_PROJECT = "-Users-dumitruvulpe-uw-telecom-mobile"
C0_CWD = "/Users/dumitruvulpe/uw/telecom-mobile"
BENCH_PROJECT = "-bench-hooks-project"
HEAVY = ("mcp", "torch", "onnxruntime", "numpy", "sentence_transformers", "transformers",
         "pydantic", "tokenizers")
TARGETS = {"p50": 150.0, "p95": 300.0, "p95_million": 500.0}


def log(text: str) -> None:
    print(text, flush=True)





def ingest(db: Path, roots: list[Path]) -> dict[str, Any]:
    argv = [*deja_command(), "--db", str(db), "ingest", "--json", "--no-embed", "--quiet"]
    for root in roots:
        argv += ["--root", str(root)]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env(), check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = round(time.monotonic() - started, 1)
    return out


class Session:
    """A copy of c0dddd8d in a scratch root, growing two lines per run."""

    def __init__(self, root: Path) -> None:
        self.path = root / BENCH_PROJECT / f"{C0}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHARED / "projects" / C0_PROJECT / f"{C0}.jsonl", self.path)
        self.n = 0

    def grow(self) -> None:
        self.n += 1
        ts = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        common = {"sessionId": C0, "cwd": C0_CWD, "gitBranch": "bench", "version": "2.1.100",
                  "isSidechain": False, "userType": "external", "timestamp": ts}
        lines = [
            {**common, "type": "user", "uuid": str(uuid.uuid4()), "parentUuid": None,
             "message": {"role": "user", "content": f"bench prompt {self.n}: check the jobs"}},
            {**common, "type": "assistant", "uuid": str(uuid.uuid4()), "parentUuid": None,
             "message": {"id": f"msg_bench_{self.n}", "role": "assistant", "model": "bench",
                         "content": [{"type": "text", "text": f"bench answer {self.n}"}]}},
        ]
        with self.path.open("a") as f:
            f.write("".join(json.dumps(line) + "\n" for line in lines))


def run_hook(db: Path, event: str, payload: dict[str, Any]) -> tuple[float, subprocess.CompletedProcess[str]]:
    argv = [*deja_command(), "--db", str(db), "hook", event]
    started = time.perf_counter()
    proc = subprocess.run(argv, input=json.dumps(payload), capture_output=True, text=True,
                          env=env(), timeout=60)
    return (time.perf_counter() - started) * 1000, proc


def latencies(db: Path, session: Session, runs: int) -> dict[str, dict[str, float]]:
    base = {"transcript_path": str(session.path), "cwd": C0_CWD, "permission_mode": "default"}
    events: dict[str, dict[str, Any]] = {
        "session-start": {"session_id": str(uuid.uuid4()), "hook_event_name": "SessionStart",
                          "source": "startup", "transcript_path": None, "cwd": C0_CWD},
        "session-end": {**base, "session_id": C0, "hook_event_name": "SessionEnd",
                        "reason": "prompt_input_exit"},
        "pre-compact": {**base, "session_id": C0, "hook_event_name": "PreCompact",
                        "trigger": "auto", "custom_instructions": ""},
        "stop": {**base, "session_id": C0, "hook_event_name": "Stop", "stop_hook_active": False},
    }
    out: dict[str, dict[str, float]] = {}
    for event, payload in events.items():
        times: list[float] = []
        for i in range(runs + 2):
            if event != "session-start":
                session.grow()
            ms, proc = run_hook(db, event, payload)
            if proc.returncode != 0 or proc.stderr:
                log(f"  {event}: exit {proc.returncode}: {proc.stderr.strip()[:300]}")
            if event == "session-start" and i == 0:
                text = json.loads(proc.stdout)["hookSpecificOutput"]["additionalContext"]
                log(f"  session-start context: {len(text)} characters")
            if i >= 2:  # the first two warm the page cache
                times.append(ms)
        out[event] = {"p50": round(statistics.median(times), 1), "p95": round(pct(times, 95), 1),
                      "max": round(max(times), 1), "runs": len(times)}
        log(f"  {event:14s} p50 {out[event]['p50']:6.1f} ms  p95 {out[event]['p95']:6.1f} ms  "
            f"max {out[event]['max']:6.1f} ms")
    return out


def import_time(db: Path, session: Session) -> dict[str, Any]:
    """`python -X importtime` of `deja hook session-end`: the total and the largest imports."""
    code = "import sys; from mcp_server.cli import main; sys.exit(main())"
    payload = {"session_id": C0, "transcript_path": str(session.path), "cwd": C0_CWD}
    startup = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"],
                             capture_output=True, text=True, env=env())
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code, "--db", str(db), "hook",
                           "session-end"], input=json.dumps(payload), capture_output=True,
                          text=True, env=env())

    def parse(text: str) -> tuple[dict[str, int], int]:
        """Cumulative microseconds per module, and the sum of the self times."""
        cumulative: dict[str, int] = {}
        total = 0
        for line in text.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            self_us, cum_us, name = line[len("import time:"):].split("|")
            cumulative[name.strip()] = int(cum_us)
            total += int(self_us)
        return cumulative, total

    cumulative, total = parse(proc.stderr)
    _, base_total = parse(startup.stderr)
    heavy = sorted(m for m in cumulative if m.split(".")[0] in HEAVY)
    deja_mods = {m: us for m, us in cumulative.items() if m in (
        "mcp_server.cli", "mcp_server.cli.hook", "mcp_server.hook", "mcp_server.orientation",
        "ingest.checkpoints", "ingest.store", "ingest.runner", "aiosqlite", "anyio", "asyncio")}
    return {"total_ms": round(total / 1000, 1), "interpreter_ms": round(base_total / 1000, 1),
            "deja_ms": round((total - base_total) / 1000, 1),
            "largest_ms": {m: round(us / 1000, 1) for m, us in
                           sorted(deja_mods.items(), key=lambda kv: -kv[1])},
            "heavy_modules": heavy}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="runs per event (default 40)")
    parser.add_argument("--records", type=int, default=0,
                        help="also a database of about this many records (e.g. 1000000)")
    parser.add_argument("--workdir", type=Path, help="where corpora and databases go")
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    parser.add_argument("--json", action="store_true", help="print every figure as one JSON line")
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="deja-hooks-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"command": deja_command(), "load": os.getloadavg()}
    try:
        log(f"deja hook latency, spawn to exit ({' '.join(deja_command())}); load "
            f"{os.getloadavg()[0]:.1f}")
        scratch = work / "scratch"
        session = Session(scratch)
        db = work / "shared.db"
        roots = [SHARED / "projects", SHARED / "more" / "projects", scratch]
        summary = ingest(db, [r for r in roots if r.is_dir()])
        log(f"shared corpus: {summary['new_records']} records, {summary['files']} files, "
            f"{db.stat().st_size / 1e6:.0f} MB, ingested in {summary['wall_s']} s")
        report["import"] = imp = import_time(db, session)
        log(f"import time (python -X importtime, deja hook session-end): {imp['total_ms']} ms "
            f"({imp['interpreter_ms']} ms of them the interpreter's own start); heavy modules: "
            f"{', '.join(imp['heavy_modules']) or 'none'}")
        log("  largest: " + ", ".join(f"{m} {ms} ms" for m, ms in imp["largest_ms"].items()))
        report["shared"] = {"records": summary["new_records"], **latencies(db, session, args.runs)}
        if args.records:
            big = work / "big"
            per_copy = max(summary["new_records"], 1)
            copies = math.ceil(args.records / per_copy)
            if not big.exists():
                started = time.monotonic()
                make_corpus(SHARED / "projects", big / "a", copies=copies)
                if (SHARED / "more" / "projects").is_dir():
                    make_corpus(SHARED / "more" / "projects", big / "b", copies=copies)
                log(f"corpus of {copies} copies written in {time.monotonic() - started:.0f} s")
            big_db = work / "big.db"
            big_session = Session(work / "big-scratch")
            started = time.monotonic()
            big_summary = ingest(big_db, [p for p in (big / "a", big / "b", work / "big-scratch")
                                          if p.is_dir()])
            records = big_summary["new_records"]
            log(f"big database: {records} records, {big_db.stat().st_size / 1e9:.1f} GB, "
                f"ingested in {time.monotonic() - started:.0f} s")
            report["big"] = {"records": records, **latencies(big_db, big_session, args.runs)}
        report["targets_ms"] = TARGETS
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
