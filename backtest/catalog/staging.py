"""Rows made ready before the catalog is locked, and inserted in one statement a table."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from backtest.catalog.schema import LOG_COLUMNS, RESULT_COLUMNS, TASK_COLUMNS

Rows = tuple[Sequence[dict[str, Any]], Sequence[dict[str, Any]], Sequence[dict[str, Any]], "dict[str, Any] | None"]
Staged = dict[str, Any]  # columns by name: NumPy arrays, or Python lists (``_stage``)
_Staged = list[tuple["Staged | None", str, dict[str, str]]]


class Columns(dict[str, Any]):
    """Rows already made columns (NumPy arrays by column name, ``n`` rows), which a batch of
    outcomes is recorded as without one dict a row; they may stand among a table's dict rows."""

    def __init__(self, n: int, columns: dict[str, Any]) -> None:
        super().__init__(columns)
        self.n = n


def _stage(rows: Sequence[Any], columns: dict[str, str]) -> Staged | None:
    """Dict rows and ``Columns`` blocks as one ``Staged`` (the blocks need NumPy, loaded by then)."""
    blocks = [r for r in rows if isinstance(r, Columns)]
    if not blocks:
        return _stage_dicts(rows, columns)
    import numpy as np

    dicts = [r for r in rows if not isinstance(r, Columns)]
    parts: list[dict[str, Any]] = [b for b in blocks if b.n]
    if dicts:
        parts.append(_numpy_columns(dicts, columns))
    if not parts:
        return None
    out: dict[str, Any] = {}
    for name, sql_type in columns.items():
        cols = [p[name] for p in parts]
        typ = _NUMPY_TYPES.get(sql_type)
        if typ is None or any(c.dtype == object for c in cols):
            cols = [c if c.dtype == object else c.astype(object) for c in cols]
        out[name] = cols[0] if len(cols) == 1 else np.concatenate(cols)  # (one block: no copy)
    return out


def _stage_dicts(rows: Sequence[dict[str, Any]], columns: dict[str, str]) -> Staged | None:
    """Rows made ready for ``_insert_staged`` before the catalog is locked, as columns: typed
    NumPy arrays, which DuckDB scans with no copy, when NumPy is loaded (every run that computes
    has it); else Python lists, which DuckDB takes as list parameters. A run that only reads the
    store (a fully cached rerun) never loads NumPy (~0.1 s), and for its task rows lists cost the
    same (1 800 rows: 12–23 ms either way); for metric rows NumPy is ~40 % faster. (JSON text
    for DuckDB to parse, as before, cost three times as much; Arrow tables make pyarrow import
    pandas, half a second; Python rows are 50 times slower.)"""
    if not rows:
        return None
    if _numpy_loaded() or len(rows) > NUMPY_ROWS:
        return _numpy_columns(rows, columns)
    return {name: [row.get(name) for row in rows] for name in columns}


#: Rows from which staging them as NumPy columns pays for importing NumPy (~0.1 s): DuckDB's
#: ``unnest`` of list parameters costs ~4 µs a row, a NumPy column ~1 µs.
NUMPY_ROWS = 50_000


def _numpy_loaded() -> bool:
    return "numpy" in sys.modules


_NUMPY_TYPES = {"DOUBLE": "float64", "INTEGER": "int64", "BOOLEAN": "bool"}


def _numpy_columns(rows: Sequence[dict[str, Any]], columns: dict[str, str]) -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {}
    for name, sql_type in columns.items():
        values = [row.get(name) for row in rows]
        typ = _NUMPY_TYPES.get(sql_type)
        if typ == "float64":  # None as NaN; the insert turns every non-finite value into NULL
            out[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        elif typ is not None and None not in values:
            out[name] = np.array(values, dtype=typ)
        else:  # text, or numbers with NULLs: Python objects, which DuckDB casts to the column's type
            out[name] = np.array(values, dtype=object)
    return out


#: The columns rows are staged with, by table: all but ``run_id``, which the insert adds.
_GIVEN = {table: {k: t for k, t in columns.items() if k != "run_id"}
          for table, columns in (("results", RESULT_COLUMNS), ("run_tasks", TASK_COLUMNS), ("logs", LOG_COLUMNS))}


def _stage_rows(tasks: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]],
                logs: Sequence[dict[str, Any]]) -> _Staged:
    """The rows staged for ``_insert_staged`` (task and log rows need no ``run_id``)."""
    return [(_stage(rows, _GIVEN[table]), table, _GIVEN[table])
            for rows, table in ((results, "results"), (tasks, "run_tasks"), (logs, "logs"))]


