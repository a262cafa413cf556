"""Windows: long text cut into pieces the model reads whole.

MiniLM reads at most 256 word pieces and silently drops the rest.
`TextSplitter.split_windows()` cuts long text into overlapping windows that
fit, using the model's fast tokenizer and its offsets (no Python loop over
words), and never cuts inside a word, so a window re-tokenizes to exactly the
pieces that were counted. `load_splitter()` gives the splitter without loading
the model (ingest can chunk before the model is up). `tokenizers` is imported
inside the functions that use it, so importing this module costs nothing.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelUnavailable
from .resolve import ModelSpec

if TYPE_CHECKING:
    import tokenizers

__all__ = ["TextSplitter", "load_splitter"]


class TextSplitter:
    """Counts word pieces and cuts long text into windows the model reads whole.

    Built on a `tokenizers.Tokenizer` (the fast tokenizer behind the model),
    copied so that the model's own truncation and padding settings do not
    apply here; or on a `tokenizer.json` file, read on first use (the MCP
    server's query vectors never split, so its model load skips the ~25 ms).
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer | Path, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._source = tokenizer
        self._built: tokenizers.Tokenizer | None = None
        self._special = 0
        self._lock = threading.Lock()
        if not isinstance(tokenizer, Path):
            self._build()

    def _build(self) -> tokenizers.Tokenizer:
        from tokenizers import Tokenizer

        with self._lock:
            if self._built is None:
                source = self._source
                built = (Tokenizer.from_file(str(source)) if isinstance(source, Path)
                         else Tokenizer.from_str(source.to_str()))
                built.no_truncation()
                built.no_padding()
                processor = built.post_processor
                self._special = processor.num_special_tokens_to_add(False) if processor else 0
                self._built = built
            return self._built

    @property
    def _tokenizer(self) -> tokenizers.Tokenizer:
        return self._built if self._built is not None else self._build()

    @property
    def special_tokens(self) -> int:
        """Special tokens the model adds to every window ([CLS] and [SEP] for MiniLM)."""
        if self._built is None:
            self._build()
        return self._special

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
