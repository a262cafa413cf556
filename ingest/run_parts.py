"""What both engines' ingest commands share: the run's options, the progress bar,
the embedding model loaded once, and running until SIGTERM or SIGINT.

ingest/cli.py (SQLite) and ingest/pg/run.py (PostgreSQL) both drive an ingest
with these; they live here so that neither command module imports the other.
"""

from __future__ import annotations

import argparse
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import anyio

from .config import config_path_from
from .errors import DejaError
from .multilingual import MlOnce
from .settings import Exclusions, load_settings

if TYPE_CHECKING:
    from .embed import Embedder

__all__ = ["IngestOptions", "ProgressBar", "ModelOnce", "until_signal"]


@dataclass(frozen=True)
class IngestOptions:
    """What one ingest run does. `roots` empty: the default roots of the environment."""

    roots: tuple[Path, ...] = ()
    as_json: bool = False
    quiet: bool = False
    no_embed: bool = False
    watch: bool = False
    wait_seconds: float = 60.0
    exclude: Exclusions | None = None  # projects kept out (the settings file's `exclude`)

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> IngestOptions:
        """The options `add_ingest_arguments` parsed; DEJA_EMBED=0 (or no, false, off)
        in `environ` means --no-embed. The settings file gives `exclude`.

        Raises ConfigError when the settings file is not valid."""
        embed_off = environ.get("DEJA_EMBED", "").strip().lower() in ("0", "no", "false", "off")
        exclude = load_settings(config_path_from(environ), environ).exclude
        return cls(roots=tuple(args.root or ()), as_json=args.json, quiet=args.quiet,
                   no_embed=args.no_embed or embed_off, watch=args.watch, wait_seconds=args.wait,
                   exclude=exclude)

    @property
    def silent(self) -> bool:
        """No progress or chatter on stderr (--quiet, or --json for scripts)."""
        return self.quiet or self.as_json


class ProgressBar:
    """A one-line progress bar on a terminal; silent elsewhere."""

    def __init__(self, stream: TextIO, label: str = "ingest") -> None:
        self.stream = stream
        self.label = label
        self.enabled = stream.isatty()
        self._last = 0.0
        self._shown = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        width = 30
        frac = min(done / total, 1.0)
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        self.stream.write(
            f"\r{self.label} [{bar}] {frac:6.1%} {done / 1e6:8.1f}/{total / 1e6:.1f} MB"
        )
        self.stream.flush()
        self._shown = True

    def finish(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


class ModelOnce:
    """The configured embedder, loaded on first use and kept for the run.

    A failure is kept too: `get()` raises the same error again without another
    attempt (a missing model stays missing; retrying costs seconds per pass).
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.embedder: Embedder | None = None
        self.error: DejaError | None = None
        # The optional multilingual model (ingest/multilingual.py), loaded on its first need.
        self.multilingual = MlOnce(environ)

    async def get(self) -> Embedder:
        """Raises ModelUnavailable (the first time and every time after)."""
        if self.error is not None:
            raise self.error
        if self.embedder is not None:
            return self.embedder
        from .embed import load_configured_embedder  # the model code only when used

        try:
            embedder: Embedder = await anyio.to_thread.run_sync(load_configured_embedder,
                                                                self.environ)
        except DejaError as exc:
            self.error = exc
            raise
        self.embedder = embedder
        return embedder


async def until_signal(run: Callable[[], Awaitable[object]]) -> None:
    """`await run()` until it returns or SIGTERM or SIGINT arrives (which cancels it)."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            async def stop_on_signal() -> None:
                async for _sig in signals:
                    tg.cancel_scope.cancel()
                    return

            tg.start_soon(stop_on_signal)
            await run()
            tg.cancel_scope.cancel()
