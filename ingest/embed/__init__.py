"""The embedding engine: text in, unit vectors out. No database code here.

Which model (`resolve`)
    `resolve_model()` turns the user's setting into a `ModelSpec`: an explicit
    setting, then the packaged copy of all-MiniLM-L6-v2, then the hub name.
    `ModelSpec.model_id` names the weights, not where they were loaded from;
    the database records it and refuses to mix vectors of two models.

Windows (`windows`)
    The model reads at most 256 word pieces; `TextSplitter` cuts long text
    into overlapping windows that fit, on word boundaries. `load_splitter()`
    gives one without loading the model.

Two backends, one contract (`embedder`, `loader`, `torch_backend`, `onnx_backend`)
    `Embedder.embed()` returns float32, shape (n, dim), L2-normalised rows,
    whatever the backend: "torch" (sentence-transformers, the reference) or
    "onnx" (an int8 export run by onnxruntime: starts in a fraction of a
    second, stays small, faster on CPU, within about 0.99 cosine of torch).
    `load_embedder(setting, backend)` picks one; "auto" prefers onnx and falls
    back to torch. Never fake vectors: if no backend loads, `ModelUnavailable`
    is raised. `embed()` blocks (run it in a worker thread) and may be called
    from several threads at once.

The export (`export`)
    The ONNX export runs once per model and recipe, in a child process, and
    is checked against sentence-transformers before it is used.

The configured model (`configured`)
    `load_configured_embedder(environ)` reads DEJA_EMBED_MODEL,
    DEJA_EMBED_BACKEND and DEJA_MODEL_CACHE: the one place the environment
    meets this package (the CLI and the MCP server call it).
    `configured_model(environ)` resolves without loading and tells whether
    the load will be quick (a cached export) or take seconds.

Cost of importing this package
    Nothing heavy: numpy, tokenizers, torch, sentence-transformers and
    onnxruntime are imported inside the functions that need them, because the
    MCP server imports this package before its handshake.
"""

from __future__ import annotations

from ..errors import ModelUnavailable
from .configured import ConfiguredModel, configured_model, load_configured_embedder
from .embedder import Embedder
from .loader import BACKENDS, load_embedder
from .onnx_backend import onnx_cache_path
from .resolve import DEFAULT_DIM, DEFAULT_MODEL, ModelSpec, resolve_model
from .windows import TextSplitter, load_splitter

__all__ = [
    "BACKENDS",
    "ConfiguredModel",
    "DEFAULT_DIM",
    "DEFAULT_MODEL",
    "Embedder",
    "ModelSpec",
    "ModelUnavailable",
    "TextSplitter",
    "configured_model",
    "load_configured_embedder",
    "load_embedder",
    "load_splitter",
    "onnx_cache_path",
    "resolve_model",
]
