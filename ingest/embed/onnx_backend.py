"""The onnx backend: the int8 export of the model, run by onnxruntime + tokenizers + numpy.

The model is exported once with `torch.onnx` and quantized dynamically to
int8 (per channel, MatMul only; see `export`). Here it runs with mean pooling
then L2 in numpy. It starts in a fraction of a second, stays small and is
faster on CPU; its vectors are within about 0.99 cosine of torch's. Each text
runs alone, several in parallel: dynamic quantization scales a run's
activations as a whole, so batching would make a text's vector depend on its
neighbours.

The export is cached under the caller's cache folder in a directory keyed by
the model id and the export recipe (`onnx_cache_path`), so a different model
never reuses it. sentence-transformers' own `backend="onnx"` is not used: it
needs optimum, which downgrades transformers and breaks sentence-transformers.
onnxruntime, tokenizers and numpy are imported only when a model loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .embedder import Embedder
from .resolve import ModelSpec
from .windows import TextSplitter

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "onnx_cache_path",
    "export_ready",
    "load_onnx_export",
    "OnnxEncoder",
    "OnnxUnavailable",
    "NoOnnxRuntime",
    "RECIPE",
    "ONNX_FILE",
    "META_FILE",
]

# Bump when the export or quantization recipe changes: a new recipe gets a
# new cache folder instead of silently reusing the old file.
RECIPE = "torchscript-eager-opset17+int8-dynamic-perchannel-matmul/1"
ONNX_FILE = "model.int8.onnx"
# Written last by the export: its presence marks a complete, checked export.
META_FILE = "meta.json"


class OnnxUnavailable(Exception):
    """The onnx path cannot serve this model; "auto" falls back to torch."""


class NoOnnxRuntime(OnnxUnavailable):
    """onnxruntime is not installed: expected, not worth a warning."""


def onnx_cache_path(cache_dir: Path, spec: ModelSpec) -> Path:
    """The folder holding the ONNX export of `spec` under `cache_dir`.

    Keyed by the model id and the export recipe: another model, or a new
    recipe, gets another folder.
    """
    key = hashlib.sha256(f"{spec.model_id}\0{RECIPE}".encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", spec.model_id).strip("-")[:60]
    return Path(cache_dir) / "onnx" / f"{readable}-{key}"


def export_ready(cache_dir: Path, spec: ModelSpec) -> bool:
    """Whether a complete export of `spec` is cached, so that loading it takes a fraction of a second."""
    return (onnx_cache_path(cache_dir, spec) / META_FILE).is_file()


class OnnxEncoder:
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
            str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"]
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

def _import_numpy() -> None:
    """Import numpy (onnxruntime does, first thing) with OpenBLAS's thread pool capped at one.

    At import OpenBLAS starts a thread per core, and they spin: 50 to 100 ms of
    CPU here on 2 cores (more on a bigger machine), a third of a cached model's
    load, for a pool nothing here uses (pooling and norms are numpy reductions,
    not BLAS; the same vectors either way). A user's own setting is kept, and
    the variable is removed again so that child processes do not inherit it.
    """
    if "numpy" in sys.modules or "OPENBLAS_NUM_THREADS" in os.environ:
        return
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        import numpy  # noqa: F401
    finally:
        os.environ.pop("OPENBLAS_NUM_THREADS", None)


def load_onnx_export(spec: ModelSpec, folder: Path, threads: int) -> Embedder:
    """The embedder for the complete export of `spec` in `folder` (see `export.ensure_export`).

    Raises OnnxUnavailable if the folder is damaged or holds another model or recipe.
    """
    _import_numpy()
    try:
        from tokenizers import Tokenizer

        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # Read again on first split (ingest's chunking), not now: query vectors never split.
        splitter = TextSplitter(folder / "tokenizer.json", int(meta["max_tokens"]))
        encoder = OnnxEncoder(folder, meta, threads, tokenizer)
    # A damaged cache (truncated file, bad JSON, missing key) must not stop
    # deja: report it and let "auto" fall back; deleting the folder fixes it.
    except Exception as exc:
        raise OnnxUnavailable(f"cannot load the cached export in {folder}: {exc}") from exc
    if meta.get("model_id") != spec.model_id or meta.get("recipe") != RECIPE:
        raise OnnxUnavailable(f"{folder} holds {meta.get('model_id')!r}, not {spec.model_id!r}")
    return Embedder(spec, "onnx", encoder, splitter, int(meta["dim"]))