def _source(con: Any, staged: Staged, columns: dict[str, str], name: str) -> str:
    """The staged rows made a relation ``name`` of ``con`` (``_release`` drops it); a SQL source
    of them with ``columns`` (non-finite numbers as NULL, as the catalog keeps them)."""
    if _as_lists(staged):
        unnest = ", ".join(f'unnest(?::{t}[]) AS "{k}"' for k, t in columns.items())
        con.execute(f"CREATE TEMP TABLE {name} AS SELECT {unnest}", [staged[k] for k in columns])
    else:
        con.register(name, staged)
    cols = ", ".join(f'CASE WHEN isfinite("{k}") THEN "{k}" END AS "{k}"' if t == "DOUBLE" else f'"{k}"'
                     for k, t in columns.items())
    return f"(SELECT {cols} FROM {name})"


def _insert_staged(con: Any, staged: _Staged, run_id: str, run_update: dict[str, Any] | None) -> None:
    for rows, table, columns in staged:
        if rows is None:
            continue
        src = _source(con, rows, columns, f"staged_{table}")
        if table == "results":
            # Results are keyed by content: a key recorded again (``--force``) has the same
            # metrics, so its row stays (deleting and re-inserting every row of a forced rerun
            # made the insert and the checkpoint after it twice as slow); only a row that differs
            # (other versions computed it again, or the same key made other bits: the store then
            # holds the new file) is brought up to date, so the catalog says what the file holds.
            # The keys indexed already are found by a join DuckDB builds on the staged rows (a
            # NOT IN built a hash table of every key in the catalog at each write); usually none.
            known = [k for (k,) in con.execute(f"SELECT s.key FROM {src} AS s JOIN results r ON r.key = s.key")
                     .fetchall()]
            if not known:
                con.execute(f"INSERT INTO results BY NAME SELECT * FROM {src}")
            else:
                values = [c for c in columns if c not in ("key", "recorded")]
                sets = ", ".join(f'"{c}" = s."{c}"' for c in values)
                differ = " OR ".join(f'results."{c}" IS DISTINCT FROM s."{c}"' for c in values)
                con.execute(f"UPDATE results SET {sets} FROM {src} AS s WHERE results.key = s.key AND ({differ})")
                con.execute(f"INSERT INTO results BY NAME SELECT * FROM {src} "
                            "WHERE key NOT IN (SELECT unnest(?::VARCHAR[]))", [known])
        else:
            con.execute(f"INSERT INTO {table} BY NAME SELECT *, ? AS run_id FROM {src}", [run_id])
        _release(con, rows, f"staged_{table}")
    if run_update:
        sets = ", ".join(f"{k} = ?" for k in run_update)
        con.execute(f"UPDATE runs SET {sets} WHERE run_id = ?", [*run_update.values(), run_id])


def _release(con: Any, staged: Staged, name: str) -> None:
    if _as_lists(staged):
        con.execute(f"DROP TABLE {name}")
    else:
        con.unregister(name)


def _as_lists(staged: Staged) -> bool:
    """Whether ``staged`` holds Python lists (a temporary table) rather than NumPy columns."""
    return isinstance(next(iter(staged.values())), list)


def _insert_run(con: Any, run: dict[str, Any]) -> None:
    cols = list(run)
    con.execute(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", [run[c] for c in cols])


#: ``recover(run, recorded)``: for a run whose coordinator died (``run``: its ``runs`` row;
#: ``recorded``: the keys its ``done`` task rows name), the (task rows, result rows) of the results
#: its workers stored that it never recorded (``backtest.run.recover``).
Recover = Callable[[dict[str, Any], set[str]], tuple[list[dict[str, Any]], list[dict[str, Any]]]]


def _mark_stale(con: Any, alive: Callable[[int, str], bool], recover: Recover | None = None) -> None:
    """Runs recorded as running whose coordinator is gone become 'interrupted', with (``recover``)
    the results their workers stored after the last rows the coordinator recorded."""
    cur = con.execute("SELECT * FROM runs WHERE status = 'running'")
    names = [d[0] for d in cur.description]
    for run in [dict(zip(names, r, strict=True)) for r in cur.fetchall()]:
        if alive(run["pid"], run["host"]):
            continue
        run_id = run["run_id"]
        if recover is not None:
            recorded = {r[0] for r in con.execute(
                "SELECT key FROM run_tasks WHERE run_id = ? AND status = 'done'", [run_id]).fetchall()}
            tasks, results = recover(run, recorded)
            if tasks:
                _insert_staged(con, _stage_rows(tasks, results, []), run_id, None)
        con.execute("""UPDATE runs SET status = 'interrupted',
                         computed = (SELECT count(*) FROM run_tasks WHERE run_id = ? AND status = 'done' AND NOT cached),
                         failed = (SELECT count(*) FROM run_tasks WHERE run_id = ? AND status = 'failed')
                       WHERE run_id = ?""", [run_id, run_id, run_id])
