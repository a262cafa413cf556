"""The embedding engine with the real model (all-MiniLM-L6-v2, installed offline).

Each backend is loaded once per session; the ONNX export runs once, into a
temporary cache, so the export path itself is exercised on every run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingest.embed import loader as embed_loader
from ingest.embed import resolve as embed_resolve
from ingest.embed import (
    DEFAULT_DIM,
    DEFAULT_MODEL,
    Embedder,
    ModelSpec,
    ModelUnavailable,
    TextSplitter,
    load_embedder,
    load_splitter,
    onnx_cache_path,
    resolve_model,
)

from fixtures.paths import REPO


def _transcript_texts(projects: Path, limit: int) -> list[str]:
    """User prompts and assistant text from the shared real transcripts."""
    texts: list[str] = []
    for path in sorted(projects.rglob("*.jsonl")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            message = record.get("message") if isinstance(record, dict) else None
            content = message.get("content") if isinstance(message, dict) else None
            blocks = (
                [content]
                if isinstance(content, str)
                else content
                if isinstance(content, list)
                else []
            )
            for block in blocks:
                text = (
                    block
                    if isinstance(block, str)
                    else block.get("text")
                    if isinstance(block, dict)
                    else None
                )
                if isinstance(text, str) and len(text.strip()) >= 20:
                    texts.append(text)
        if len(texts) >= limit:
            break
    if not texts:
        pytest.fail(f"no transcript text under {projects}")
    return texts[:limit]


@pytest.fixture(scope="session")
def real_texts(shared_projects: Path) -> list[str]:
    return _transcript_texts(shared_projects, 400)


@pytest.fixture(scope="session")
def torch_embedder() -> Embedder:
    return load_embedder(None, "torch", local_files_only=True)


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embed-cache")


@pytest.fixture(scope="session")
def onnx_embedder(onnx_cache: Path) -> Embedder:
    pytest.importorskip("onnxruntime")
    return load_embedder(None, "onnx", cache_dir=onnx_cache, local_files_only=True)


@pytest.fixture(params=["torch", "onnx"])
def embedder(request: pytest.FixtureRequest) -> Embedder:
    loaded: Embedder = request.getfixturevalue(f"{request.param}_embedder")
    return loaded


@pytest.fixture(scope="session")
def splitter() -> TextSplitter:
    return load_splitter(resolve_model(None))


# -- importing costs nothing


def test_import_loads_no_heavy_library() -> None:
    heavy = ("torch", "sentence_transformers", "transformers", "onnxruntime", "numpy", "tokenizers")
    code = f"import sys, ingest.embed; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]"


# -- which model


def test_default_is_the_packaged_copy() -> None:
    spec = resolve_model(None)
    assert spec.origin == "packaged"
    assert Path(spec.source, "modules.json").is_file()
    assert (spec.model_id, spec.dim) == (DEFAULT_MODEL, DEFAULT_DIM)


def test_without_the_package_the_hub_name_has_the_same_identity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    packaged = resolve_model(None)
    monkeypatch.setattr(embed_resolve, "_packaged_model_dir", lambda: None)
    spec = resolve_model(None)
    assert (spec.source, spec.origin) == (DEFAULT_MODEL, "hub")
    assert spec.model_id == packaged.model_id
    assert spec.dim == DEFAULT_DIM


def _model_copy(target: Path, edit_config: bool) -> Path:
    """A model folder of symlinks to the packaged files, optionally with one file changed."""
    source = Path(resolve_model(None).source)
    for file in source.rglob("*"):
        if file.is_file():
            (target / file.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (target / file.relative_to(source)).symlink_to(file)
    if edit_config:
        config = target / "config.json"
        data = json.loads(config.read_text())
        config.unlink()
        config.write_text(json.dumps({**data, "note": "fine-tuned"}))
    return target


def test_explicit_setting_wins(tmp_path: Path) -> None:
    other = _model_copy(tmp_path / "mine", edit_config=True)
    spec = resolve_model(str(other))
    assert (spec.source, spec.origin) == (str(other.resolve()), "setting")
    assert spec.model_id.startswith("local:") and spec.dim == DEFAULT_DIM
    # A moved folder keeps its identity; its content is what counts.
    assert resolve_model(str(other.rename(tmp_path / "moved"))).model_id == spec.model_id


def test_a_copy_of_the_packaged_model_is_the_same_model(tmp_path: Path) -> None:
    assert (
        resolve_model(str(_model_copy(tmp_path / "copy", edit_config=False))).model_id
        == DEFAULT_MODEL
    )


@pytest.mark.parametrize(
    ("setting", "model_id", "dim"),
    [
        ("all-MiniLM-L6-v2", DEFAULT_MODEL, DEFAULT_DIM),
        ("sentence-transformers/all-MiniLM-L6-v2", DEFAULT_MODEL, DEFAULT_DIM),
        ("BAAI/bge-small-en-v1.5", "BAAI/bge-small-en-v1.5", None),
    ],
)
def test_explicit_names(setting: str, model_id: str, dim: int | None) -> None:
    spec = resolve_model(setting)
    assert (spec.model_id, spec.dim, spec.origin) == (model_id, dim, "setting")


def test_a_hub_cache_snapshot_is_named_after_its_repository(tmp_path: Path) -> None:
    snapshot = tmp_path / "models--acme--tiny-embedder" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert resolve_model(str(snapshot)).model_id == "acme/tiny-embedder"


@pytest.mark.parametrize("setting", ["./no/such/model", "/no/such/model", "~/no/such/model"])
def test_missing_folder_is_a_clear_error(setting: str) -> None:
    with pytest.raises(ModelUnavailable, match="not found"):
        resolve_model(setting)


def test_a_folder_that_is_no_model_is_unavailable(tmp_path: Path, torch_embedder: Embedder) -> None:
    with pytest.raises(ModelUnavailable, match="cannot load"):
        load_embedder(str(tmp_path), "torch", local_files_only=True)


def test_auto_does_not_hide_a_missing_model(tmp_path: Path) -> None:
    """The export child reports the model as unavailable: no torch retry, no marker."""
    pytest.importorskip("onnxruntime")
    (tmp_path / "empty").mkdir()
    cache = tmp_path / "cache"
    with pytest.raises(ModelUnavailable, match="cannot load"):
        load_embedder(str(tmp_path / "empty"), "auto", cache_dir=cache, local_files_only=True)
    assert [p.name for p in (cache / "onnx").iterdir()] == []


def test_bad_backend_arguments() -> None:
    with pytest.raises(ValueError, match="backend"):
        load_embedder(None, "tensorflow")
    with pytest.raises(ValueError, match="cache_dir"):
        load_embedder(None, "onnx")


# -- vectors


def test_vectors_are_unit_float32_rows(embedder: Embedder) -> None:
    vectors = embedder.embed(["a short prompt", "", "x" * 5000, "修复数据库连接的错误"])
    assert vectors.dtype == np.float32 and vectors.shape == (4, DEFAULT_DIM) == (4, embedder.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, DEFAULT_DIM)
    assert (embedder.model_id, embedder.max_tokens) == (DEFAULT_MODEL, 256)


def test_embed_rejects_non_strings(embedder: Embedder) -> None:
    with pytest.raises(TypeError):
        embedder.embed([b"bytes"])  # type: ignore[list-item]


def test_similar_sentences_are_closer(embedder: Embedder) -> None:
    query, near, far = embedder.embed(
        [
            "How do I fix the failing database migration?",
            "The schema migration of the SQLite database is broken and needs repair.",
            "I baked a chocolate cake for my grandmother's birthday.",
        ]
    )
    assert float(query @ near) > float(query @ far) + 0.2


def test_a_text_gets_the_same_vector_alone_or_in_a_batch(
    embedder: Embedder, real_texts: list[str]
) -> None:
    texts = [t for t in real_texts if len(t) < 600][:16]
    together = embedder.embed(texts)
    alone = np.vstack([embedder.embed([t]) for t in texts[:4]])
    reordered = embedder.embed(texts[::-1])[::-1]
    if embedder.backend == "onnx":
        # One text per run: int8 activation scales never mix two texts.
        assert np.array_equal(together[:4], alone) and np.array_equal(together, reordered)
    else:
        assert np.allclose(together[:4], alone, atol=1e-4) and np.allclose(
            together, reordered, atol=1e-4
        )


def test_onnx_agrees_with_torch(
    torch_embedder: Embedder, onnx_embedder: Embedder, real_texts: list[str]
) -> None:
    texts = real_texts[:80]
    cosines = (torch_embedder.embed(texts) * onnx_embedder.embed(texts)).sum(axis=1)
    assert cosines.mean() > 0.98
    assert cosines.min() > 0.9


# -- the ONNX cache


def test_onnx_export_is_cached_and_reused(onnx_embedder: Embedder, onnx_cache: Path) -> None:
    folder = onnx_cache_path(onnx_cache, onnx_embedder.spec)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["model_id"] == DEFAULT_MODEL and meta["probe_cosine_mean"] >= 0.98
    stamp = (folder / "model.int8.onnx").stat().st_mtime_ns
    again = load_embedder(None, "onnx", cache_dir=onnx_cache, local_files_only=True)
    assert again.load_seconds < 3 and (folder / "model.int8.onnx").stat().st_mtime_ns == stamp
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no leftover temp folder


def test_onnx_cache_is_keyed_by_model(tmp_path: Path) -> None:
    a = onnx_cache_path(tmp_path, ModelSpec("/x", DEFAULT_MODEL))
    b = onnx_cache_path(tmp_path, ModelSpec("/x", "local:0123456789abcdef"))
    c = onnx_cache_path(tmp_path, ModelSpec("/elsewhere", DEFAULT_MODEL, origin="hub"))
    assert a != b and a == c


class _Stub:
    backend = "torch"
    model_id = DEFAULT_MODEL
    dim = DEFAULT_DIM
    load_seconds = 0.0
    spec = ModelSpec("stub", DEFAULT_MODEL)


@pytest.fixture
def torch_loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ModelSpec]]:
    """Replace the torch loader by a recorder, to test the choice of backend cheaply."""
    calls: list[ModelSpec] = []

    def fake(spec: ModelSpec, threads: int, local_files_only: bool) -> Any:
        calls.append(spec)
        return _Stub()

    monkeypatch.setattr(embed_loader, "load_torch", fake)
    yield calls


def test_auto_without_a_cache_folder_is_torch(torch_loads: list[ModelSpec]) -> None:
    assert load_embedder(None, "auto").backend == "torch" and len(torch_loads) == 1


def test_auto_uses_a_cached_export(
    onnx_embedder: Embedder, onnx_cache: Path, torch_loads: list[ModelSpec]
) -> None:
    assert load_embedder(None, "auto", cache_dir=onnx_cache).backend == "onnx" and not torch_loads


def test_auto_falls_back_after_a_failed_export(
    tmp_path: Path, torch_loads: list[ModelSpec]
) -> None:
    spec = resolve_model(None)
    folder = onnx_cache_path(tmp_path, spec)
    folder.parent.mkdir(parents=True)
    folder.with_name(folder.name + ".failed.json").write_text("{}")
    assert (
        load_embedder(spec, "auto", cache_dir=tmp_path).backend == "torch" and len(torch_loads) == 1
    )


def test_loading_and_embedding_print_nothing_on_stdout(
    onnx_embedder: Embedder, onnx_cache: Path
) -> None:
    code = (
        "import sys; from pathlib import Path; from ingest.embed import load_embedder; "
        "load_embedder(None, 'auto', cache_dir=Path(sys.argv[1])).embed(['hello'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(onnx_cache)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert out.stdout == ""


# -- windows


def test_count_tokens(splitter: TextSplitter, torch_embedder: Embedder) -> None:
    assert splitter.count_tokens("hello world") == 2 == torch_embedder.count_tokens("hello world")
    assert splitter.count_tokens("") == 0
    assert splitter.max_tokens == 256 == torch_embedder.max_tokens


def test_short_text_is_one_window(splitter: TextSplitter) -> None:
    assert splitter.split_windows("a short record") == ["a short record"]
    assert splitter.split_windows("   \n ") == []


@pytest.mark.parametrize(("max_tokens", "overlap"), [(256, 32), (64, 8), (16, 0)])
def test_windows_fit_overlap_and_cover(
    splitter: TextSplitter, real_texts: list[str], max_tokens: int, overlap: int
) -> None:
    text = "\n\n".join(real_texts)[: 150 * max_tokens]
    spans = splitter.window_spans(text, max_tokens=max_tokens, overlap=overlap)
    windows = splitter.split_windows(text, max_tokens=max_tokens, overlap=overlap)
    assert len(windows) > 1 and windows == [text[a:b] for a, b in spans]
    whole = splitter._tokenizer.encode(text, add_special_tokens=False)
    ids, word_ids = whole.ids, whole.word_ids  # each access copies out of Rust
    word_sizes = Counter(word_ids)
    token_starts = [a for a, _ in whole.offsets]
    token_ends = [b for _, b in whole.offsets]
    budget = max_tokens - splitter.special_tokens
    for start, end in spans:
        window = text[start:end]
        covered = range(bisect_left(token_starts, start), bisect_right(token_ends, end))
        first, last = covered[0], covered[-1]
        cut_word = (first > 0 and word_ids[first - 1] == word_ids[first]) or (
            last + 1 < len(ids) and word_ids[last + 1] == word_ids[last]
        )
        if cut_word:
            # Only a word longer than a whole window may be cut (never at 256).
            assert max(word_sizes[word_ids[first]], word_sizes[word_ids[last]]) > budget
            continue
        # Cut on word boundaries: the window re-tokenizes to exactly the pieces it covers.
        pieces = splitter._tokenizer.encode(window, add_special_tokens=False).ids
        assert pieces == ids[first : last + 1]
        assert 0 < len(pieces) + splitter.special_tokens <= max_tokens
    assert spans[0][0] == 0 and text[spans[-1][1] :].strip() == ""
    for (previous_start, previous_end), (next_start, _) in pairwise(spans):
        assert previous_start < next_start  # progress
        assert text[previous_end:next_start].strip() == ""  # no piece left out
        if overlap:
            assert next_start < previous_end  # some shared text


def test_window_arguments_are_checked(splitter: TextSplitter) -> None:
    with pytest.raises(ValueError):
        splitter.split_windows("text", max_tokens=2)
    with pytest.raises(ValueError):
        splitter.split_windows("text", max_tokens=64, overlap=62)


def test_embedder_splits_like_the_standalone_splitter(
    onnx_embedder: Embedder, splitter: TextSplitter, real_texts: list[str]
) -> None:
    text = " ".join(real_texts[:50])
    assert onnx_embedder.split_windows(text) == splitter.split_windows(text)
