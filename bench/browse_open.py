"""How long `deja browse` takes to open: spawn to the first page of sessions on screen.

The real process in a tmux pane of 160x45 (what a person sees over SSH too):
each run starts `deja --db DB browse`, polls `tmux capture-pane` every 10 ms
until the status line ("N sessions") and the first session row are drawn,
then presses q and waits for the exit. The time is spawn to drawn; a run's
exit code must be 0. The first run warms the page cache and is not counted.

    python bench/browse_open.py --db /tmp/big.db --runs 6
    python bench/browse_open.py --db /tmp/big.db --json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DRAWN = re.compile(r"^\s*\d+\+? sessions", re.MULTILINE)


def capture(name: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-pt", name], capture_output=True,
                          text=True).stdout


def one_run(db: Path, tmp: Path, i: int) -> float:
    name, done = f"deja-bench-browse-{i}", tmp / f"exit-{i}"
    deja = str(Path(sys.executable).with_name("deja"))
    start = time.perf_counter()
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "160", "-y", "45",
                    f"'{deja}' --db '{db}' browse; echo $? > '{done}'"], check=True)
    try:
        while not DRAWN.search(capture(name)):
            if time.perf_counter() - start > 30:
                raise SystemExit(f"not drawn after 30 s:\n{capture(name)}")
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
        subprocess.run(["tmux", "send-keys", "-t", name, "q"], check=True)
        while not done.exists():
            if time.perf_counter() - start > 60:
                raise SystemExit("no exit after q")
            time.sleep(0.02)
        code = done.read_text().strip()
        if code != "0":
            raise SystemExit(f"deja browse exited {code}")
        return elapsed
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("tmux") is None:
        raise SystemExit("tmux is needed (apt-get install tmux)")
    conn = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
    records, sessions = (conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                         for t in ("records", "sessions"))
    conn.close()
    with tempfile.TemporaryDirectory() as tmp:
        times = [one_run(args.db, Path(tmp), i) for i in range(args.runs + 1)][1:]
    out = {"records": records, "sessions": sessions, "db_bytes": args.db.stat().st_size,
           "runs": args.runs, "p50_ms": round(statistics.median(times) * 1000),
           "max_ms": round(max(times) * 1000), "min_ms": round(min(times) * 1000)}
    print(json.dumps(out) if args.json else
          f"{records:,} records, {sessions:,} sessions: open p50 {out['p50_ms']} ms, "
          f"min {out['min_ms']} ms, max {out['max_ms']} ms ({args.runs} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
