"""The data store: import, validate, partition, hash and serve market data.

Bars live under the data root as ``bars/symbol=<SYM>/year=<YYYY>.parquet`` (UTC int64 ns ``ts``,
float64 ``open high low close volume``), one file per symbol and UTC year, listed in
``bars/manifest.json`` with each file's content hash. A partition's hash covers its data, not its
bytes, and is what result keys are built from.

    store = Store()                                   # backtest.paths.root() unless given
    store.import_files(["AAPL.csv"], tz="America/New_York")
    parts = store.resolve("AAPL", start_ns, end_ns, warmup_bars=50)
    bars = read_bars("AAPL", [(store.path(p), p.sha256) for p in parts], start_ns, end_ns, 50)

Modules: ``sources`` (files → Arrow columns), ``timestamps``, ``validate``, ``ticks`` (trades →
bars via DuckDB), ``partition`` (files and content hashes), ``manifest`` (lock, journal, commits),
``store``, ``reader``, ``demo``.
"""

from backtest.data.partition import Partition, file_content_hash
from backtest.data.reader import read_bars
from backtest.data.store import ImportFailed, ImportReport, Store, SymbolSummary

__all__ = ["ImportFailed", "ImportReport", "Partition", "Store", "SymbolSummary", "file_content_hash", "read_bars"]
