"""Command-line options shared by the peer scripts (numpy and the standard library only)."""

from __future__ import annotations

import argparse
import os

import common


def parser(doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="data file written by common.ensure_data")
    ap.add_argument("--out", required=True, help="answer file to write (JSON)")
    ap.add_argument("--grid", choices=["sma_grid", "small"], default="sma_grid", help="which combo grid")
    ap.add_argument("--symbols", default="all", help="'all' or comma-separated symbol indices")
    ap.add_argument("--combos", default="all", help="'all', 'every:K' or 'fast:slow,fast:slow,...'")
    ap.add_argument("--bars", type=int, default=0, help="use only the first N bars (0: all)")
    ap.add_argument("--jobs", type=int, default=1, help="processes (forked) to split the tasks over")
    return ap


def selection(
    a: argparse.Namespace, data: common.SyntheticData
) -> tuple[list[int], list[tuple[int, int]], int]:
    """(symbol indices, combos, bars) selected by the options."""
    sym_idx = list(range(len(data.symbols))) if a.symbols == "all" else [int(x) for x in a.symbols.split(",")]
    grid = list(common.SMA_GRID if a.grid == "sma_grid" else common.SMALL_GRID)
    if a.combos == "all":
        combos = grid
    elif a.combos.startswith("every:"):
        combos = grid[:: int(a.combos.split(":", 1)[1])]
    else:
        combos = [(int(f), int(s)) for f, s in (c.split(":") for c in a.combos.split(","))]
    bars = a.bars or int(data.ts.shape[0])
    if a.jobs < 1:
        a.jobs = os.cpu_count() or 1
    return sym_idx, combos, bars
