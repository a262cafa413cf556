"""Make a large transcript corpus from the shared one: N copies, each with fresh uuids.

Why fresh uuids: deja keys records by (source file, line uuid, part) and
sessions by their id. Plain copies would share session ids, subagent ids and
line uuids with the original, so sessions would merge and the corpus would not
behave like N independent histories. Every UUID-shaped string (8-4-4-4-12 hex)
in file contents and in file and folder names is therefore replaced, within a
copy, by the same new uuid everywhere (a session's file name, the `sessionId`
inside it, its subagent folder, the `parentUuid` links...). The new uuid is
`uuid5(namespace, "<copy>:<old uuid>")`: deterministic, so a corpus can be
rebuilt identically, and different in every copy.

Project folders get a per-copy suffix (`-c000`, `-c001`, ...): legacy
`agent-<8 hex>.jsonl` names hold no uuid, so without it two copies would write
the same path. Everything under a project folder is copied (the `.jsonl`
transcripts, `agent-*.meta.json`, spilled `tool-results/*.txt`), streamed line
by line in binary so memory stays constant whatever the corpus size and bytes
that are not UTF-8 pass through untouched. UUIDs have a fixed length, so each
copy has exactly the byte size of the source.

CLI: `python bench/corpus.py DST --copies N` or `--target-mb M`
(the source defaults to the shared corpus, `--src` overrides it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["DEFAULT_SRC", "CorpusStats", "copy_suffix", "make_corpus", "source_bytes"]

DEFAULT_SRC = Path(os.environ.get(
    "DEJA_SHARED", Path(__file__).resolve().parent.parent.parent / "shared"
)) / "transcripts" / "projects"

# Fixed namespace: the same (copy, old uuid) always maps to the same new uuid.
_NAMESPACE = uuid.UUID("5b1e8f0e-2c4d-4b7a-9f35-6d2a0c1e7b44")

# Hex look-arounds: a UUID-shaped run inside a longer hex string is not a uuid.
_UUID_BYTES = re.compile(
    rb"(?<![0-9A-Fa-f])[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
    rb"(?![0-9A-Fa-f])"
)
_UUID_STR = re.compile(_UUID_BYTES.pattern.decode())

_CHUNK = 1 << 20  # read very long lines in pieces of this size


@dataclass
class CorpusStats:
    """What make_corpus wrote; `bytes` counts every file, `jsonl_bytes` what deja reads."""

    copies: int
    files: int
    jsonl_files: int
    bytes: int
    jsonl_bytes: int
    uuids_replaced: int
    distinct_uuids: int
    elapsed_s: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def copy_suffix(copy: int) -> str:
    """The suffix added to every project folder of copy number `copy`."""
    return f"-c{copy:03d}"


class _UuidMap:
    """Old uuid -> new uuid for one copy; the same old uuid always gets the same new one.

    The cache holds one entry per distinct uuid of the source corpus (a few
    thousand), not per copy written, so memory does not grow with the corpus.
    """

    def __init__(self, copy: int) -> None:
        self.copy = copy
        self._cache: dict[str, str] = {}
        self.replaced = 0

    def new(self, old: str) -> str:
        key = old.lower()
        new = self._cache.get(key)
        if new is None:
            new = str(uuid.uuid5(_NAMESPACE, f"{self.copy}:{key}"))
            self._cache[key] = new
        self.replaced += 1
        # Keep the case of the original (some tools print uppercase uuids).
        return new.upper() if old.isupper() else new

    def sub_bytes(self, data: bytes) -> bytes:
        return _UUID_BYTES.sub(lambda m: self.new(m.group().decode("ascii")).encode("ascii"), data)

    def sub_name(self, name: str) -> str:
        return _UUID_STR.sub(lambda m: self.new(m.group()), name)

    @property
    def distinct(self) -> int:
        return len(self._cache)


def _copy_file(src: Path, dst: Path, umap: _UuidMap) -> int:
    """Stream `src` to `dst` line by line, uuids replaced; returns bytes written.

    A line longer than _CHUNK is processed in pieces. A piece is cut just after
    a byte that is neither hex nor '-' at least 35 bytes before its end, and
    the rest is carried into the next piece: no uuid (36 bytes) can straddle
    the cut, and the hex look-arounds see the true neighbours.
    """
    written = 0
    tmp = dst.with_name(dst.name + ".part")
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        carry = b""
        while True:
            piece = fin.readline(_CHUNK)
            if not piece:
                break
            data = carry + piece
            if data.endswith(b"\n"):
                out, carry = umap.sub_bytes(data), b""
            else:
                # Partial long line (or an unterminated last line): keep a tail
                # back so a uuid cut in two is seen whole with the next piece.
                cut = max(len(data) - 35, 0)
                while cut > 0 and data[cut - 1 : cut] in b"0123456789abcdefABCDEF-":
                    cut -= 1
                if cut == 0 and len(data) > 4 * _CHUNK:
                    cut = len(data)  # megabytes of bare hex: no sane place to cut
                out, carry = umap.sub_bytes(data[:cut]), data[cut:]
            fout.write(out)
            written += len(out)
        if carry:
            out = umap.sub_bytes(carry)
            fout.write(out)
            written += len(out)
    os.replace(tmp, dst)
    return written


def source_bytes(src: Path) -> int:
    """Bytes of the `.jsonl` files under `src`: what one copy adds to an ingest."""
    return sum(p.stat().st_size for p in src.rglob("*.jsonl") if p.is_file())


def _copies_for(src: Path, copies: int | None, target_bytes: int | None) -> int:
    if (copies is None) == (target_bytes is None):
        raise ValueError("give exactly one of copies and target_bytes")
    if copies is not None:
        if copies < 1:
            raise ValueError("copies must be >= 1")
        return copies
    assert target_bytes is not None
    one = source_bytes(src)
    if one <= 0:
        raise ValueError(f"no .jsonl files under {src}")
    return max(1, math.ceil(target_bytes / one))


def make_corpus(src: Path, dst: Path, copies: int | None = None,
                target_bytes: int | None = None) -> CorpusStats:
    """Write `copies` copies of the corpus at `src` into `dst` (see module docstring).

    With `target_bytes` instead of `copies`, writes as many copies as it takes
    for the `.jsonl` bytes to reach at least `target_bytes`. `dst` is laid out
    like ~/.claude/projects: `dst/<project><suffix>/...`. Existing files of the
    same names are overwritten (each file is written to `.part` and renamed, so
    an interrupted run never leaves a half file under a transcript's name).
    """
    started = time.perf_counter()
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"source corpus not found: {src}")
    n = _copies_for(src, copies, target_bytes)
    projects = sorted(p for p in src.iterdir() if p.is_dir())
    files = jsonl_files = total = jsonl_total = replaced = distinct = 0
    for copy in range(n):
        umap = _UuidMap(copy)
        for project in projects:
            out_project = dst / (umap.sub_name(project.name) + copy_suffix(copy))
            for dirpath, dirnames, filenames in os.walk(project):
                dirnames.sort()
                rel = Path(dirpath).relative_to(project)
                out_dir = out_project.joinpath(*(umap.sub_name(part) for part in rel.parts))
                out_dir.mkdir(parents=True, exist_ok=True)
                for name in sorted(filenames):
                    size = _copy_file(Path(dirpath) / name, out_dir / umap.sub_name(name), umap)
                    files += 1
                    total += size
                    if name.endswith(".jsonl"):
                        jsonl_files += 1
                        jsonl_total += size
        replaced += umap.replaced
        distinct += umap.distinct
    return CorpusStats(
        copies=n, files=files, jsonl_files=jsonl_files, bytes=total, jsonl_bytes=jsonl_total,
        uuids_replaced=replaced, distinct_uuids=distinct,
        elapsed_s=round(time.perf_counter() - started, 3),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Copy the shared transcript corpus N times with fresh uuids "
                    "(a folder laid out like ~/.claude/projects).",
    )
    parser.add_argument("dst", type=Path, help="output folder (created)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--copies", type=int, help="number of copies")
    group.add_argument("--target-mb", type=float,
                       help="write enough copies for the .jsonl files to reach this many MB")
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC,
                        help=f"source corpus (default: {DEFAULT_SRC})")
    parser.add_argument("--json", action="store_true", help="print the stats as one JSON object")
    args = parser.parse_args(argv)
    target = None if args.target_mb is None else int(args.target_mb * 1_000_000)
    try:
        stats = make_corpus(args.src, args.dst, copies=args.copies, target_bytes=target)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"corpus: {exc}\n")
        return 1
    if args.json:
        print(json.dumps(stats.to_dict()))
    else:
        print(f"{stats.copies} copies, {stats.files} files ({stats.jsonl_files} .jsonl), "
              f"{stats.jsonl_bytes / 1e6:.1f} MB of .jsonl, {stats.uuids_replaced} uuids "
              f"replaced, {stats.elapsed_s:.1f} s -> {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
