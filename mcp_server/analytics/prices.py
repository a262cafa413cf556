"""What tokens cost: the price table shipped with deja, and a person's overrides.

A cost is an estimate: Claude Code on a subscription bills no tokens, and the
API bills some things deja does not see (1-hour cache writes at twice the
5-minute rate, long-context surcharges, batch discounts, data residency).
The estimate prices every token at its model's list price per million tokens
(MTok): input, output, cache creation at the 5-minute write rate, cache read.

The table is dated (`PRICES_DATE`) and matched by model-id prefix, longest
first, so `claude-opus-4-5-20251101` is priced as `claude-opus-4-5`; ids written
by gateways (`anthropic/claude-opus-4.6`) are read as Anthropic's; prefixes
name a version, never a family, so a new model is unpriced rather than priced
as its predecessor. Models
not in it (`<synthetic>`, other providers routed through Claude Code) are
reported as unpriced, never guessed. The settings file adds or replaces
entries (`load_prices`):

    [prices]
    date = "2027-01-15"                 # optional: when you checked them
    "claude-opus-4-5" = { input = 5, output = 25, cache_creation = 6.25, cache_read = 0.5 }
    "MiniMax-M2" = { input = 0.3, output = 1.2 }   # missing rates count 0

Source of the shipped figures: Anthropic's pricing page
(platform.claude.com/docs/en/about-claude/pricing), USD per MTok.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: the same parser, from PyPI
    import tomli as tomllib

__all__ = ["Price", "PriceTable", "PRICES_DATE", "SHIPPED", "TOKEN_FIELDS", "load_prices"]

PRICES_DATE = "2026-12-01"

# The four usage fields as `deja stats --json` names them, in their order.
TOKEN_FIELDS = ("input", "output", "cache_creation", "cache_read")


@dataclass(frozen=True)
class Price:
    """USD per million tokens of each kind."""

    input: float
    output: float
    cache_creation: float
    cache_read: float

    def cost(self, tokens: Mapping[str, int]) -> float:
        """The USD cost of `tokens` ({"input": n, "output": n, ...})."""
        return sum(getattr(self, f) * tokens.get(f, 0) for f in TOKEN_FIELDS) / 1e6


def _p(i: float, o: float) -> Price:
    # Anthropic's cache multipliers: writes (5 min) 1.25x input, reads 0.1x.
    return Price(i, o, round(i * 1.25, 4), round(i * 0.1, 4))


SHIPPED: dict[str, Price] = {
    "claude-opus-5": _p(5, 25),
    "claude-sonnet-5": _p(2, 10),
    "claude-opus-4-8": _p(5, 25),
    "claude-opus-4-7": _p(5, 25),
    "claude-opus-4-6": _p(5, 25),
    "claude-opus-4-5": _p(5, 25),
    "claude-opus-4-1": _p(15, 75),
    "claude-opus-4-0": _p(15, 75),
    "claude-opus-4-2": _p(15, 75),  # claude-opus-4-20250514
    "claude-3-opus": _p(15, 75),
    # Sonnet 4.x: up to 200k input tokens (1M-context requests above it cost more).
    "claude-sonnet-4-6": _p(3, 15),
    "claude-sonnet-4-5": _p(3, 15),
    "claude-sonnet-4-0": _p(3, 15),
    "claude-sonnet-4-2": _p(3, 15),  # claude-sonnet-4-20250514
    "claude-3-7-sonnet": _p(3, 15),
    "claude-3-5-sonnet": _p(3, 15),
    "claude-haiku-4-5": _p(1, 5),
    "claude-3-5-haiku": Price(0.8, 4, 1, 0.08),
    "claude-3-haiku": Price(0.25, 1.25, 0.3, 0.03),
}


@dataclass(frozen=True)
class PriceTable:
    """Prices by model-id prefix, with the date they are from and where they came from."""

    prices: Mapping[str, Price]
    date: str
    source: str  # "deja" or the settings file that changed them

    def for_model(self, model: str | None) -> Price | None:
        """The price of `model`: the entry of its longest matching prefix, or None."""
        if not model:
            return None
        # Gateways write `anthropic/claude-opus-4.6`: the id after the provider, dots as dashes.
        model = model.rsplit("/", 1)[-1].lower().replace(".", "-")
        best = None
        for prefix in self.prices:
            if model.startswith(prefix.lower().replace(".", "-")) and (
                    best is None or len(prefix) > len(best)):
                best = prefix
        return self.prices[best] if best is not None else None

    def as_json(self) -> dict[str, Any]:
        return {"date": self.date, "source": self.source,
                "per_mtok": {k: vars(v) for k, v in sorted(self.prices.items())}}


def _rate(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{where} must be a number of USD per million tokens, >= 0")
    return float(value)


def load_prices(path: Path | None) -> PriceTable:
    """The shipped table with the `[prices]` table of the settings file at `path` over it.

    A missing file (or None) gives the shipped table. Raises ConfigError when
    the file is unreadable, not TOML, or a price is not a non-negative number.
    """
    table = PriceTable(dict(SHIPPED), PRICES_DATE, "deja")
    if path is None:
        return table
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return table
    except OSError as exc:
        raise ConfigError(f"cannot read the settings file {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"the settings file {path} is not valid TOML: {exc}") from exc
    section = data.get("prices")
    if section is None:
        return table
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [prices] must be a table")
    prices = dict(SHIPPED)
    date = PRICES_DATE
    for model, entry in section.items():
        if model == "date":
            date = str(entry)
            continue
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: prices.{model} must be a table of rates "
                              "(input, output, cache_creation, cache_read)")
        unknown = set(entry) - set(TOKEN_FIELDS)
        if unknown:
            raise ConfigError(f"{path}: prices.{model}: unknown rate {sorted(unknown)[0]!r} "
                              f"(known: {', '.join(TOKEN_FIELDS)})")
        prices[model] = Price(**{f: _rate(entry.get(f, 0), f"{path}: prices.{model}.{f}")
                                 for f in TOKEN_FIELDS})
    return PriceTable(prices, date, str(path))
