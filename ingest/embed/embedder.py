"""The contract every backend meets: `Embedder.embed()` returns float32, shape
(n, dim), L2-normalised rows, whatever the backend.

A backend supplies an encoder (anything with `encode(texts) -> array`), a
`TextSplitter` and the vector size; `Embedder` checks the shape, normalises
again and carries the identity recorded with the vectors. The backends live in
`torch_backend` and `onnx_backend`; `loader.load_embedder` picks one.

Threads
    `embed()` blocks; run it in a worker thread. It may be called from
    several threads at once (an onnxruntime session and a torch model in
    inference are both safe to share). Thread counts are capped by the loader
    (default: the CPU count, at most 4) so that embedding leaves room for the
    rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from .resolve import ModelSpec
from .windows import TextSplitter

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Embedder", "Encoder"]


class Encoder(Protocol):
    """What a backend supplies: vectors for a list of texts, one row per text."""

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
        encoder: Encoder,
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
