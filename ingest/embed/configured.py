"""The embedder the user configured, read from the environment at the edge.

Why this module exists: `load_embedder` takes explicit arguments and never
reads `os.environ`; the CLI, the MCP server and the benches all need the same
translation of deja's settings into those arguments, and the server must not
import a command-line module to get it. So the one place that maps
DEJA_EMBED_MODEL, DEJA_EMBED_BACKEND and DEJA_MODEL_CACHE onto
`load_embedder` is here; callers pass the environment they were started with.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..config import default_data_dir
from .embedder import Embedder
from .loader import load_embedder

__all__ = ["load_configured_embedder"]


def load_configured_embedder(environ: Mapping[str, str]) -> Embedder:
    """The embedder the user configured: DEJA_EMBED_MODEL (name or path), DEJA_EMBED_BACKEND
    (auto, onnx, torch), DEJA_MODEL_CACHE (where the ONNX export is kept; default: the
    `models` folder in deja's data folder).

    Blocking and slow (seconds): call it in a worker thread. Raises
    ModelUnavailable when the model cannot be loaded.
    """
    return load_embedder(
        environ.get("DEJA_EMBED_MODEL") or None,
        backend=environ.get("DEJA_EMBED_BACKEND") or "auto",
        cache_dir=Path(environ["DEJA_MODEL_CACHE"]) if environ.get("DEJA_MODEL_CACHE")
        else default_data_dir(environ) / "models",
    )
