"""pytest wiring: the `shared` marker and its check, and per-test fixtures over tests/fixtures.

The helpers themselves are plain functions in tests/fixtures (importable from
module-scoped fixtures too); the fixtures here bind them to the test's own
temporary HOME and database path.

The shared real corpus: a test needs it when it carries the `shared` marker or
requests the `shared_projects` fixture, directly or through another fixture
(such tests are given the marker at collection). Without the corpus, they are
marked skipped with the reason at collection, or, under CI (`CI=true`), fail
before any of their fixtures runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.cli import deja as _deja
from fixtures.cli import deja_json as _deja_json
from fixtures.engine_corpus import Corpora, Corpus
from fixtures.engines import ENGINES, Target
from fixtures.postgres import PgServer, start_server
from fixtures.search_corpus import SearchCorpora
from fixtures.shared import in_ci, missing_reason, require_shared

SHARED_FIXTURE = "shared_projects"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "shared: needs the shared real transcripts (../shared or $DEJA_SHARED); "
                   "skipped without them, a failure under CI=true")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that request the corpus; without it, mark them skipped (not under CI)."""
    reason = missing_reason()
    for item in items:
        if SHARED_FIXTURE in getattr(item, "fixturenames", ()) and \
                item.get_closest_marker("shared") is None:
            item.add_marker(pytest.mark.shared)
        if reason and not in_ci() and item.get_closest_marker("shared") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Under CI, fail a test of the shared corpus without it, before its fixtures run."""
    if in_ci() and item.get_closest_marker("shared") is not None:
        require_shared()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    reason = missing_reason()
    if reason and skipped:
        terminalreporter.write_line(
            f"deja: the real-corpus tests were skipped: {reason}", yellow=True)


@pytest.fixture(scope="session")
def shared_projects() -> Path:
    """The shared real transcripts, laid out like ~/.claude/projects."""
    return require_shared()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """The test's HOME: deja's default data folder and ~/.claude live under it."""
    folder = tmp_path / "home"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "deja.db"


@pytest.fixture
def deja(home: Path) -> Callable[..., Any]:
    """`deja ARGS...` in a subprocess with the test's HOME (see fixtures.cli.deja)."""

    def run(*args: str, **kw: Any) -> Any:
        return _deja(home, *args, **kw)

    return run


@pytest.fixture
def deja_json(home: Path) -> Callable[..., Any]:
    """A deja command that must succeed and print one JSON object, parsed."""

    def run(*args: str, **kw: Any) -> Any:
        return _deja_json(home, *args, **kw)

    return run


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """One real PostgreSQL + pgvector for the whole run (fixtures/postgres.py); skipped with
    the reason when it cannot start, a failure under CI."""
    server = start_server(tmp_path_factory.mktemp("pg"))
    yield server
    server.handle.cleanup()


@pytest.fixture
def postgres_url(postgres_server: PgServer) -> str:
    """The URL of a fresh, empty database of the test's own on the run's server."""
    return postgres_server.uri(postgres_server.new_database())


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Run the test once per storage engine ("sqlite", "postgres"; fixtures/engines.py)."""
    return str(request.param)


@pytest.fixture
def db_target(engine: str, request: pytest.FixtureRequest, db_path: Path) -> Target:
    """The test's own empty database on its engine: a SQLite path or a PostgreSQL URL.

    The server is asked for only on PostgreSQL, so the SQLite half never waits
    for (or skips with) pgserver.
    """
    if engine == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return db_path


@pytest.fixture(scope="session")
def search_corpora(tmp_path_factory: pytest.TempPathFactory) -> SearchCorpora:
    """test_search.py's generated corpus, ingested and embedded once per run per engine on
    first use (fixtures/search_corpus.py); test_search and test_postgres_search share it."""
    return SearchCorpora(tmp_path_factory.mktemp("search"))


@pytest.fixture(scope="session")
def corpora(tmp_path_factory: pytest.TempPathFactory, shared_projects: Path) -> Corpora:
    """The shared corpus ingested once per engine per run, when first asked
    (fixtures/engine_corpus.py)."""
    return Corpora(tmp_path_factory.mktemp("corpora"), shared_projects)


@pytest.fixture
def corpus(engine: str, corpora: Corpora, request: pytest.FixtureRequest) -> Corpus:
    """The shared corpus on the test's engine: read `corpus.target`, or `corpus.copy(dir)`."""
    server = request.getfixturevalue("postgres_server") if engine == "postgres" else None
    return corpora.get(engine, server)
