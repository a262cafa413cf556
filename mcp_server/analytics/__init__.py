"""Analytics over the history: what `deja stats` prints, as JSON, tables or an HTML page.

- collect.py: the figures, in a few grouped SQL scans (`collect`, `StatsFilters`);
- prices.py: the dated price table shipped with deja and the settings file's overrides;
- periods.py: days, ISO weeks, months and sparklines;
- terms.py: the top terms, from the full-text index's vocabulary;
- terminal.py: the tables and sparklines on a terminal (rich);
- report.py: the self-contained HTML page with inline SVG charts.
"""

from __future__ import annotations

from .collect import StatsFilters, collect
from .prices import PriceTable, load_prices

__all__ = ["StatsFilters", "collect", "PriceTable", "load_prices"]
