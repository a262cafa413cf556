"""pgvector's text form of a vector, for every writer and ranker of vectors on PostgreSQL.

Its own module so the MiniLM pass (vectors.py), the multilingual pass
(multilingual.py, which vectors.py runs after its own) and the rankers share it
without importing each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["vector_literal"]


def vector_literal(vec: np.ndarray) -> str:
    """pgvector's text form of a vector: [x1,x2,...] (float32 precision is kept)."""
    return "[" + ",".join(f"{float(x):.7g}" for x in vec) + "]"
