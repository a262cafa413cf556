"""Ingest speed, memory and re-run time, measured the way a user runs deja.

Not a test: it prints figures to hold against the issue's targets
  - keyword-only ingest (`--no-embed`) at >= 20 MB/s,
  - peak RSS of the ingesting process <= 300 MB, whatever the corpus size,
  - a re-run over an unchanged 1 GB history in < 1 s,
for (a) the shared corpus and (b) a generated corpus of `--target-mb` MB
(default 1024: the shared corpus copied with fresh uuids, see corpus.py).

Each ingest is `deja --db DB ingest --root DIR --json --no-embed` in a
subprocess, into a new database. Measured per corpus:
  - wall time of the process (start-up included: that is what a user waits)
    and the `elapsed_s` deja reports (the ingest pass alone);
  - MB/s and records/s over both, and MB per CPU-second (user + system
    time of the process): wall time swings with other load on the machine,
    CPU time much less;
  - peak RSS of that process: `os.wait4()` returns the rusage of exactly
    that child, so figures of one run never mix with another's;
  - re-runs over the unchanged corpus: wall time of each, and the median of
    `--reruns` (default 3).

Usage (from the repository root):
    python bench/ingest_speed.py                  # shared corpus + a 1 GB corpus
    python bench/ingest_speed.py --target-mb 200  # a quicker run
    python bench/ingest_speed.py --target-mb 0    # the shared corpus only
    python bench/ingest_speed.py --workdir /tmp/b --keep --json

It imports nothing of deja: deja runs as a subprocess (from the repository
root), as a user runs it. (Named ingest_speed.py, not ingest.py: run as a
script, bench/ is sys.path[0] and a bench/ingest.py would shadow deja's
`ingest` package for every bench.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import DEFAULT_SRC, make_corpus, source_bytes

REPO = Path(__file__).resolve().parent.parent

TARGET_MB_S = 20.0
TARGET_RSS_MB = 300.0
TARGET_RERUN_S = 1.0


@dataclass
class Run:
    """One `deja ingest` process."""

    wall_s: float
    cpu_s: float       # user + system time of the process (all its threads)
    peak_rss_mb: float
    summary: dict[str, Any]


@dataclass
class Figures:
    """What the bench reports for one corpus."""

    corpus: str
    files: int
    mb: float
    records: int
    wall_s: float
    ingest_s: float
    cpu_s: float
    mb_per_s_wall: float
    mb_per_s_ingest: float
    records_per_s_wall: float
    mb_per_cpu_s: float
    peak_rss_mb: float
    db_mb: float
    rerun_wall_s: list[float] = field(default_factory=list)
    rerun_median_s: float = 0.0
    rerun_cpu_s: list[float] = field(default_factory=list)
    rerun_peak_rss_mb: float = 0.0


def _deja_argv() -> list[str]:
    """The installed `deja` console script, else the same entry point through this Python."""
    script = Path(sys.executable).parent / "deja"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "import sys; from mcp_server.cli import main; sys.exit(main())"]


def run_ingest(db: Path, root: Path, workdir: Path) -> Run:
    """Run one ingest process to its end; wall time, peak RSS and its JSON summary."""
    env = dict(os.environ)
    env.pop("DEJA_DB", None)
    argv = [*_deja_argv(), "--db", str(db), "ingest", "--root", str(root), "--json", "--no-embed"]
    out_path, err_path = workdir / "stdout.txt", workdir / "stderr.txt"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        # Not subprocess.run: os.wait4 gives this child's own rusage (peak RSS).
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=str(REPO))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"deja ingest exited {proc.returncode}:\n"
                           f"{err_path.read_text(errors='replace')[-3000:]}")
    lines = [ln for ln in out_path.read_text().splitlines() if ln.strip()]
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    rss = usage.ru_maxrss / (1 << 20) if sys.platform == "darwin" else usage.ru_maxrss / 1024
    return Run(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime, peak_rss_mb=rss,
               summary=json.loads(lines[-1]))


def _db_mb(db: Path) -> float:
    return sum(os.path.getsize(str(db) + s) for s in ("", "-wal") if os.path.exists(str(db) + s)) / 1e6


def measure(name: str, root: Path, workdir: Path, reruns: int) -> Figures:
    """A first ingest into a new database, then `reruns` passes over the unchanged corpus."""
    db = workdir / f"{name}.db"
    for suffix in ("", "-wal", "-shm", ".ingest.lock", ".ingest.lock.sqlite"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    first = run_ingest(db, root, workdir)
    s = first.summary
    mb = s["bytes_read"] / 1e6
    ingest_s = max(s["elapsed_s"], 1e-9)
    figures = Figures(
        corpus=name, files=s["files"], mb=round(mb, 1), records=s["new_records"],
        wall_s=round(first.wall_s, 2), ingest_s=round(s["elapsed_s"], 2),
        cpu_s=round(first.cpu_s, 2), mb_per_cpu_s=round(mb / max(first.cpu_s, 1e-9), 1),
        mb_per_s_wall=round(mb / first.wall_s, 1), mb_per_s_ingest=round(mb / ingest_s, 1),
        records_per_s_wall=round(s["new_records"] / first.wall_s),
        peak_rss_mb=round(first.peak_rss_mb, 1), db_mb=round(_db_mb(db), 1),
    )
    for _ in range(reruns):
        again = run_ingest(db, root, workdir)
        if again.summary["new_records"] or again.summary["files_read"]:
            raise RuntimeError(f"re-run over an unchanged corpus read something: {again.summary}")
        figures.rerun_wall_s.append(round(again.wall_s, 3))
        figures.rerun_cpu_s.append(round(again.cpu_s, 3))
        figures.rerun_peak_rss_mb = max(figures.rerun_peak_rss_mb, round(again.peak_rss_mb, 1))
    if figures.rerun_wall_s:
        figures.rerun_median_s = round(statistics.median(figures.rerun_wall_s), 3)
    return figures


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def print_figures(f: Figures) -> None:
    print(f"\n== {f.corpus}: {f.files} files, {f.mb:.1f} MB, {f.records} records")
    print(f"  first ingest    {f.wall_s:7.2f} s wall ({f.ingest_s:.2f} s in the ingest pass)")
    print(f"  throughput      {f.mb_per_s_wall:7.1f} MB/s wall, {f.mb_per_s_ingest:.1f} MB/s pass"
          f"   target >= {TARGET_MB_S:.0f}: {_verdict(f.mb_per_s_wall >= TARGET_MB_S)}")
    print(f"  records/s       {f.records_per_s_wall:7d} (wall)")
    print(f"  CPU             {f.cpu_s:7.2f} s user+sys, {f.mb_per_cpu_s:.1f} MB per CPU-second"
          f" (steadier than wall time on a busy machine)")
    print(f"  peak RSS        {f.peak_rss_mb:7.1f} MB"
          f"   target <= {TARGET_RSS_MB:.0f}: {_verdict(f.peak_rss_mb <= TARGET_RSS_MB)}")
    print(f"  database        {f.db_mb:7.1f} MB")
    if f.rerun_wall_s:
        runs = ", ".join(f"{t:.3f}" for t in f.rerun_wall_s)
        print(f"  re-run          {f.rerun_median_s:7.3f} s median wall ({runs}), "
              f"CPU {statistics.median(f.rerun_cpu_s):.3f} s, peak RSS {f.rerun_peak_rss_mb:.1f} MB"
              f"   target < {TARGET_RERUN_S:.0f} s: {_verdict(f.rerun_median_s < TARGET_RERUN_S)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure deja's keyword-only ingest.")
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC,
                        help=f"the shared corpus (default: {DEFAULT_SRC})")
    parser.add_argument("--target-mb", type=float, default=1024,
                        help="size of the generated corpus in MB (default 1024; 0: none)")
    parser.add_argument("--reruns", type=int, default=3,
                        help="re-runs over the unchanged corpus (default 3; median reported)")
    parser.add_argument("--workdir", type=Path,
                        help="where corpora and databases go (default: a new temp folder)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the workdir (a generated corpus there is reused next time)")
    parser.add_argument("--skip-shared", action="store_true", help="only the generated corpus")
    parser.add_argument("--json", action="store_true", help="also print all figures as one JSON line")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="deja-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: list[Figures] = []
    try:
        if not args.skip_shared:
            results.append(measure("shared", args.src, workdir, args.reruns))
            print_figures(results[-1])
        if args.target_mb > 0:
            target = int(args.target_mb * 1_000_000)
            root = workdir / f"corpus-{args.target_mb:g}mb"
            marker = root / ".complete.json"
            if marker.exists():
                print(f"\nreusing the corpus in {root}")
            else:
                print(f"\nwriting a {args.target_mb:g} MB corpus ({source_bytes(args.src) / 1e6:.1f}"
                      f" MB per copy) into {root} ...", flush=True)
                stats = make_corpus(args.src, root, target_bytes=target)
                marker.write_text(json.dumps(stats.to_dict()))
                print(f"  {stats.copies} copies, {stats.jsonl_files} files, "
                      f"{stats.jsonl_bytes / 1e6:.0f} MB in {stats.elapsed_s:.1f} s")
            results.append(measure(f"generated {args.target_mb:g} MB", root, workdir, args.reruns))
            print_figures(results[-1])
        if args.json:
            print(json.dumps([asdict(f) for f in results]))
    finally:
        if args.keep:
            print(f"\nkept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
