"""The CLI end to end on the shared real transcripts: ingest, re-ingest, stats, search."""

from __future__ import annotations

from pathlib import Path


def test_ingest_shared_corpus_then_rerun_adds_nothing(shared_projects: Path, db_path: Path,
                                                      deja_json) -> None:
    first = deja_json("--db", str(db_path), "ingest", "--root", str(shared_projects), "--json")
    for key in ("files", "sessions", "new_records", "skipped_lines", "redactions"):
        assert isinstance(first[key], int), key
    assert first["files"] == 35
    assert first["skipped_lines"] == 0, first["skipped"]
    assert first["new_records"] > 3000
    again = deja_json("--db", str(db_path), "ingest", "--root", str(shared_projects), "--json")
    assert again["new_records"] == 0
    assert again["files_read"] == 0
    assert again["elapsed_s"] < 1.0
    stats = deja_json("--db", str(db_path), "stats", "--json")
    assert stats["records"] == first["new_records"]
    assert stats["sessions"] >= 10
    assert sum(stats["by_kind"].values()) == stats["records"]


def test_db_env_var_and_file_modes(shared_projects: Path, tmp_path: Path, deja_json) -> None:
    db = tmp_path / "private" / "x.db"
    out = deja_json("ingest", "--root", str(shared_projects), "--json", env={"DEJA_DB": str(db)})
    assert out["database"] == str(db)
    assert db.exists()
    assert db.stat().st_mode & 0o777 == 0o600
    assert db.parent.stat().st_mode & 0o777 == 0o700


def test_every_command_has_help(run_deja) -> None:
    for cmd in ("ingest", "stats", "search"):
        proc = run_deja(cmd, "--help")
        assert "usage:" in proc.stdout and len(proc.stdout) > 100


def test_readme_demo_on_sample_transcripts(db_path: Path, deja_json) -> None:
    """README's no-history demo: the sample transcripts under tests/ ingest and are searchable."""
    sample = Path(__file__).parent / "sample" / "projects"
    out = deja_json("--db", str(db_path), "ingest", "--root", str(sample), "--json")
    assert out["files"] == 1 and out["sessions"] == 1 and out["skipped_lines"] == 0
    hits = deja_json("--db", str(db_path), "search", "redis timeout", "--json")["hits"]
    assert hits and all("redis" in h["snippet"].lower() for h in hits[:3])
    assert {"uuid", "session_id", "project", "kind", "timestamp", "snippet"} <= set(hits[0])
    assert hits[0]["project"] == "/home/demo/shop-api"
