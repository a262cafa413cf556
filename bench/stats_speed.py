"""How long `deja stats --json` takes, spawn to exit, on the shared corpus and on a big one.

Targets (issue 10): under 1 s on the whole shared corpus, under 10 s on a
million records. Each run starts the venv's `deja` as a person would
(`deja --db DB stats --json [filters]`) and waits for the exit; the first run
warms the page cache and is not counted.

1. The whole shared corpus (`transcripts/projects` and `more/projects`),
   ingested with `--no-embed` into a scratch database.
2. With `--records N`, a database of about N records made of copies of the
   shared corpus (bench/corpus.py: fresh uuids per copy), ingested the same
   way; or `--big-db PATH` to time an existing database instead of building one.

For each database: no filter, `--project` (the largest project), `--since`
(the newest quarter of the time range), and `--html` to a scratch file.

    python bench/stats_speed.py                       # the shared corpus, 5 runs each
    python bench/stats_speed.py --records 1000000     # and a million-record database
    python bench/stats_speed.py --big-db /tmp/big.db  # an existing big database
    python bench/stats_speed.py --json                # every figure as one JSON line
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from corpus import DEFAULT_SRC, make_corpus  # noqa: E402
from deja_process import deja_command, env, pct  # noqa: E402

SHARED = DEFAULT_SRC.parent  # .../shared/transcripts
RECORDS_PER_COPY = 10_628  # both shared roots, as ingested on 2026-12-01
TARGETS = {"shared": 1.0, "million": 10.0}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)




def run(db: Path, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run([*deja_command(), "--db", str(db), *args], capture_output=True,
                          text=True, env=env(), timeout=600)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"deja {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def ingest(db: Path, roots: list[Path]) -> float:
    argv = [*deja_command(), "--db", str(db), "ingest", "--json", "--no-embed", "--quiet"]
    for root in roots:
        argv += ["--root", str(root)]
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=env())
    return time.perf_counter() - started



def time_database(db: Path, runs: int, scratch: Path) -> dict[str, Any]:
    """Timings of the stats variants on `db`, and what it holds."""
    _, out = run(db, "stats", "--json")  # warms the cache; also tells the filters to use
    stats = json.loads(out)
    project = next(iter(stats["projects"]), None)
    days = [r["period"] for r in stats["activity"]["day"]]
    since = days[int(len(days) * 0.75)] if days else "2000-01-01"
    variants: dict[str, list[str]] = {
        "all": ["stats", "--json"],
        "project": ["stats", "--json", f"--project={project}"],
        "since": ["stats", "--json", "--since", since],
        "html": ["stats", "--json", "--html", str(scratch / "report.html")],
    }
    result: dict[str, Any] = {"records": stats["records"], "sessions": stats["sessions"],
                              "database_mb": round(stats["database_bytes"] / 1e6),
                              "tool_calls": stats["tool_calls"], "responses": stats["responses"]}
    for name, argv in variants.items():
        times = [run(db, *argv)[0] for _ in range(runs)]
        result[name] = {"median_s": round(statistics.median(times), 3),
                        "p95_s": round(pct(times, 95), 3), "max_s": round(max(times), 3)}
        log(f"  {name:8} median {result[name]['median_s']:.3f} s  "
            f"max {result[name]['max_s']:.3f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--records", type=int, help="also a database of about this many records")
    ap.add_argument("--big-db", type=Path, help="time this existing database as the big one")
    ap.add_argument("--workdir", type=Path, help="where corpora and databases go (kept)")
    ap.add_argument("--json", action="store_true", help="print every figure as one JSON line")
    args = ap.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="deja-stats-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"targets_s": TARGETS}
    try:
        shared_db = work / "shared.db"
        if not shared_db.exists():
            secs = ingest(shared_db, [SHARED / "projects", SHARED / "more" / "projects"])
            log(f"shared corpus ingested in {secs:.1f} s")
        log("shared corpus:")
        report["shared"] = time_database(shared_db, args.runs, work)
        big = args.big_db
        if big is None and args.records:
            big = work / "big.db"
            if not big.exists():
                copies = math.ceil(args.records / RECORDS_PER_COPY)
                started = time.monotonic()
                make_corpus(SHARED / "projects", work / "big" / "a", copies=copies)
                make_corpus(SHARED / "more" / "projects", work / "big" / "b", copies=copies)
                report["corpus_written_s"] = round(time.monotonic() - started)
                report["ingest_s"] = round(ingest(big, [work / "big" / "a", work / "big" / "b"]))
                log(f"{copies} copies written in {report['corpus_written_s']} s, "
                    f"ingested in {report['ingest_s']} s")
        if big is not None:
            log(f"big database {big}:")
            report["big"] = time_database(big, args.runs, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
