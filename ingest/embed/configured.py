"""The embedder the user configured, read from the environment at the edge.

Why this module exists: `load_embedder` takes explicit arguments and never
reads `os.environ`; the CLI, the MCP server and the benches all need the same
translation of deja's settings into those arguments, and the server must not
import a command-line module to get it. So the one place that maps
DEJA_EMBED_MODEL, DEJA_EMBED_BACKEND and DEJA_MODEL_CACHE onto
`load_embedder` is here; callers pass the environment they were started with.

`configured_model(environ)` only resolves (milliseconds, nothing heavy read)
and says whether the load will be quick (`ConfiguredModel.quick`: a cached
ONNX export, a fraction of a second) or slow (the one-time export, or torch:
seconds to a minute): the MCP server lets a search wait for a quick load, not
for a slow one.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..config import default_data_dir
from .embedder import Embedder
from .loader import load_embedder
from .onnx_backend import export_ready
from .resolve import ModelSpec, resolve_model

__all__ = ["ConfiguredModel", "configured_model", "load_configured_embedder"]


@dataclass(frozen=True)
class ConfiguredModel:
    """The resolved model, backend and export cache of a configuration; not loaded yet."""

    spec: ModelSpec
    backend: str
    cache_dir: Path

    @property
    def quick(self) -> bool:
        """Whether `load()` takes a fraction of a second: onnx with the export already cached."""
        return (self.backend in ("auto", "onnx")
                and importlib.util.find_spec("onnxruntime") is not None
                and export_ready(self.cache_dir, self.spec))

    def load(self) -> Embedder:
        """Load it: blocking, a fraction of a second if `quick`, else seconds (a worker thread)."""
        return load_embedder(self.spec, backend=self.backend, cache_dir=self.cache_dir)


def configured_model(environ: Mapping[str, str]) -> ConfiguredModel:
    """The model the user configured: DEJA_EMBED_MODEL (name or path), DEJA_EMBED_BACKEND
    (auto, onnx, torch), DEJA_MODEL_CACHE (where the ONNX export is kept; default: the
    `models` folder in deja's data folder).

    Raises ModelUnavailable for a model folder that does not exist.
    """
    backend = environ.get("DEJA_EMBED_BACKEND") or "auto"  # load() checks it
    cache = environ.get("DEJA_MODEL_CACHE")
    return ConfiguredModel(resolve_model(environ.get("DEJA_EMBED_MODEL") or None), backend,
                           Path(cache) if cache else default_data_dir(environ) / "models")


def load_configured_embedder(environ: Mapping[str, str]) -> Embedder:
    """The embedder the user configured (see `configured_model`).

    Blocking and slow (a fraction of a second with a cached export, seconds
    otherwise): call it in a worker thread. Raises ModelUnavailable when the
    model cannot be loaded.
    """
    return configured_model(environ).load()
