"""Query vectors at once: a search 0.5 s after the handshake already uses vectors.

The server loads the embedding model right after the handshake. With the ONNX
export cached (the shared test cache, fixtures.paths.MODEL_CACHE) that takes a
fraction of a second and needs only onnxruntime, tokenizers and numpy; a
search arriving meanwhile waits for it, at most `model_wait_seconds`
(0.5 s). When the load is slow (the one-time export, torch) or fails, a
search never waits and says it used keywords alone.

The server tests run a real `deja serve` over stdio with the SDK's client, on
the sample transcripts ingested and embedded once for the module, with the
background ingest on, as Claude Code starts it. Measured on this 2-core
machine under other agents' load (load average 5 to 9): the model is up 0.3
to 0.6 s after the handshake, so a search at 0.5 s had vectors in every run,
and the wait leaves it until 1.0 s before it would fall back to keywords.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from ingest.embed import TextSplitter, configured_model, onnx_cache_path
from mcp_server.state import DejaState, ServerConfig

from fixtures.cli import deja, deja_env
from fixtures.paths import MODEL_CACHE, REPO, SAMPLE

HEAVY = ("numpy", "torch", "onnxruntime", "tokenizers", "transformers",
         "sentence_transformers", "huggingface_hub")
NOT_FOR_QUERIES = ("torch", "transformers", "sentence_transformers", "huggingface_hub")


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def _run_python(code: str, *args: str, importtime: bool = False) -> subprocess.CompletedProcess[str]:
    flags = ["-X", "importtime"] if importtime else []
    # A HOME of its own: onnxruntime writes ~/.cache/Microsoft/... on load.
    with tempfile.TemporaryDirectory(prefix="deja-home-") as home:
        return subprocess.run([sys.executable, *flags, "-c", code, *args], capture_output=True,
                              text=True, timeout=300, cwd=str(REPO),
                              env=deja_env(Path(home), {"DEJA_MODEL_CACHE": str(MODEL_CACHE)}))


def _imported(importtime_stderr: str) -> set[str]:
    """Module names from `python -X importtime` output."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


@pytest.fixture(scope="module")
def cached_export() -> Path:
    """The shared cache, with the export made (a minute, once) if no test made it yet."""
    code = ("import sys; from pathlib import Path; from ingest.embed import load_embedder; "
            "load_embedder(None, 'onnx', cache_dir=Path(sys.argv[1]))")
    proc = _run_python(code, str(MODEL_CACHE))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return MODEL_CACHE


# -- what the hook path and the query path import ------------------------------------


