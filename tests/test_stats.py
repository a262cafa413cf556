"""`deja stats`: the analytics, checked against figures computed from the JSONL files.

The shared transcripts are ingested once per run on each engine (keyword index
only; fixtures/engine_ingested.py) and every test of the analytics runs on both
(the `engine` fixture); every `deja stats` runs as a subprocess. The expected numbers come from
fixtures/truth.py, which reads the transcripts with `json` alone and applies
the counting rules of FORMAT.md (tokens once per message id and request id,
the largest usage kept; tool calls once per tool_use id).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlean
from fixtures.cli import deja, deja_json
from fixtures.engine_corpus import CORPUS_MACHINE, Corpora, Corpus
from fixtures.engines import Target, is_postgres
from fixtures.truth import truth_of

from ingest.derived import RESPONSE_KEY_SQL
from ingest.migration_m008 import M008_RESPONSE_KEY
from ingest.migrations import SCHEMA_VERSION
from mcp_server.analytics.periods import dense_weeks, sparkline, week_of
from mcp_server.analytics.prices import SHIPPED, PriceTable, load_prices

# Keys `deja stats --json` printed before the analytics; tests and scripts use them.
OLD_KEYS = {"database", "database_bytes", "sessions", "subagent_runs", "records", "by_kind",
            "files", "missing_files", "bytes_ingested", "last_ingest", "pending_embeddings",
            "chunks", "embedding_model"}
NEW_KEYS = {"filters", "messages", "activity", "projects", "models", "tools", "tool_calls",
            "tool_errors", "tokens", "cost", "sessions_longest", "sessions_costliest",
            "files_edited", "top_terms", "tokens_by_day"}
TOKEN_KEYS = {"input", "output", "cache_creation", "cache_read"}
LIVECD = "-home-ubuntu-Documents-livecd-gen"


class Ingested:
    def __init__(self, home: Path, db: Target, projects: Path) -> None:
        self.home, self.db, self.projects = home, db, projects

    def stats(self, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = deja_json(self.home, "--db", str(self.db), "stats", "--json",
                                        *args, env=env)
        return out


@pytest.fixture
def ingested(corpus: Corpus, shared_projects: Path) -> Ingested:
    return Ingested(corpus.home, corpus.target, shared_projects)


def test_stats_json_has_the_old_keys_and_the_analytics(ingested: Ingested) -> None:
    s = ingested.stats()
    assert OLD_KEYS | NEW_KEYS <= set(s)
    assert set(s["tokens"]) == TOKEN_KEYS
    assert all(set(v) == {"calls", "errors"} for v in s["tools"].values())
    assert sum(s["by_kind"].values()) == s["records"]
    assert set(s["activity"]) == {"day", "week", "month"}
    if is_postgres(ingested.db):  # the records say their machine (counted over the database)
        assert s["engine"] == "postgresql"
        assert s["records_by_machine"] == {CORPUS_MACHINE: s["records"]}
    # The three views add up to the same figures: every record with a time stamp (summary
    # lines and workflow journals have none).
    undated = s["by_kind"]["summary"] + s["by_kind"]["workflow_result"]
    for view in s["activity"].values():
        assert sum(row["records"] for row in view) == s["records"] - undated
        assert sum(row["messages"] for row in view) == s["messages"]


def test_sessions_per_project_match_the_transcripts(ingested: Ingested) -> None:
    truth = truth_of(ingested.projects)
    s = ingested.stats()
    assert {p: v["sessions"] for p, v in s["projects"].items()} == \
        {p: len(ids) for p, ids in truth.sessions.items()}
    assert s["sessions"] == sum(len(ids) for ids in truth.sessions.values())


def test_tool_calls_and_errors_per_tool_match_the_transcripts(ingested: Ingested) -> None:
    truth = truth_of(ingested.projects)
    s = ingested.stats()
    assert s["tools"] == truth.tools
    assert s["tool_calls"] == sum(t["calls"] for t in truth.tools.values())
    assert s["tool_errors"] == sum(t["errors"] for t in truth.tools.values()) > 0
    # More tool_call records than calls: replays in /btw asides are counted once.
    assert s["by_kind"]["tool_call"] > s["tool_calls"]


def test_token_sums_match_the_transcripts_deduplicated(ingested: Ingested) -> None:
    truth = truth_of(ingested.projects)
    s = ingested.stats()
    assert s["tokens"] == truth.tokens
    assert {m: v["tokens"] for m, v in s["models"].items() if any(v["tokens"].values())} == \
        {m: t for m, t in truth.tokens_by_model.items() if any(t.values())}
    # Summing every record's usage instead would count streaming chunks many times.
    assert s["responses"] < s["by_kind"]["assistant"] + s["by_kind"]["thinking"] + \
        s["by_kind"]["tool_call"]


def test_cost_is_priced_per_model_from_the_shipped_table(ingested: Ingested) -> None:
    s = ingested.stats()
    table = PriceTable(SHIPPED, "x", "deja")
    expected = 0.0
    for model, m in s["models"].items():
        price = table.for_model(model)
        if price is None:
            assert m["cost_usd"] is None
            continue
        assert m["cost_usd"] == pytest.approx(price.cost(m["tokens"]), abs=1e-3)
        expected += price.cost(m["tokens"])
    assert s["cost"]["usd"] == pytest.approx(expected, abs=1e-3)
    assert s["cost"]["unpriced_models"] == ["MiniMax-M2.7"]
    assert s["cost"]["prices"]["source"] == "deja" and s["cost"]["prices"]["date"]
    costs = [r["cost_usd"] for r in s["sessions_costliest"]]
    assert costs == sorted(costs, reverse=True) and costs[0] > 0
    spans = [r["duration_s"] for r in s["sessions_longest"]]
    assert spans == sorted(spans, reverse=True)


def test_prices_from_the_settings_file_override_and_add(ingested: Ingested, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[prices]\ndate = "2030-01-01"\n'
                      '"MiniMax-M2" = { input = 0.3, output = 1.2, cache_read = 0.03 }\n'
                      '"claude-haiku-4-5" = { input = 100 }\n')
    s = ingested.stats(env={"DEJA_CONFIG": str(config)})
    mm = s["models"]["MiniMax-M2.7"]["tokens"]
    assert s["models"]["MiniMax-M2.7"]["cost_usd"] == pytest.approx(
        (mm["input"] * 0.3 + mm["output"] * 1.2 + mm["cache_read"] * 0.03) / 1e6, abs=1e-3)
    haiku = s["models"]["claude-haiku-4-5-20251001"]
    assert haiku["cost_usd"] == pytest.approx(haiku["tokens"]["input"] * 100 / 1e6, abs=1e-3)
    assert s["cost"]["unpriced_models"] == []
    assert s["cost"]["prices"] == {**s["cost"]["prices"], "date": "2030-01-01",
                                   "source": str(config)}


def test_a_bad_price_table_is_one_line_and_exit_1(ingested: Ingested, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[prices]\n"claude-x" = { input = "cheap" }\n')
    proc = deja(ingested.home, "--db", str(ingested.db), "stats", "--json",
                env={"DEJA_CONFIG": str(config)}, expect=1)
    assert "prices.claude-x.input" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_project_filter_narrows_every_figure(ingested: Ingested) -> None:
    truth = truth_of(ingested.projects, project=LIVECD)
    s = ingested.stats(f"--project={LIVECD}")
    assert s["filters"]["projects"] == [LIVECD]
    assert list(s["projects"]) == [LIVECD]
    assert s["sessions"] == len(truth.sessions[LIVECD]) == 2
    assert s["tools"] == truth.tools
    assert s["tokens"] == truth.tokens
    everything = ingested.stats()
    assert s["records"] == everything["projects"][LIVECD]["records"] < everything["records"]


def test_time_filters_narrow_to_the_range(ingested: Ingested) -> None:
    since = "2026-04-01T00:00:00.000Z"
    truth = truth_of(ingested.projects, since=since)
    s = ingested.stats("--since", "2026-04-01")
    assert s["filters"]["since"] == since
    assert all(row["period"] >= "2026-04-01" for row in s["activity"]["day"])
    assert s["tokens"] == truth.tokens
    assert s["tools"] == truth.tools
    assert s["sessions"] == sum(len(v) for v in truth.sessions.values())
    none = ingested.stats("--until", "2000-01-01")
    assert none["sessions"] == none["records"] == none["tool_calls"] == 0
    assert none["tokens"] == dict.fromkeys(TOKEN_KEYS, 0) and none["cost"]["usd"] == 0
    bad = deja(ingested.home, "--db", str(ingested.db), "stats", "--since", "soon", expect=1)
    assert "cannot read the time" in bad.stderr and "Traceback" not in bad.stderr


def test_most_edited_files_count_each_edit_once(ingested: Ingested) -> None:
    s = ingested.stats("--top", "3")
    edits = s["files_edited"]
    assert len(edits) == 3 and [e["edits"] for e in edits] == sorted(
        (e["edits"] for e in edits), reverse=True)
    # Counted from the transcripts: Edit/Write/MultiEdit/NotebookEdit calls naming the file.
    wanted = edits[0]["path"]
    seen: set[tuple[str, str]] = set()
    for path in ingested.projects.rglob("*.jsonl"):
        for raw in path.read_bytes().splitlines():
            obj = json.loads(raw)
            content = (obj.get("message") or {}).get("content") if obj.get("type") == \
                "assistant" else None
            for b in content if isinstance(content, list) else []:
                if b.get("type") == "tool_use" and b.get("name") in (
                        "Edit", "MultiEdit", "Write", "NotebookEdit") and \
                        (b.get("input") or {}).get("file_path") == wanted:
                    seen.add((obj.get("sessionId"), b["id"]))
    assert edits[0]["edits"] == len(seen) > 1


def test_top_terms_leave_stopwords_out(ingested: Ingested) -> None:
    terms = [t["term"] for t in ingested.stats()["top_terms"]]
    assert len(terms) >= 10
    assert not {"the", "and", "thi", "file", "path", "true"} & set(terms)
    records = [t["records"] for t in ingested.stats()["top_terms"]]
    assert records == sorted(records, reverse=True)


def test_terminal_view_is_plain_when_piped(ingested: Ingested) -> None:
    s = ingested.stats()
    out = deja(ingested.home, "--db", str(ingested.db), "stats").stdout
    assert "\x1b[" not in out
    assert f"records: {s['records']}, messages: {s['messages']}" in out
    assert re.search(r"messages per day +[ ▁▂▃▄▅▆▇█]+", out)
    for name in ("Bash", "claude-sonnet-4-6", LIVECD, "most-edited files"):
        assert name in out


def test_html_report_renders_in_headless_chromium(ingested: Ingested, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    deja(ingested.home, "--db", str(ingested.db), "stats", "--html", str(page))
    assert page.stat().st_mode & 0o077 == 0  # it names projects, sessions and files
    html = page.read_text()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html and "<link" not in html and "src=" not in html
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", "--virtual-time-budget=3000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert dom.count("<svg") >= 4 and dom.count("<rect") > 20
    assert 'data-drawn="yes"' in dom  # the page's own script ran
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert console == []


def test_m008_fills_responses_from_old_records_as_ingest_does(corpora: Corpora,
                                                              tmp_path: Path) -> None:
    """A database of schema 7 (usage only in records.meta) upgraded by m008 counts exactly
    what a fresh ingest counts: the backfill and the writer follow one rule (SQLite's
    migration: not parametrized)."""
    lite = corpora.get("sqlite")
    ingested = Ingested(lite.home, lite.target, corpora.projects)
    assert RESPONSE_KEY_SQL == M008_RESPONSE_KEY
    old = tmp_path / "old.db"
    src = sqlean.connect(str(ingested.db))
    src.execute(f"VACUUM INTO '{old}'")
    fresh = src.execute("SELECT * FROM responses ORDER BY key").fetchall()
    src.close()
    assert len(fresh) == ingested.stats()["responses"] > 1000
    conn = sqlean.connect(str(old))
    conn.executescript("DROP TABLE responses; DROP INDEX records_activity; "
                       "DROP INDEX records_calls; DROP INDEX records_tool_name; "
                       "DROP TABLE ml_vectors; DROP TABLE ml_state; "  # m009's
                       "DROP TRIGGER records_ml_mark; "  # m010's (ml_vectors_ad went with its table)
                       "DROP INDEX sessions_project_key; "  # m011's
                       "ALTER TABLE sessions DROP COLUMN project_key; "
                       "PRAGMA user_version = 7;")
    conn.close()
    upgraded = deja_json(ingested.home, "--db", str(old), "stats", "--json")
    conn = sqlean.connect(str(old))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT * FROM responses ORDER BY key").fetchall() == fresh
    conn.close()
    assert upgraded["tokens"] == ingested.stats()["tokens"]


# -- the pure helpers ----------------------------------------------------------------


def test_prices_match_by_longest_prefix_and_never_guess() -> None:
    table = load_prices(None)
    assert table.for_model("claude-opus-4-5-20251101") == SHIPPED["claude-opus-4-5"]
    assert table.for_model("claude-opus-4-20250514") == SHIPPED["claude-opus-4-2"]
    assert table.for_model("claude-opus-4-1-20250805").output == 75
    assert table.for_model("claude-opus-4-9") is None
    assert table.for_model("anthropic/claude-opus-4.6") == SHIPPED["claude-opus-4-6"]
    assert table.for_model("<synthetic>") is None and table.for_model(None) is None


def test_weeks_are_iso_weeks_and_sparklines_scale() -> None:
    assert week_of("2026-01-01") == "2026-W01" and week_of("2027-01-01") == "2026-W53"
    assert dense_weeks(["2026-05-01", "2026-05-20"]) == ["2026-W18", "2026-W19", "2026-W20",
                                                         "2026-W21"]
    assert sparkline([0, 1, 2, 4]) == " ▃▅█"
    assert len(sparkline(list(range(100)), width=10)) == 10
