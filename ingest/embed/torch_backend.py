"""The torch backend: sentence-transformers, the reference.

Importing sentence-transformers alone takes seconds and the process then
holds 0.5 to 1.3 GB, so it is imported only when this backend loads a model.
`load_sentence_transformer` is also what the ONNX export (in its child
process) loads the fp32 model with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ModelUnavailable
from .embedder import Embedder
from .resolve import ModelSpec
from .windows import TextSplitter

if TYPE_CHECKING:
    import numpy as np

__all__ = ["load_torch", "load_sentence_transformer"]

_TORCH_BATCH = 32


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


def load_sentence_transformer(
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
    transformers.utils.logging.disable_progress_bar()
    try:
        return SentenceTransformer(
            source, device="cpu", local_files_only=local_files_only, model_kwargs=model_kwargs
        )
    # Loading fails in library-specific ways (OSError, ValueError, HTTP and
    # hub errors, RuntimeError on bad weights): all mean the same to the caller.
    except Exception as exc:
        raise ModelUnavailable(f"cannot load embedding model {source}: {exc}") from exc


def load_torch(spec: ModelSpec, threads: int, local_files_only: bool) -> Embedder:
    model = load_sentence_transformer(spec.source, threads, local_files_only)
    dim = int(model.get_embedding_dimension())
    if spec.dim is not None and spec.dim != dim:
        raise ModelUnavailable(f"{spec.model_id} gives {dim}-dim vectors, expected {spec.dim}")
    backend_tokenizer = getattr(model.tokenizer, "backend_tokenizer", None)
    if backend_tokenizer is None:
        raise ModelUnavailable(f"{spec.model_id} has no fast tokenizer, needed to split windows")
    splitter = TextSplitter(backend_tokenizer, int(model.max_seq_length))
    return Embedder(spec, "torch", _TorchEncoder(model), splitter, dim)