def test_importing_ingest_embed_imports_nothing_heavy() -> None:
    """The hook path rule: `import ingest.embed` loads no numpy, torch, onnxruntime or tokenizers."""
    proc = _run_python("import ingest.embed", importtime=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = _imported(proc.stderr)
    assert "ingest.embed" in names  # the parse itself is not vacuous
    heavy = sorted(n for n in names if n.split(".")[0] in HEAVY)
    assert not heavy, heavy


def test_a_cached_export_loads_without_torch_or_transformers(cached_export: Path) -> None:
    """Query vectors from the cached export need onnxruntime, tokenizers and numpy only."""
    code = ("import os, sys; from ingest.embed import load_configured_embedder; "
            "e = load_configured_embedder(os.environ); v = e.embed(['a query']); "
            "print(e.backend, v.shape[1], 'OPENBLAS_NUM_THREADS' in os.environ)")
    proc = _run_python(code, importtime=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["onnx", "384", "False"]  # the cap is not inherited
    names = _imported(proc.stderr)
    assert {"onnxruntime", "tokenizers", "numpy"} <= {n.split(".")[0] for n in names}
    assert not sorted(n for n in names if n.split(".")[0] in NOT_FOR_QUERIES), names
    assert "ingest.embed.export" not in names  # no export code when the export exists


def test_configured_model_says_when_the_load_is_quick(cached_export: Path, tmp_path: Path) -> None:
    env = {"DEJA_MODEL_CACHE": str(cached_export), "HOME": str(tmp_path)}
    assert configured_model(env).quick
    assert configured_model({**env, "DEJA_EMBED_BACKEND": "onnx"}).quick
    assert not configured_model({**env, "DEJA_EMBED_BACKEND": "torch"}).quick
    empty = tmp_path / "no-export-yet"
    assert not configured_model({**env, "DEJA_MODEL_CACHE": str(empty)}).quick


def test_the_splitter_read_on_first_use_cuts_as_the_copied_one(cached_export: Path) -> None:
    """The ONNX path reads the splitter's tokenizer on first use: the same windows."""
    from tokenizers import Tokenizer

    model = configured_model({"DEJA_MODEL_CACHE": str(cached_export), "HOME": "/nonexistent"})
    file = onnx_cache_path(cached_export, model.spec) / "tokenizer.json"
    eager = TextSplitter(Tokenizer.from_file(str(file)), 256)
    lazy = TextSplitter(file, 256)
    texts = [(REPO / "README.md").read_text(encoding="utf-8"),
             "ok", "", "naïve café 修复数据库连接的错误 " * 200,
             "Traceback (most recent call last): KeyError: 'session_id' " * 80]
    for text in texts:
        assert lazy.window_spans(text, overlap=32) == eager.window_spans(text, overlap=32)
        assert lazy.count_tokens(text) == eager.count_tokens(text)
    assert lazy.special_tokens == eager.special_tokens == 2


# -- the bounded wait ----------------------------------------------------------------


def _state(tmp_path: Path, wait: float) -> DejaState:
    config = ServerConfig(db_path=tmp_path / "x.db", roots=[], environ={},
                          model_wait_seconds=wait)
    return DejaState(config=config, store=cast(Any, None), project=str(tmp_path))


@pytest.mark.anyio
async def test_a_search_waits_for_a_quick_load_but_never_longer_than_the_bound(
        tmp_path: Path) -> None:
    state = _state(tmp_path, 0.3)
    assert await state.wait_for_model() == 0.0  # no loader: no wait
    state.model_settled = anyio.Event()
    with anyio.fail_after(5):
        waited = await state.wait_for_model()  # a load that never ends: the bound
    assert 0.25 <= waited < 2.0

    async def settle_soon() -> None:
        await anyio.sleep(0.05)
        state.embedder = object()
        assert state.model_settled is not None
        state.model_settled.set()

    state.model_settled = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(settle_soon)
        waited = await state.wait_for_model()  # woken by the load, not by the bound
    assert 0.03 <= waited < 0.25 and state.embedder is not None
    assert await state.wait_for_model() == 0.0  # loaded: no wait


# -- a real server over stdio --------------------------------------------------------


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory, cached_export: Path) -> tuple[Path, Path]:
    """The sample transcripts, ingested and embedded once: (home, db)."""
    home = tmp_path_factory.mktemp("quick")
    db = home / "deja.db"
    summary = json.loads(deja(home, "ingest", "--root", str(SAMPLE), "--json", db=db,
                              embed=True).stdout)
    assert summary["embedded"] > 0 and summary["pending_embeddings"] == 0, summary
    return home, db


@asynccontextmanager
async def served(home: Path, db: Path, **env: str) -> AsyncIterator[tuple[ClientSession, float]]:
    """A fresh `deja serve` (background ingest on), initialized; and when its answer came."""
    args = ["-m", "mcp_server", "--db", str(db), "--root", str(SAMPLE),
            "--log-file", str(home / "deja-server.log")]
    environ = deja_env(home, {"CLAUDE_PROJECT_DIR": "/home/demo/shop-api", **env}, embed=True)
    params = StdioServerParameters(command=sys.executable, args=args, env=environ, cwd=str(REPO))
    with open(home / "stderr.log", "a") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                with anyio.fail_after(30):
                    await session.initialize()
                yield session, time.monotonic()


async def search(session: ClientSession, query: str) -> dict[str, Any]:
    with anyio.fail_after(20):
        result = await session.call_tool("search_memory", {"query": query})
    assert not result.is_error and isinstance(result.structured_content, dict), result
    return result.structured_content


@pytest.mark.anyio
@pytest.mark.parametrize("start", range(3))
async def test_a_search_half_a_second_after_the_handshake_uses_vectors(
        embedded: tuple[Path, Path], start: int) -> None:
    home, db = embedded
    async with served(home, db) as (session, ready):
        await anyio.sleep(max(0.0, 0.5 - (time.monotonic() - ready)))
        asked = time.monotonic()
        out = await search(session, "why did the checkout test fail")
        answered = time.monotonic() - asked
    assert out["vector_status"] == "ok", (start, out.get("notes", []), answered)
    assert not any("keyword results only" in note for note in out.get("notes", []))
    assert answered < 2.0  # bounded: the wait is at most 0.5 s


@pytest.mark.anyio
async def test_questions_asked_at_the_handshake_are_answered_within_the_bound(
        embedded: tuple[Path, Path]) -> None:
    """A batch at once: each waits for the loading model, none beyond the bound plus a search."""
    home, db = embedded
    answers: list[tuple[dict[str, Any], float]] = []
    async with served(home, db) as (session, ready):

        async def ask(query: str) -> None:
            out = await search(session, query)
            answers.append((out, time.monotonic() - ready))

        async with anyio.create_task_group() as tg:
            for query in ("checkout test", "database migration", "deploy timeout",
                          "which port", "the error we saw"):
                tg.start_soon(ask, query)
    assert len(answers) == 5
    for out, took in answers:
        assert took < 3.0, took
        keywords_only = any("keyword results only" in note for note in out.get("notes", []))
        assert (out["vector_status"] == "ok") != keywords_only, out


@pytest.mark.anyio
async def test_a_model_that_cannot_load_is_not_waited_for(
        embedded: tuple[Path, Path], tmp_path: Path) -> None:
    home, db = embedded
    async with served(home, db, DEJA_EMBED_MODEL=str(tmp_path / "no-such-model")) as (session, _):
        await anyio.sleep(0.3)  # the loader has failed by now
        asked = time.monotonic()
        out = await search(session, "checkout test")
        answered = time.monotonic() - asked
    assert out["vector_status"] != "ok"
    assert any("keyword results only" in note for note in out.get("notes", [])), out.get("notes", [])
    assert answered < 0.4, answered  # no wait for a model that will not come
