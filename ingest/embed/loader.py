"""Loading an embedder: the choice of backend, and the fallback from one to the other.

`load_embedder(setting, backend)` resolves the model (`resolve.resolve_model`)
and loads it with one of:

- "torch": sentence-transformers, the reference (`torch_backend`).
- "onnx": the int8 ONNX export run by onnxruntime (`onnx_backend`), exported
  once per model into the cache folder (`export`).
- "auto": onnx when onnxruntime is installed, a cache folder is given and the
  export works (or already exists); torch otherwise. Never fake vectors: if no
  backend loads, `ModelUnavailable` is raised.

Thread counts are capped (default: the CPUs this process may use, at most 4)
so that embedding leaves room for the rest. Nothing heavy is imported here:
each backend imports its libraries when it loads.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path

from ..errors import ModelUnavailable
from .embedder import Embedder
from .onnx_backend import (
    NoOnnxRuntime,
    OnnxUnavailable,
    export_ready,
    load_onnx_export,
    onnx_cache_path,
)
from .resolve import ModelSpec, resolve_model
from .torch_backend import load_torch

__all__ = ["BACKENDS", "load_embedder"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "torch")


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
    `backend` is "auto", "onnx" or "torch" (see this module's docstring).
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
        except OnnxUnavailable as exc:
            if backend == "onnx":
                message = f"onnx backend unavailable for {spec.model_id}: {exc}"
                raise ModelUnavailable(message) from exc
            level = logging.INFO if isinstance(exc, NoOnnxRuntime) else logging.WARNING
            logger.log(level, "onnx backend unavailable (%s); using torch", exc)
        else:
            embedder.load_seconds = time.perf_counter() - started
            _log_loaded(embedder)
            return embedder
    embedder = load_torch(spec, n_threads, local_files_only)
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


def _load_onnx(
    spec: ModelSpec, cache_dir: Path, threads: int, local_files_only: bool, retry_failed: bool
) -> Embedder:
    if importlib.util.find_spec("onnxruntime") is None:
        raise NoOnnxRuntime("onnxruntime is not installed")
    if export_ready(cache_dir, spec):
        return load_onnx_export(spec, onnx_cache_path(cache_dir, spec), threads)
    # The export code (subprocess, tempfile, shutil, inspect) only when an export is needed.
    from .export import ensure_export

    folder = ensure_export(spec, cache_dir, threads, local_files_only, retry_failed)
    return load_onnx_export(spec, folder, threads)
