"""``bt export mlflow``: a run as MLflow runs, next to the models a team already tracks there.

One parent MLflow run per ``bt`` run (tags: the run id, strategy, source hash, data hashes,
executor, versions; params: the fixed settings; artifacts: the report, the strategy source, the
job) and one nested child run per task (params: the task's parameters and symbol; metrics: every
metric; tags: the task key). Everything is found again by its tags (``bt.run_id``, ``bt.task_key``),
so exporting the same run again updates the same MLflow runs instead of adding new ones, and an
export cut short is completed by the next one. Each new child is three requests, the fewest
MLflow's API allows (it has no call that creates many runs at once): its creation with its tags,
one batch (``log_batch``) of its params and metrics, its status; ``THREADS`` children are sent at
once to a tracking server.

MLflow is an optional dependency, imported only here and only when an export starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backtest import paths
from backtest.catalog import METRICS, OPTIONAL_METRICS, Catalog
from backtest.errors import BtError, UsageError

MOST_UNASKED = 1000
"""Above this many tasks an export needs ``--all`` (or ``--top N``)."""

INSTALL = "pip install 'bt-farm[mlflow]'"
# tasks in flight at once to a tracking server (a local database is written from one thread): their
# round trips overlap, which is most of an export's time to a server on another machine; at most
# MLflow's HTTP connection pool (10 a host), so that every thread keeps its connection
THREADS = 8
DROPS = 2  # a task's requests sent again after a dropped connection, at most, before the export stops
MAX_TAG = 5000  # MLflow's smallest limit on a tag's value among its recent versions
MAX_PARAM = 500  # ... and on a param's value
EXCURSION_BATCH = 100  # tasks computed again at once for their trades' MAE/MFE (their curves held meanwhile)
_STATUS = {"done": "FINISHED", "failed": "FAILED", "interrupted": "KILLED", "running": "RUNNING"}


class MlflowMissing(BtError):
    """The optional MLflow client is not installed."""


@dataclass
class Exported:
    """What an export did: where it went and how many MLflow runs it made or updated."""

    run_id: str
    uri: str
    experiment: str
    experiment_id: str
    parent: str  # the parent MLflow run's id
    created: int  # task runs made now
    completed: int  # task runs an export cut short had left unfinished, sent again
    kept: int  # task runs an earlier export finished, left as they are
    artifacts: list[str]
    seconds: float
    report_note: str = ""  # why the report attached is the JSON one, when it is
    trades_note: str = ""  # why some trades.csv lack MAE/MFE, when they do


@dataclass
class Selection:
    """The run and the tasks an export will send, chosen before MLflow is contacted."""

    run: dict[str, Any]
    tasks: list[dict[str, Any]]  # catalog rows (raw metrics: NaN and inf as stored)
    records: list[dict[str, Any]]  # ``task_records`` of the whole run (the report's input)
    total: int


def select(run_id: str, top: int | None = None, all_tasks: bool = False, sort: str = "sharpe",
           root: Path | None = None) -> Selection:
    """The tasks of ``run_id`` to export: every task, or the best ``top`` by ``sort``. More than
    ``MOST_UNASKED`` without ``all_tasks`` or ``top`` is refused (one line), before any work."""
    from backtest.report import check_sort, ranked, task_records

    check_sort(sort)
    if top is not None and top < 1:
        raise UsageError(f"--top must be at least 1, not {top}")
    if top is not None and all_tasks:
        raise UsageError("--top N exports the best N tasks and --all every task; give one of them")
    root = root or paths.root()
    run, records = task_records(run_id, root)
    total = len(records)
    if top is None and not all_tasks and total > MOST_UNASKED:
        raise UsageError(f"run {run['run_id']} has {total:,} tasks, more than {MOST_UNASKED:,} MLflow runs: "
                         f"export the best with --top N (by --sort METRIC), or every one with --all")
    rows = Catalog(root / "catalog.duckdb").task_rows(run["run_id"])
    if top is not None:
        by_key = {r["key"]: r for r in rows}
        rows = [by_key[r["key"]] for r in ranked(records, sort)[:top]]
    return Selection(run, rows, records, total)


def mlflow_client(tracking_uri: str | None) -> tuple[Any, str]:
    """An ``MlflowClient`` and the tracking URI it uses (``tracking_uri``, else
    ``MLFLOW_TRACKING_URI``, else MLflow's default). A server that cannot be reached is one line."""
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise MlflowMissing(f"bt export mlflow needs the MLflow client ({exc.name or 'mlflow'} is not installed): "
                            f"{INSTALL}") from None
    import logging

    for name in ("mlflow", "alembic"):  # "creating tables", "view run at": bt says what it did itself
        logging.getLogger(name).setLevel(logging.WARNING)
    # a server that answers slowly is retried, but not for minutes (MLflow's default backs off 7 times)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # MLflow prints two links for every run it ends, after asking the server for the run again
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    uri = tracking_uri or mlflow.get_tracking_uri()
    _reachable(uri)
    with mlflow_errors(uri):
        return MlflowClient(tracking_uri=uri), uri


def _reachable(uri: str) -> None:
    """For an http(s) URI, whether something listens at its host and port (a quick connect, so a
    wrong address is one line at once, not minutes of retries)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname or "localhost", port), timeout=5):
            pass
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise BtError(f"cannot reach the MLflow tracking server at {uri}: {reason}") from None


@contextlib.contextmanager
def mlflow_errors(uri: str) -> Iterator[None]:
    """MLflow's errors (a refusal, a bad name, a lost connection, a database it cannot open) as one
    line, exit 2."""
    import warnings

    try:
        with warnings.catch_warnings():
            # MLflow's database layer warns about its use of SQLAlchemy (deprecations): not the user's to act on
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    except BtError:
        raise
    except Exception as exc:
        if not _from_mlflow(exc):
            raise
        raise BtError(f"MLflow at {uri}: {_one_line(exc)}") from exc


def _from_mlflow(exc: BaseException) -> bool:
    """An error of MLflow, of its HTTP client or of its database layer (not a bug of bt's)."""
    module = type(exc).__module__.split(".")[0]
    return module in ("mlflow", "requests", "urllib3", "sqlalchemy", "alembic") or isinstance(exc, OSError)


def _one_line(exc: BaseException) -> str:
    from mlflow.exceptions import MlflowException

    text = exc.message if isinstance(exc, MlflowException) else str(exc)
    if isinstance(exc, MlflowException):
        text = text.removeprefix(f"{exc.error_code}: ")
        if exc.error_code == "PERMISSION_DENIED":
            text = f"permission denied: {text}"
    if "Max retries exceeded" in text or "Connection refused" in text:
        text = "the server stopped answering (" + (text.split("Caused by", 1)[-1].strip(" ()'\"") or text) + ")"
    line = " ".join(text.split())
    return line if len(line) <= 300 else line[:297] + "..."


def check_experiment(name: str) -> str:
    name = name.strip()
    if not name:
        raise UsageError("--experiment needs a name (default: the strategy's name)")
    return name


def experiment_id(client: Any, name: str) -> str:
    """The id of the experiment ``name``, made if it does not exist; a deleted one is refused."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return str(client.create_experiment(name))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # made meanwhile by another export
                raise
            found = client.get_experiment_by_name(name)
    if found.lifecycle_stage != "active":
        raise BtError(f'the MLflow experiment "{name}" is deleted; restore it (mlflow experiments restore '
                      f"--experiment-id {found.experiment_id}) or give another --experiment")
    return str(found.experiment_id)


def _search(client: Any, exp_id: str, query: str) -> list[Any]:
    """Every active run of the experiment that ``query`` finds, page by page."""
    out: list[Any] = []
    token = None
    while True:
        page = client.search_runs([exp_id], query, max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


# what is logged -------------------------------------------------------------------------------------


def _text(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else json.dumps(v) if isinstance(v, list | dict) else str(v)


def _fit(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 3] + "..."


def run_tags(run: dict[str, Any], env: dict[str, str], selection: Selection) -> dict[str, str]:
    from backtest.hashing import sha256_hex

    hashes = json.loads(run.get("data_hashes") or "[]")
    listed = ",".join(hashes)
    tags = {
        "bt.kind": "run", "bt.run_id": run["run_id"], "bt.strategy": run["strategy"] or "",
        "bt.strategy_file": run.get("strategy_file") or "", "bt.code_hash": run["code_hash"] or "",
        # the list when it fits a tag; else its digest (the job artifact lists them all)
        "bt.data_hashes": listed if len(listed) <= MAX_TAG else f"sha256 of the {len(hashes)} sorted: {sha256_hex(listed)}",
        "bt.executor": run.get("executor") or "", "bt.status": run["status"] or "",
        "bt.tasks": str(selection.total), "bt.exported_tasks": str(len(selection.tasks)),
        "mlflow.runName": run["run_id"], "mlflow.source.name": run.get("strategy_file") or "",
    }
    tags.update({f"bt.version.{k}": str(v) for k, v in sorted(env.items())})
    return {k: _fit(v, MAX_TAG) for k, v in tags.items()}


def run_params(run: dict[str, Any]) -> dict[str, str]:
    settings = json.loads(run.get("settings") or "{}")
    return {k: _fit(_text(v), MAX_PARAM) for k, v in sorted(settings.items())}


def task_name(symbol: str, params: dict[str, Any]) -> str:
    return " ".join([symbol, *(f"{k}={_text(v)}" for k, v in params.items())])


def task_batch(row: dict[str, Any], run_id: str) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """A task's (params, metrics, tags). Metrics keep NaN (MLflow stores it as NaN) and ±inf (MLflow
    stores ±1.8e308, the largest double); a metric the result does not have is left out."""
    params = json.loads(row["params"])
    logged = {"symbol": row["symbol"], **{k: _fit(_text(v), MAX_PARAM) for k, v in params.items()}}
    metrics: dict[str, float] = {}
    if row["status"] == "done":
        for m in (*METRICS, *OPTIONAL_METRICS):
            v = row.get(m)
            if v is not None:
                metrics[m] = float(v)
        if row.get("n_trades") is not None:
            metrics.setdefault("trades", float(row["n_trades"]))
    tags = {"bt.kind": "task", "bt.run_id": run_id, "bt.task_key": row["key"], "bt.status": row["status"],
            "bt.cached": str(bool(row["cached"])).lower(), "mlflow.runName": _fit(task_name(row["symbol"], params), 250)}
    if row.get("error"):
        tags["bt.error"] = _fit(row["error"], MAX_TAG)
    return logged, metrics, tags


# artifacts --------------------------------------------------------------------------------------------


def write_artifacts(sel: Selection, folder: Path, sort: str, root: Path) -> tuple[list[str], str]:
    """The parent's artifacts in ``folder``: the HTML report (else the JSON report, and why), the
    strategy source (with the local modules it imports), the job (symbols, grid, settings)."""
    from backtest.report import contract_json, html
    from backtest.store.archive import load_job, load_source

    run = sel.run
    note = ""
    try:
        html.write(run["run_id"], folder / "report.html", html.Options(sort), root, have=(run, sel.records))
        names = ["report.html"]
    except BtError as exc:  # e.g. the data a chart needs is gone: the table still says everything
        (folder / "report.json").write_text(contract_json(sel.records))
        names, note = ["report.json"], f"the HTML report could not be written ({exc}); attached the JSON report"
    source = load_source(root, run["code_hash"])
    code = folder / "strategy"
    for rel, text in {Path(source.filename).name: source.source, **source.modules}.items():
        (code / rel).parent.mkdir(parents=True, exist_ok=True)
        (code / rel).write_text(text)
    if source.packages:
        (code / "packages.txt").write_text("".join(f"{v}\n" for v in sorted(source.packages.values())))
    names.append("strategy/")
    job = {**load_job(root, run), "settings": json.loads(run.get("settings") or "{}"),
           "strategy": run["strategy"], "code_hash": run["code_hash"]}
    (folder / "job.json").write_text(json.dumps(job, indent=1))
    names.append("job.json")
    return names, note


def env_of(sel: Selection, root: Path) -> dict[str, str]:
    """The versions that computed the run's results (of its first done task), else this one's."""
    from backtest.errors import ResultError
    from backtest.store.results import ResultStore, environment

    for r in sel.records:
        if r["status"] == "done":
            with contextlib.suppress(ResultError, OSError):
                return dict(ResultStore(root).read(r["key"]).env)
            break
    return environment()


# the export ---------------------------------------------------------------------------------------------


Progress = Callable[[int, int], None]


def export(sel: Selection, client: Any, uri: str, experiment: str | None = None, sort: str = "sharpe",
           trades: bool = False, root: Path | None = None, progress: Progress | None = None) -> Exported:
    """Send ``sel`` to MLflow through ``client``: find or make the parent run and each task's run by
    their tags, log each one's params, metrics and tags in one batch, attach the artifacts, set the
    statuses. The parent is marked running while its tasks are sent, and gets the run's own status
    last: an export cut short shows as running and the next export completes it."""
    t0 = time.perf_counter()
    root = root or paths.root()
    run = sel.run
    name = check_experiment(experiment if experiment is not None else (run["strategy"] or run["run_id"]))
    env = env_of(sel, root)
    with tempfile.TemporaryDirectory(prefix="bt-mlflow-") as tmp:
        folder = Path(tmp) / "artifacts"
        folder.mkdir()
        names, note = write_artifacts(sel, folder, sort, root)
        files, trades_note = trades_files(sel, root, Path(tmp)) if trades else ({}, "")
        with mlflow_errors(uri):
            exp_id = experiment_id(client, name)
            parent = _parent(client, exp_id, run, env, sel)
            created, completed, kept = _tasks(client, exp_id, parent, sel, uri, files, progress)
            client.log_artifacts(parent, str(folder))
            client.set_terminated(parent, _STATUS.get(run["status"], "FINISHED"), end_time=_end_ms(run))
    return Exported(run["run_id"], uri, name, exp_id, parent, created, completed, kept, names,
                    time.perf_counter() - t0, note, trades_note)


def _start_ms(run: dict[str, Any]) -> int:
    return int(run["created"] * 1000)


def _end_ms(run: dict[str, Any]) -> int:
    return _start_ms(run) + int((run.get("seconds") or 0) * 1000)


def _parent(client: Any, exp_id: str, run: dict[str, Any], env: dict[str, str], sel: Selection) -> str:
    """The parent MLflow run of ``run``: the one an earlier export tagged with its id, else a new
    one (its tags go with its creation, so a rerun finds it whatever happens next)."""
    from mlflow.entities import Param, RunTag

    found = _search(client, exp_id, f"tags.`bt.run_id` = '{run['run_id']}' AND tags.`bt.kind` = 'run'")
    tags = run_tags(run, env, sel)
    if found:
        parent = str(min(found, key=lambda r: r.info.start_time).info.run_id)
        client.update_run(parent, status="RUNNING")
    else:
        parent = str(client.create_run(exp_id, start_time=_start_ms(run), tags=tags).info.run_id)
    client.log_batch(parent, params=[Param(k, v) for k, v in run_params(run).items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    return parent


def _tasks(client: Any, exp_id: str, parent: str, sel: Selection, uri: str, trades: dict[str, Path],
           progress: Progress | None) -> tuple[int, int, int]:
    """One child run per selected task: (made now, found unfinished and completed, found complete).

    A new task run is three requests, the fewest MLflow's API allows: its creation with its tags
    (so a rerun finds it, whatever happens next), one batch of its params and metrics, its end
    status. A task run that an earlier export finished is left as it is: the task key fixes its
    params, metrics and tags (only its ``trades`` file is attached again). A run found unfinished
    (an export cut short) is sent again whole: MLflow takes the same params and metric points
    again without adding any. To a tracking server ``THREADS`` tasks are in flight at once."""
    import threading

    from mlflow.entities import Metric, Param, RunTag

    run = sel.run
    children = f"tags.`mlflow.parentRunId` = '{parent}'"
    known = {r.data.tags.get("bt.task_key"): (str(r.info.run_id), r.info.status)
             for r in _search(client, exp_id, children)}
    before = dict(known)  # what an earlier export left (a child found again after a retry was made now)
    start, end = _start_ms(run), _end_ms(run)
    counts = [0, 0, 0]
    lock = threading.Lock()

    def sent(row: dict[str, Any]) -> None:
        """``send``, again after a dropped connection (up to ``DROPS`` times): the child the lost
        request may have made is looked for by its key first, so that none is made twice."""
        for drop in range(DROPS + 1):
            try:
                return send(row)
            except Exception as exc:
                if drop == DROPS or not dropped(exc):
                    raise
            for r in _search(client, exp_id, f"{children} AND tags.`bt.task_key` = '{row['key']}'")[:1]:
                known[row["key"]] = (str(r.info.run_id), r.info.status)

    def send(row: dict[str, Any]) -> None:
        status = "FINISHED" if row["status"] == "done" else "FAILED"
        child, was = known.get(row["key"], (None, None))
        csv = trades.get(row["key"])
        if child is not None and was == status:
            if csv is not None:
                client.log_artifact(child, str(csv))
            return _count(2)
        params, metrics, tags = task_batch(row, run["run_id"])
        if child is None:
            child = str(client.create_run(exp_id, start_time=start, tags={**tags, "mlflow.parentRunId": parent})
                        .info.run_id)
            tags = {}  # they went with the creation
        else:  # the name follows from the params: logging it again would rename the run (one more write)
            tags.pop("mlflow.runName")
        for p, m, t in _batches(list(params.items()), list(metrics.items()), list(tags.items())):
            client.log_batch(child, metrics=[Metric(k, v, start, 0) for k, v in m],
                             params=[Param(k, v) for k, v in p], tags=[RunTag(k, v) for k, v in t])
        if csv is not None:
            client.log_artifact(child, str(csv))
        client.set_terminated(child, status, end_time=end)
        return _count(1 if before.get(row["key"]) else 0)

    def _count(which: int) -> None:
        with lock:
            counts[which] += 1
            if progress:
                progress(sum(counts), len(sel.tasks))

    if not uri.startswith(("http://", "https://")):  # a local database: one writer
        for row in sel.tasks:
            send(row)
    else:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(THREADS)
        try:
            for f in [pool.submit(sent, row) for row in sel.tasks]:
                f.result()
        finally:  # the first error stops the export (the next one completes it)
            pool.shutdown(cancel_futures=True)
    return counts[0], counts[1], counts[2]


def dropped(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is a connection that broke or could not be
    made: a request MLflow does not send again itself when it may have been done (a run's
    creation), though the server may never have seen it (e.g. a kept-alive connection the server
    closed as it was used)."""
    import requests

    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, requests.exceptions.ConnectionError | ConnectionError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _batches(params: list[Any], metrics: list[Any], tags: list[Any]) -> Iterator[tuple[list[Any], ...]]:
    """(params, metrics, tags) in as few batches as MLflow takes: up to 100 params, 1000 metrics
    and 100 tags each (one batch for a task, unless it has over 100 parameters)."""
    while params or metrics or tags:
        yield params[:100], metrics[:1000], tags[:100]
        params, metrics, tags = params[100:], metrics[1000:], tags[100:]


def trades_files(sel: Selection, root: Path, tmp: Path) -> tuple[dict[str, Path], str]:
    """Each done task's trades as ``trades.csv`` in ``tmp`` (by task key), MAE/MFE included, and
    "" or why some MAE/MFE are left empty. Result files do not keep MAE/MFE (they follow exactly
    from the bars a task's key names), so the tasks are computed again, ``EXCURSION_BATCH`` at a
    time, each checked against its stored result, as ``bt report RUN --trades`` does."""
    from backtest.report import trades_rows, write_rows
    from backtest.report.equity import ReproducibilityError, curves
    from backtest.worker import tuning

    keys = [r["key"] for r in sel.tasks if r["status"] == "done"]
    if keys:
        tuning.warm_up()
    files: dict[str, Path] = {}
    first, empty = "", 0  # why the first task left without MAE/MFE was, and how many were
    for i in range(0, len(keys), EXCURSION_BATCH):
        batch = keys[i:i + EXCURSION_BATCH]
        found: dict[str, Any] = {}
        try:
            found = {c.key: c.excursions for c in curves(sel.run, batch, root, sel.records)}
        except ReproducibilityError:  # a task differs: the others still get theirs
            for key in batch:
                try:
                    found.update((c.key, c.excursions) for c in curves(sel.run, [key], root, sel.records))
                except BtError as exc:
                    first = first or str(exc)
        except BtError as exc:  # the data of these tasks changed or is gone
            first = first or str(exc)
        for key in batch:
            rows = trades_rows(key, root)
            if found.get(key) is not None:
                for row, (mae, mfe) in zip(rows, found[key].tolist(), strict=True):
                    row["mae"], row["mfe"] = mae, mfe
            else:
                empty += 1
            folder = tmp / "trades" / key
            folder.mkdir(parents=True, exist_ok=True)
            write_rows(rows, "csv", folder / "trades.csv")
            files[key] = folder / "trades.csv"
    why = f"MAE/MFE left empty in the trades.csv of {empty} task(s) that cannot be computed again: {first}" if empty else ""
    return files, why


def describe(done: Exported) -> str:
    """Where to look: the parent run's page for a tracking server, else the URI and ids."""
    if done.uri.startswith(("http://", "https://")):
        return f"{done.uri.rstrip('/')}/#/experiments/{done.experiment_id}/runs/{done.parent}"
    return f"{done.uri} (experiment {done.experiment_id}, run {done.parent})"

